/**
 * Real test peers: MinIO (S3), Pebble (the workload container's API), the Python
 * aws-encryption-sdk, and the Kubernetes exec rig (`kube`: kube-apiserver, etcd and a
 * test kubelet, started by tests/support/kube.ts). Build them with `bash scripts/peers/install.sh`; binaries are found
 * through the variables set by scripts/peers/env.sh, else in the default cache.
 *
 * Whatever a test file starts here and forgets to stop is killed (and every tmpDir removed)
 * after the file's tests; a daemon is also killed if the test process dies.
 */
import {
  execFileSync,
  spawn,
  type ChildProcess,
  type ChildProcessWithoutNullStreams,
} from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { CreateBucketCommand, GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';

/**
 * `kube` is the Kubernetes exec rig: etcd, kube-apiserver and the test kubelet (tests/support/kube.ts).
 * `synapse` is matrix-synapse's venv (tests/support/real-synapse.ts); it runs Synapse as uid 991,
 * so it needs root, like the official image's start.py.
 */
export type PeerName = 'minio' | 'pebble' | 'esdk' | 'kube' | 'synapse';

export const INSTALL_COMMAND = 'bash scripts/peers/install.sh';

// ---------------------------------------------------------------- cleanup registry

// Inside jest, `process` is a per-file copy whose 'exit' event never fires, so leftovers are
// swept after each test file instead; a daemon's watchdog (see launch) covers a test process
// that dies without sweeping (crash, SIGKILL, jest killing a worker).
const cleanups = new Set<() => Promise<void>>();

async function sweep(): Promise<void> {
  for (const fn of [...cleanups].reverse()) await fn().catch(() => undefined);
}

try {
  if (typeof afterAll === 'function') afterAll(sweep);
} catch {
  // imported from inside a test: hooks can no longer be added; watchdogs still apply
}

/** Registers an idempotent async cleanup for the sweep; returns its unregister function. */
export function track(fn: () => Promise<void>): () => void {
  cleanups.add(fn);
  return () => void cleanups.delete(fn);
}

// ---------------------------------------------------------------- small helpers

export interface TmpDir {
  path: string;
  /** Removes the directory and everything in it. Idempotent. */
  cleanup(): Promise<void>;
}

/** A fresh directory under the OS temp dir; removed at the latest after the test file. */
export async function tmpDir(prefix: string): Promise<TmpDir> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), `${prefix}-`));
  const cleanup = async () => {
    untrack();
    await fsp.rm(dir, { recursive: true, force: true });
  };
  const untrack = track(cleanup);
  return { path: dir, cleanup };
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- peer resolution

function cacheDir(): string {
  return (
    process.env.SYNAPSE_PEERS_CACHE ?? path.join(os.homedir(), '.cache', 'synapse-backup-peers')
  );
}

function binDir(): string {
  return process.env.SYNAPSE_PEERS_BIN ?? path.join(cacheDir(), 'bin');
}

/** Where a peer's executable is expected (it may not exist). */
export function peerPath(name: PeerName): string {
  switch (name) {
    case 'minio':
      return process.env.MINIO_BIN ?? path.join(binDir(), 'minio');
    case 'pebble':
      return process.env.PEBBLE_BIN ?? path.join(binDir(), 'pebble');
    case 'esdk':
      return process.env.SYNAPSE_PEERS_PYTHON ?? path.join(cacheDir(), 'venv', 'bin', 'python');
    case 'kube':
      return kubePeerPaths().apiserver;
    case 'synapse':
      return process.env.SYNAPSE_PEERS_SYNAPSE_PYTHON ?? path.join(synapseVenv(), 'bin', 'python');
  }
}

/** The Synapse venv (scripts/peers/env.sh: outside a 0700 home when root, so uid 991 can use it). */
export function synapseVenv(): string {
  if (process.env.SYNAPSE_VENV) return process.env.SYNAPSE_VENV;
  return process.getuid?.() === 0
    ? '/var/cache/synapse-backup-peers/synapse-venv'
    : path.join(cacheDir(), 'synapse-venv');
}

/** The Kubernetes exec rig's executables (scripts/peers/kube.sh builds them). */
export function kubePeerPaths(): { apiserver: string; etcd: string; kubelet: string } {
  return {
    apiserver: process.env.KUBE_APISERVER_BIN ?? path.join(binDir(), 'kube-apiserver'),
    etcd: process.env.ETCD_BIN ?? path.join(binDir(), 'etcd'),
    kubelet: process.env.TEST_KUBELET_BIN ?? path.join(binDir(), 'test-kubelet'),
  };
}

/** Every executable a peer needs: one for most, three for the kube rig. */
function peerFiles(name: PeerName): string[] {
  return name === 'kube' ? Object.values(kubePeerPaths()) : [peerPath(name)];
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * True when every named peer is installed. When one is missing: throws if CI=true,
 * otherwise prints a loud warning and returns false (the caller skips its tests).
 */
export function requirePeers(...names: PeerName[]): boolean {
  const missing = names.filter((n) => !peerFiles(n).every(isExecutable));
  const notRoot = names.includes('synapse') && process.getuid?.() !== 0;
  if (missing.length === 0 && !notRoot) return true;
  const list = missing.map((n) => `${n} (${peerFiles(n).join(', ')})`).join(', ');
  const message = notRoot
    ? 'the real Synapse runs as uid 991 like the official image, which needs root: run the tests as root'
    : `test peer(s) missing: ${list}. Install them with: ${INSTALL_COMMAND}`;
  if (process.env.CI === 'true') throw new Error(message);
  const bar = '!'.repeat(78);
  console.warn(
    [
      bar,
      `!!! SKIPPING TESTS: ${message}`,
      `!!! (with CI=true this is a failure, not a skip)`,
      bar,
    ].join('\n'),
  );
  return false;
}

/** `describe` when the peers are installed, else `describe.skip` (see requirePeers). */
export function describeWithPeers(names: PeerName[]): jest.Describe {
  return requirePeers(...names) ? describe : describe.skip;
}

// ---------------------------------------------------------------- processes

export interface Launched {
  child: ChildProcess;
  watchdog?: ChildProcess;
  exited: Promise<void>;
}

// Reads its stdin, a pipe from this process, until EOF: that is, until this process is gone
// however it died. Then kills the daemon ($1) and removes its directory ($2).
const WATCHDOG = 'read _; kill -9 "$1" 2>/dev/null; rm -rf "$2"';

/** Spawns a daemon with output appended to logFile, and its watchdog. */
export function launch(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  logFile: string,
  dir: string,
  user: { uid?: number; gid?: number } = {},
): Launched {
  const fd = fs.openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(command, args, { env, stdio: ['ignore', fd, fd], ...user });
  } finally {
    fs.closeSync(fd);
  }
  child.unref(); // a forgotten peer must not keep jest alive
  const exited = new Promise<void>((resolve) => {
    child.once('error', () => resolve()); // e.g. ENOENT: no 'exit' follows
    child.once('exit', () => resolve());
  });
  if (child.pid === undefined) return { child, exited };
  const watchdog = spawn('/bin/sh', ['-c', WATCHDOG, 'peer-watchdog', String(child.pid), dir], {
    stdio: ['pipe', 'ignore', 'ignore'],
    detached: true, // outlives a Ctrl-C to our process group, to clean up after it
  });
  watchdog.on('error', () => undefined);
  watchdog.unref();
  (watchdog.stdin as unknown as net.Socket).unref();
  void exited.then(() => watchdog.kill('SIGKILL'));
  return { child, watchdog, exited };
}

export function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

export async function killHard(p: Launched): Promise<void> {
  p.watchdog?.kill('SIGKILL'); // first, so that it does not remove the directory
  if (isRunning(p.child)) p.child.kill('SIGKILL');
  await p.exited;
}

export function logTail(logFile: string): string {
  try {
    return fs.readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Polls probe until it returns true; fails early if the process dies. */
export async function waitUntil(
  what: string,
  p: Launched,
  logFile: string,
  probe: () => Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let spawnError: Error | undefined;
  p.child.once('error', (err) => (spawnError = err));
  while (Date.now() < deadline) {
    if (spawnError || !isRunning(p.child)) {
      const why = spawnError?.message ?? `exit ${p.child.exitCode ?? p.child.signalCode}`;
      throw new Error(`${what} died while starting (${why}); log:\n${logTail(logFile)}`);
    }
    if (await probe().catch(() => false)) return;
    await sleep(100);
  }
  await killHard(p);
  throw new Error(`${what} not ready after ${timeoutMs} ms; log:\n${logTail(logFile)}`);
}

/** Status code of a GET, over TCP or a unix socket; over TLS when `ca` is given. */
export function httpStatus(options: http.RequestOptions & { ca?: string }): Promise<number> {
  return new Promise((resolve, reject) => {
    const get = options.ca ? https.get : http.get;
    const req = get({ ...options, agent: false, timeout: 2000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

// ---------------------------------------------------------------- TLS certificates

export interface TestCertificates {
  /** PEM of the CA that signed the server certificate (what s3-ca-chain would hold). */
  caCert: string;
  /** PEM server certificate for 127.0.0.1 and localhost, and its key. */
  serverCert: string;
  serverKey: string;
}

/** A throwaway CA and a server certificate it signed, made with the host's `openssl` in `dir`. */
export function makeTestCertificates(dir: string): TestCertificates {
  const file = (name: string) => path.join(dir, name);
  const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  const ca = ['-subj', '/CN=synapse-backup test CA', '-days', '2'];
  const caExtensions = [
    'basicConstraints=critical,CA:TRUE',
    'keyUsage=critical,keyCertSign,cRLSign',
  ];
  openssl(
    'req',
    '-x509',
    ...newKey,
    ...ca,
    '-keyout',
    file('ca.key'),
    '-out',
    file('ca.crt'),
    ...caExtensions.flatMap((e) => ['-addext', e]),
  );
  openssl(
    'req',
    '-new',
    ...newKey,
    '-subj',
    '/CN=127.0.0.1',
    '-keyout',
    file('server.key'),
    '-out',
    file('server.csr'),
  );
  fs.writeFileSync(
    file('server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n',
  );
  openssl(
    'x509',
    '-req',
    '-in',
    file('server.csr'),
    '-CA',
    file('ca.crt'),
    '-CAkey',
    file('ca.key'),
    '-set_serial',
    '1',
    '-days',
    '2',
    '-extfile',
    file('server.ext'),
    '-out',
    file('server.crt'),
  );
  return {
    caCert: fs.readFileSync(file('ca.crt'), 'utf8'),
    serverCert: fs.readFileSync(file('server.crt'), 'utf8'),
    serverKey: fs.readFileSync(file('server.key'), 'utf8'),
  };
}

// ---------------------------------------------------------------- MinIO

export interface MinioOptions {
  /**
   * Serve HTTPS with a certificate from a fresh test CA (MinIO reads public.crt
   * and private.key from its --certs-dir). The endpoint is then https:// and
   * `caCert` holds the CA's PEM.
   */
  tls?: boolean;
}

export interface MinioPeer {
  /** http://127.0.0.1:port, or https:// with `tls`. */
  endpoint: string;
  /** With `tls`: the PEM CA certificate that signed the server's. */
  caCert?: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: 'us-east-1';
  /** A fresh, empty bucket created at start. */
  bucket: string;
  dataDir: string;
  /** An S3 client for this server (path style, checksums only when required). */
  client: S3Client;
  createBucket(name: string): Promise<void>;
  /** kill -9, then start again on the same port and data. */
  restart(): Promise<void>;
  /** Kills the server and removes its data. Idempotent. */
  stop(): Promise<void>;
}

export async function startMinio(options: MinioOptions = {}): Promise<MinioPeer> {
  const bin = peerPath('minio');
  const root = await tmpDir('minio');
  const dataDir = path.join(root.path, 'data');
  const certsDir = path.join(root.path, 'certs');
  await fsp.mkdir(dataDir);
  let caCert: string | undefined;
  if (options.tls) {
    const caDir = path.join(root.path, 'ca');
    await fsp.mkdir(caDir);
    await fsp.mkdir(certsDir);
    try {
      const certs = makeTestCertificates(caDir);
      await fsp.writeFile(path.join(certsDir, 'public.crt'), certs.serverCert);
      await fsp.writeFile(path.join(certsDir, 'private.key'), certs.serverKey);
      caCert = certs.caCert;
    } catch (err) {
      await root.cleanup();
      throw err;
    }
  }
  const logFile = path.join(root.path, 'minio.log');
  const [port, consolePort] = [await freePort(), await freePort()];
  const accessKeyId = `test${randomBytes(6).toString('hex')}`;
  const secretAccessKey = randomBytes(20).toString('hex');
  const endpoint = `${caCert ? 'https' : 'http'}://127.0.0.1:${port}`;
  const env = {
    ...process.env,
    MINIO_ROOT_USER: accessKeyId,
    MINIO_ROOT_PASSWORD: secretAccessKey,
    MINIO_UPDATE: 'off',
    HOME: root.path, // minio creates ~/.minio
  };
  const args = [
    'server',
    dataDir,
    '--address',
    `127.0.0.1:${port}`,
    '--console-address',
    `127.0.0.1:${consolePort}`,
    '--certs-dir',
    certsDir,
  ];

  let proc: Launched;
  const start = async () => {
    proc = launch(bin, args, env, logFile, root.path);
    await waitUntil('minio', proc, logFile, async () => {
      const probe = { host: '127.0.0.1', port, path: '/minio/health/live', ca: caCert };
      const status = await httpStatus(probe);
      return status === 200;
    });
  };
  await start().catch(async (err) => {
    await root.cleanup();
    throw err;
  });

  const client = new S3Client({
    endpoint,
    region: 'us-east-1',
    credentials: { accessKeyId, secretAccessKey },
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    ...(caCert
      ? { requestHandler: new NodeHttpHandler({ httpsAgent: new https.Agent({ ca: caCert }) }) }
      : {}),
  });
  const createBucket = async (name: string) => {
    await client.send(new CreateBucketCommand({ Bucket: name }));
  };
  const bucket = `test-${randomBytes(8).toString('hex')}`;
  const stop = async () => {
    untrack();
    client.destroy();
    await killHard(proc);
    await root.cleanup();
  };
  const untrack = track(stop);
  try {
    await createBucket(bucket);
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    endpoint,
    caCert,
    accessKeyId,
    secretAccessKey,
    region: 'us-east-1',
    bucket,
    dataDir,
    client,
    createBucket,
    async restart() {
      await killHard(proc);
      await start();
    },
    stop,
  };
}

// ---------------------------------------------------------------- Pebble

export interface PebbleOptions {
  /**
   * Run the daemon (and so every command it execs) as this user and group
   * instead of the test's own. Its directory is handed to that user.
   */
  uid?: number;
  gid?: number;
  /** The daemon's PATH, where it looks up the commands it execs (not the request's). */
  path?: string;
}

export interface PebblePeer {
  /** $PEBBLE: layers, state and the socket live here. */
  dir: string;
  socketPath: string;
  /** kill -9, then start again on the same directory. */
  restart(): Promise<void>;
  /** Kills pebble and removes its directory. Idempotent. */
  stop(): Promise<void>;
}

export async function startPebble(options: PebbleOptions = {}): Promise<PebblePeer> {
  let bin = peerPath('pebble');
  const root = await tmpDir('pebble');
  const dir = root.path;
  const socketPath = path.join(dir, '.pebble.socket');
  const logFile = path.join(dir, 'pebble.log');
  const env: NodeJS.ProcessEnv = { ...process.env, PEBBLE: dir };
  if (options.path !== undefined) env.PATH = options.path;
  const user = { uid: options.uid, gid: options.gid ?? options.uid };
  if (user.uid !== undefined) {
    env.HOME = dir;
    await fsp.chown(dir, user.uid, user.gid!);
    // The cached binary may sit where that user cannot reach it (under /root).
    const copy = path.join(dir, 'pebble-bin');
    await fsp.copyFile(bin, copy);
    await fsp.chmod(copy, 0o755);
    bin = copy;
  }

  let proc: Launched;
  const start = async () => {
    proc = launch(bin, ['run', '--create-dirs', '--hold'], env, logFile, dir, user);
    await waitUntil('pebble', proc, logFile, async () => {
      return (await httpStatus({ socketPath, path: '/v1/system-info' })) === 200;
    });
  };
  await start().catch(async (err) => {
    await root.cleanup();
    throw err;
  });

  const stop = async () => {
    untrack();
    await killHard(proc);
    await root.cleanup();
  };
  const untrack = track(stop);
  return {
    dir,
    socketPath,
    async restart() {
      await killHard(proc);
      await start();
    },
    stop,
  };
}

// ---------------------------------------------------------------- Python ESDK

export interface EsdkRunResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

export interface EsdkOptions {
  /** Encrypt only: bytes per frame (a multiple of 128). The SDK default is 4096. */
  frameLength?: number;
  /** Encrypt: the encryption context written; decrypt: pairs the header must hold. */
  context?: Record<string, string>;
}

export interface PythonEsdk {
  /** The venv's python. */
  python: string;
  /** tests/support/esdk_tool.py: `encrypt|decrypt [--frame-length N]`, stdin to stdout. */
  script: string;
  /** Starts the tool; the passphrase goes through the environment. Killed by the sweep. */
  spawn(
    command: 'encrypt' | 'decrypt',
    passphrase: string,
    options?: EsdkOptions,
  ): ChildProcessWithoutNullStreams;
  /** Feeds input, collects output. Resolves with the exit code; rejects only if spawn fails. */
  run(
    command: 'encrypt' | 'decrypt',
    passphrase: string,
    input: Buffer,
    options?: EsdkOptions,
  ): Promise<EsdkRunResult>;
}

export function pythonEsdk(): PythonEsdk {
  const python = peerPath('esdk');
  const script = path.join(__dirname, 'esdk_tool.py');
  const spawnTool: PythonEsdk['spawn'] = (command, passphrase, options = {}) => {
    const args = [script, command];
    if (options.frameLength !== undefined) args.push('--frame-length', String(options.frameLength));
    for (const [k, v] of Object.entries(options.context ?? {})) args.push('--context', `${k}=${v}`);
    const env = { ...process.env, SYNAPSE_BACKUP_PASSPHRASE: passphrase };
    const child = spawn(python, args, { env, stdio: 'pipe' });
    const untrack = track(async () => void child.kill('SIGKILL'));
    child.once('exit', untrack);
    child.once('error', untrack);
    return child;
  };
  return {
    python,
    script,
    spawn: spawnTool,
    run(command, passphrase, input, options) {
      return new Promise((resolve, reject) => {
        const child = spawnTool(command, passphrase, options);
        const out: Buffer[] = [];
        const err: Buffer[] = [];
        child.stdout.on('data', (b: Buffer) => out.push(b));
        child.stderr.on('data', (b: Buffer) => err.push(b));
        child.stdin.on('error', () => undefined); // EPIPE when the tool fails early
        child.once('error', reject);
        child.once('close', (code) =>
          resolve({
            code,
            stdout: Buffer.concat(out),
            stderr: Buffer.concat(err).toString('utf8'),
          }),
        );
        child.stdin.end(input);
      });
    },
  };
}

/** The bytes of object `key` in `peer`'s bucket, read with its own client (not the code under test). */
export async function readObject(peer: MinioPeer, key: string): Promise<Buffer> {
  const out = await peer.client.send(new GetObjectCommand({ Bucket: peer.bucket, Key: key }));
  return Buffer.from(await out.Body!.transformToByteArray());
}
