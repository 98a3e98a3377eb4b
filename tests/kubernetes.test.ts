/**
 * The Kubernetes exec transport, through a real kube-apiserver + etcd and the test
 * kubelet (tests/support/kube.ts): the API server's own exec path, websocket v5 from
 * us, translated to SPDY towards the kubelet's streaming server, which runs commands
 * on this host. Plus a stub server that only speaks v4, for the negotiation check.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync, promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { KubeConfig } from '@kubernetes/client-node';
import { WebSocketServer } from 'ws';
import { BackupEngine } from '../src/backup/engine';
import type { EngineOptions } from '../src/backup/types';
import { describeForCharm } from '../src/charm/remedy';
import { BackupError } from '../src/errors';
import { parseS3Settings } from '../src/s3/settings';
import {
  KubernetesForbiddenError,
  KubernetesWorkload,
  parsePebbleServices,
  wrapCommand,
} from '../src/workload/kubernetes';
import { PebbleWorkload } from '../src/workload/pebble';
import type { ExecOptions, ExecProcess, Workload } from '../src/workload/workload';
import { type KubeRig, startKubeRig } from './support/kube';
import {
  type MinioPeer,
  type PebblePeer,
  describeWithPeers,
  peerPath,
  startMinio,
  startPebble,
  tmpDir,
} from './support/peers';
import type { ChildConfig, ChildReport } from './support/rss-child';
import { makeSynapseTree, snapshotTree, withoutSkipped } from './support/synapse-tree';
import { readAll } from './support/streams';

const MiB = 1024 * 1024;
const PASSPHRASE = 'correct horse battery staple';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function run(proc: ExecProcess) {
  const [stdout, stderr, status] = await Promise.all([
    readAll(proc.stdout),
    readAll(proc.stderr),
    proc.wait(),
  ]);
  return { stdout: stdout.toString(), stderr: stderr.toString(), status };
}

async function settledWithin<T>(promise: Promise<T>, ms: number): Promise<'settled' | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise.then(
        () => 'settled' as const,
        () => 'settled' as const,
      ),
      new Promise<'pending'>((r) => (timer = setTimeout(() => r('pending'), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const running = (pattern: string) => spawnSync('pgrep', ['-f', pattern]).status === 0;

async function gone(pattern: string, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (running(pattern) && Date.now() < deadline) await sleep(50);
  return !running(pattern);
}

/** A unique token for command lines, so that pgrep finds only this test's processes. */
const marker = () => `kt${Math.random().toString(36).slice(2, 10)}`;

/** Wraps a workload's exec; `onExec` sees each process (to kill it, or its connection). */
class Intercept implements Workload {
  readonly description: string;
  constructor(
    private readonly inner: Workload,
    private readonly onExec: (proc: ExecProcess, options: ExecOptions) => void,
    private readonly rewrite: (options: ExecOptions) => ExecOptions = (o) => o,
  ) {
    this.description = inner.description;
  }
  exec(options: ExecOptions): ExecProcess {
    const rewritten = this.rewrite(options);
    const proc = this.inner.exec(rewritten);
    this.onExec(proc, rewritten);
    return proc;
  }
  stopServices = (n: string[]) => this.inner.stopServices(n);
  startServices = (n: string[]) => this.inner.startServices(n);
  serviceStatus = (n: string[]) => this.inner.serviceStatus(n);
}

/** Calls `fn` once the process has sent `limit` bytes of stdout. */
function afterStdoutBytes(proc: ExecProcess, limit: number, fn: () => void): void {
  let seen = 0;
  let fired = false;
  proc.stdout.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (!fired && seen > limit) {
      fired = true;
      fn();
    }
  });
}

const isTarCreate = (options: ExecOptions) => options.command.join(' ').includes('tar --create');

// ------------------------------------------------------------------ no peers needed

describe('KubernetesWorkload without a cluster', () => {
  test('environment and working directory are applied by wrapping the command', () => {
    expect(wrapCommand({ command: ['tar', '-c'] })).toEqual(['tar', '-c']);
    expect(wrapCommand({ command: ['id'], environment: { A: '1 2', B_2: '' } })).toEqual([
      'env',
      'A=1 2',
      'B_2=',
      'id',
    ]);
    expect(wrapCommand({ command: ['pwd'], workingDir: '/data' })).toEqual([
      '/bin/sh',
      '-c',
      'cd -- "$1" && shift && exec "$@"',
      'sh',
      '/data',
      'pwd',
    ]);
    expect(() => wrapCommand({ command: ['id'], environment: { 'A-B': 'x' } })).toThrow(
      'invalid environment variable name "A-B"',
    );
  });

  test('pebble services output is parsed', () => {
    const out = [
      'Service  Startup  Current  Since',
      'synapse  enabled  active   today at 10:00 UTC',
      'other    disabled inactive -',
      '',
    ].join('\n');
    expect(parsePebbleServices(out)).toEqual([
      { name: 'synapse', current: 'active' },
      { name: 'other', current: 'inactive' },
    ]);
    expect(parsePebbleServices('')).toEqual([]);
  });

  test('fromCluster needs a namespace and the in-cluster API address', async () => {
    const root = await tmpDir('kube-sa');
    const saved = { ...process.env };
    try {
      delete process.env.KUBERNETES_SERVICE_HOST;
      delete process.env.KUBERNETES_SERVICE_PORT;
      const options = {
        appName: 'synapse',
        unitNumber: 0,
        container: 'synapse',
        rootDir: root.path,
      };
      expect(() => KubernetesWorkload.fromCluster(options)).toThrow(
        /cannot tell the charm's namespace: .*namespace is missing and JUJU_MODEL_NAME is not set/,
      );
      expect(() => KubernetesWorkload.fromCluster({ ...options, modelName: 'm' })).toThrow(
        'KUBERNETES_SERVICE_HOST/PORT are not set',
      );
      process.env.KUBERNETES_SERVICE_HOST = '127.0.0.1';
      process.env.KUBERNETES_SERVICE_PORT = '6443';
      expect(() => KubernetesWorkload.fromCluster({ ...options, modelName: 'm' })).toThrow(
        `the charm's service-account token ${root.path}/var/run/secrets/kubernetes.io/serviceaccount/token is missing`,
      );
    } finally {
      process.env = saved;
    }
  });

  test('a 403 on the handshake: the problem in the message, the grant-exec remedy apart', async () => {
    // What kube-apiserver answers a service account without `get` on pods/exec.
    const status = JSON.stringify({
      kind: 'Status',
      status: 'Failure',
      message: 'pods "synapse-0" is forbidden: User "u" cannot get resource "pods/exec"',
      reason: 'Forbidden',
      code: 403,
    });
    const server = http.createServer((_req, res) => res.writeHead(404).end());
    server.on('upgrade', (_req, socket: net.Socket) => {
      socket.end(
        `HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(status)}\r\nConnection: close\r\n\r\n${status}`,
      );
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as net.AddressInfo;
      const kubeConfig = new KubeConfig();
      kubeConfig.loadFromOptions({
        clusters: [{ name: 'c', server: `http://127.0.0.1:${port}`, skipTLSVerify: true }],
        users: [{ name: 'u', token: 'x' }],
        contexts: [{ name: 'c', cluster: 'c', user: 'u' }],
        currentContext: 'c',
      });
      const workload = new KubernetesWorkload({
        kubeConfig,
        namespace: 'm',
        pod: 'synapse-0',
        container: 'synapse',
        appName: 'matrix',
      });
      const proc = workload.exec({ command: ['true'] });
      proc.stdout.on('error', () => undefined);
      const err = await proc.wait().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KubernetesForbiddenError);
      expect(err).toMatchObject({
        code: 'workload',
        message: 'the charm may not exec into its pod',
        remedy: { kind: 'grant-exec', app: 'matrix' },
        apiMessage: 'pods "synapse-0" is forbidden: User "u" cannot get resource "pods/exec"',
      });
      expect(describeForCharm(err)).toBe(
        'the charm may not exec into its pod; run `juju trust matrix --scope=cluster`',
      );
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  describe('against a server that only speaks v4.channel.k8s.io (Kubernetes < 1.30)', () => {
    let server: http.Server;
    let workload: KubernetesWorkload;
    const sockets = new Set<net.Socket>();

    beforeAll(async () => {
      server = http.createServer((_req, res) => res.writeHead(404).end());
      server.on('connection', (s: net.Socket) => {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
      });
      const wss = new WebSocketServer({
        server,
        handleProtocols: (protocols) =>
          protocols.has('v4.channel.k8s.io') ? 'v4.channel.k8s.io' : false,
      });
      wss.on('connection', (ws, req) => {
        const query = new URL(req.url ?? '', 'http://x').searchParams;
        // [/bin/sh, -c, script, marker, ...argv]: the transport's exit-marker wrapper.
        const [, , , exitMarker, ...argv] = query.getAll('command');
        const send = (channel: number, text: string) =>
          ws.send(Buffer.concat([Buffer.from([channel]), Buffer.from(text)]));
        // The command line on stdout, the end markers on stdout and stderr (unless the
        // command is "lost"), then v4's Success status, then close.
        send(1, `${argv.join(' ')}\n`);
        if (argv[0] !== 'lost') {
          send(1, `\n${exitMarker} 0\n`);
          send(2, `\n${exitMarker} 0\n`);
        }
        ws.send(
          Buffer.concat([Buffer.from([3]), Buffer.from('{"metadata":{},"status":"Success"}')]),
        );
        ws.close(1000);
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const { port } = server.address() as net.AddressInfo;
      const kubeConfig = new KubeConfig();
      kubeConfig.loadFromOptions({
        clusters: [{ name: 'v4', server: `http://127.0.0.1:${port}`, skipTLSVerify: true }],
        users: [{ name: 'u', token: 'x' }],
        contexts: [{ name: 'v4', cluster: 'v4', user: 'u' }],
        currentContext: 'v4',
      });
      workload = new KubernetesWorkload({
        kubeConfig,
        namespace: 'm',
        pod: 'synapse-0',
        container: 'synapse',
      });
    });
    afterAll(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server?.close(resolve));
    });

    test('a command without stdin runs over v4', async () => {
      const result = await run(workload.exec({ command: ['echo', 'hi'] }));
      expect(result).toEqual({ stdout: 'echo hi\n', stderr: '', status: { exitCode: 0 } });
    });

    test('a Success status without the end marker is a lost connection, not a success', async () => {
      const proc = workload.exec({ command: ['lost'] });
      proc.stderr.resume();
      proc.stdout.on('error', () => undefined);
      await expect(proc.wait()).rejects.toThrow(
        /cannot run "lost" in m\/synapse-0 \(container synapse\): the connection to the command was lost before it finished \(the API server reported success, but the command's end marker never arrived\)/,
      );
    });

    test('a command that needs stdin EOF fails, naming the Kubernetes version needed', async () => {
      const proc = workload.exec({ command: ['tar', '-x'], stdin: true });
      proc.stdin!.on('error', () => undefined);
      proc.stdin!.end('data');
      const err = await proc.wait().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BackupError);
      expect((err as Error).message).toMatch(
        /cannot run "tar" in m\/synapse-0 \(container synapse\): .*v5\.channel\.k8s\.io protocol \(Kubernetes >= 1\.30; here the server chose v4\.channel\.k8s\.io\)/,
      );
    });
  });
});

// ------------------------------------------------------------------ through the rig

describeWithPeers(['kube', 'minio', 'pebble'])(
  'KubernetesWorkload through a real kube-apiserver',
  () => {
    let rig: KubeRig;
    let workload: KubernetesWorkload;

    beforeAll(async () => {
      rig = await startKubeRig();
      workload = new KubernetesWorkload({
        kubeConfig: rig.kubeConfig(),
        namespace: rig.namespace,
        pod: rig.pod,
        container: 'synapse',
      });
    }, 180_000);
    afterAll(async () => {
      await rig?.stop();
    });

    describe('exec', () => {
      test('stdout and exit code 0', async () => {
        const result = await run(workload.exec({ command: ['echo', 'hello', 'kubernetes'] }));
        expect(result).toEqual({
          stdout: 'hello kubernetes\n',
          stderr: '',
          status: { exitCode: 0 },
        });
      });

      test('a non-zero exit code is reported from the status channel, not thrown', async () => {
        const result = await run(
          workload.exec({ command: ['sh', '-c', 'echo out; echo err >&2; exit 7'] }),
        );
        expect(result).toEqual({ stdout: 'out\n', stderr: 'err\n', status: { exitCode: 7 } });
      });

      test('working directory and environment are passed', async () => {
        const dir = await tmpDir('kube-cwd');
        const result = await run(
          workload.exec({
            command: ['sh', '-c', 'pwd; echo "$GREETING"'],
            workingDir: dir.path,
            environment: { GREETING: 'hi there' },
          }),
        );
        expect(result).toEqual({
          stdout: `${dir.path}\nhi there\n`,
          stderr: '',
          status: { exitCode: 0 },
        });
      });

      test('stdin streams to the command and its end reaches the command as EOF (v5 CLOSE)', async () => {
        const size = 5 * MiB + 123;
        const proc = workload.exec({ command: ['wc', '-c'], stdin: true });
        const input = Readable.from(
          (function* () {
            let left = size;
            while (left > 0) {
              const n = Math.min(left, MiB);
              left -= n;
              yield Buffer.alloc(n, 0x61);
            }
          })(),
        );
        const [result] = await Promise.all([run(proc), pipeline(input, proc.stdin!)]);
        expect(result.stdout.trim()).toBe(String(size));
        expect(result.status).toEqual({ exitCode: 0 });
      });

      test('stdin round trip through cat keeps every byte', async () => {
        const input = Buffer.alloc(3 * MiB);
        for (let i = 0; i < input.length; i++) input[i] = (i * 7 + (i >> 11)) & 0xff;
        const proc = workload.exec({ command: ['cat'], stdin: true });
        proc.stdin!.end(input);
        const [stdout, , status] = await Promise.all([
          readAll(proc.stdout),
          readAll(proc.stderr),
          proc.wait(),
        ]);
        expect(status.exitCode).toBe(0);
        expect(stdout.equals(input)).toBe(true);
      });

      test('without stdin the command sees EOF at once', async () => {
        const result = await run(workload.exec({ command: ['cat'] }));
        expect(result).toEqual({ stdout: '', stderr: '', status: { exitCode: 0 } });
      });

      test('a slow consumer slows the producer (backpressure through the API server)', async () => {
        const total = 256 * MiB;
        const proc = workload.exec({ command: ['head', '-c', String(total), '/dev/zero'] });
        proc.stderr.resume();
        await sleep(3000); // nobody reads stdout
        const buffered = proc.stdout.readableLength;
        expect(buffered).toBeLessThan(16 * MiB);
        expect(await settledWithin(proc.wait(), 0)).toBe('pending');
        let n = 0;
        for await (const chunk of proc.stdout) n += (chunk as Buffer).length;
        expect(n).toBe(total);
        expect(await proc.wait()).toEqual({ exitCode: 0 });
      });

      test('output still in flight when the command exits arrives whole, however slowly it is read', async () => {
        // The kubelet closes its connection to the API server as soon as the command has
        // exited and its output is written to the socket. With a slow reader the API server
        // is not reading either, so megabytes are still unsent there (seen: FIN-WAIT-1 with
        // 3.5 MB in Send-Q); the kernel discards them when that closed socket is reset (once
        // the API server writes to it again, e.g. its SPDY ping), and the API server then
        // reports Success. The command must not end before the client has its output.
        // Whether the reset comes before that socket has emptied is a race (before the fix one
        // command lost its tail in 10 of 17 runs), so three run at once (before the fix: all
        // three lost 0.6 to 4.2 MB in each of 3 runs).
        const total = 64 * MiB;
        const dir = await tmpDir('kube-inflight');
        const readSlowly = async (i: number) => {
          const exited = path.join(dir.path, `exited-${i}`);
          const proc = workload.exec({
            command: [
              'sh',
              '-c',
              'head -c "$1" /dev/zero && touch "$2"',
              'sh',
              String(total),
              exited,
            ],
          });
          proc.stderr.resume();
          const status = proc.wait().catch((e: unknown) => e);
          // Read slowly throughout (a pause of 100 ms after each MiB), like an upload to a slow
          // S3, and not at all for a while (11 s) once the command has written all its output.
          const chunks = proc.stdout[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
          let n = 0;
          let stalled = false;
          for (let mib = 0; ;) {
            const next = await chunks.next().catch(() => null);
            if (!next || next.done) break;
            n += next.value.length;
            if (Math.floor(n / MiB) === mib) continue;
            mib = Math.floor(n / MiB);
            await sleep(100);
            if (
              !stalled &&
              (await fsp.access(exited).then(
                () => true,
                () => false,
              ))
            ) {
              stalled = true;
              await sleep(11_000);
            }
          }
          return { status: await status, bytes: n };
        };
        const whole = { status: { exitCode: 0 }, bytes: total };
        expect(await Promise.all([0, 1, 2].map(readSlowly))).toEqual([whole, whole, whole]);
      }, 120_000);

      test('a command killed by a signal in the workload reports 128+signal', async () => {
        const result = await run(
          workload.exec({ command: ['sh', '-c', 'echo started; kill -9 $$'] }),
        );
        expect(result.stdout).toBe('started\n');
        expect(result.status).toEqual({ exitCode: 137 });
      });

      test('kill() settles at once as killed, and a writing command dies of the dropped connection', async () => {
        const m = marker();
        const proc = workload.exec({ command: ['yes', m] });
        proc.stderr.resume();
        let received = 0;
        proc.stdout.on('data', (chunk: Buffer) => (received += chunk.length));
        while (received < MiB) await sleep(20);
        expect(running(`^yes ${m}$`)).toBe(true);
        proc.kill();
        expect(await proc.wait()).toEqual({ exitCode: null, signal: 'SIGKILL' });
        expect(await gone(`^yes ${m}$`)).toBe(true); // EPIPE: Kubernetes has no signal to send
      });

      test('a dropped connection (the node goes away) fails the command cleanly', async () => {
        const m = marker();
        const proc = workload.exec({ command: ['yes', m] });
        proc.stderr.resume();
        const stdoutError = new Promise<Error>((resolve) => proc.stdout.once('error', resolve));
        proc.stdout.resume();
        await sleep(500);
        await rig.killKubelet();
        try {
          const err = await proc.wait().catch((e: unknown) => e);
          expect(err).toBeInstanceOf(BackupError);
          expect((err as Error).message).toMatch(
            /cannot run "yes" in synapse-model\/synapse-0 \(container synapse\): (the connection to the command was lost before it finished|the connection to the Kubernetes API closed)/,
          );
          expect((await stdoutError).message).toBe((err as Error).message);
          expect(await gone(`^yes ${m}$`)).toBe(true);
        } finally {
          await rig.startKubelet();
        }
        const after = await run(workload.exec({ command: ['echo', 'back'] }));
        expect(after.stdout).toBe('back\n');
      });

      test('a missing pod or container is a clear error', async () => {
        const noPod = new KubernetesWorkload({
          kubeConfig: rig.kubeConfig(),
          namespace: rig.namespace,
          pod: 'synapse-9',
          container: 'synapse',
        });
        await expect(noPod.exec({ command: ['true'] }).wait()).rejects.toThrow(
          /cannot run "true" in synapse-model\/synapse-9 \(container synapse\): the Kubernetes API answered 404: pods "synapse-9" not found/,
        );
        const noContainer = new KubernetesWorkload({
          kubeConfig: rig.kubeConfig(),
          namespace: rig.namespace,
          pod: rig.pod,
          container: 'nope',
        });
        await expect(noContainer.exec({ command: ['true'] }).wait()).rejects.toThrow(
          /the Kubernetes API answered 400: .*container nope is not valid for pod synapse-0/,
        );
      });
    });

    describe('RBAC: Juju grants pods/exec create only; trust adds get', () => {
      test('without get on pods/exec: a KubernetesForbiddenError whose remedy the charm words as juju trust', async () => {
        const token = await rig.serviceAccountToken('synapse-untrusted', ['create']);
        const untrusted = new KubernetesWorkload({
          kubeConfig: rig.kubeConfig(token),
          namespace: rig.namespace,
          pod: rig.pod,
          container: 'synapse',
        });
        const err = await untrusted
          .exec({ command: ['true'] })
          .wait()
          .catch((e: unknown) => e);
        expect(err).toBeInstanceOf(KubernetesForbiddenError);
        expect(err).toMatchObject({
          code: 'workload',
          message: 'the charm may not exec into its pod',
          remedy: { kind: 'grant-exec', app: 'synapse' },
        });
        expect(describeForCharm(err)).toBe(
          'the charm may not exec into its pod; run `juju trust synapse --scope=cluster`',
        );
        expect((err as KubernetesForbiddenError).apiMessage).toMatch(
          /cannot get resource "pods\/exec" in API group "" in the namespace "synapse-model"/,
        );
      });

      test('trusted, in cluster: fromCluster reads the service account files and runs commands', async () => {
        const token = await rig.serviceAccountToken('synapse-trusted', ['create', 'get']);
        const root = await tmpDir('kube-sa');
        await rig.writeServiceAccountFiles(root.path, token);
        const saved = { ...process.env };
        try {
          const { hostname, port } = new URL(rig.server);
          process.env.KUBERNETES_SERVICE_HOST = hostname;
          process.env.KUBERNETES_SERVICE_PORT = port;
          const inCluster = KubernetesWorkload.fromCluster({
            appName: rig.appName,
            unitNumber: rig.unitNumber,
            container: 'synapse',
            modelName: 'not-used-when-the-namespace-file-exists',
            rootDir: root.path,
          });
          expect(inCluster.namespace).toBe(rig.namespace);
          expect(inCluster.pod).toBe('synapse-0');
          const result = await run(inCluster.exec({ command: ['echo', 'in cluster'] }));
          expect(result).toEqual({ stdout: 'in cluster\n', stderr: '', status: { exitCode: 0 } });
        } finally {
          process.env = saved;
        }
      });
    });

    describe('services through the pebble CLI in the container', () => {
      let pebble: PebblePeer;
      let withPebble: KubernetesWorkload;

      beforeAll(async () => {
        pebble = await startPebble();
        const layer = [
          'services:',
          '  synapse:',
          '    override: replace',
          '    command: sleep 1000',
          '    startup: disabled',
        ].join('\n');
        await new PebbleWorkload({ socketPath: pebble.socketPath }).addLayer('synapse', layer);
        withPebble = new KubernetesWorkload({
          kubeConfig: rig.kubeConfig(),
          namespace: rig.namespace,
          pod: rig.pod,
          container: 'synapse',
          pebble: { command: [peerPath('pebble')], socket: pebble.socketPath },
        });
      });
      afterAll(async () => {
        await pebble?.stop();
      });

      test('start, status and stop', async () => {
        expect(await withPebble.serviceStatus(['synapse'])).toEqual([
          { name: 'synapse', current: 'inactive' },
        ]);
        await withPebble.startServices(['synapse']);
        expect(await withPebble.serviceStatus(['synapse'])).toEqual([
          { name: 'synapse', current: 'active' },
        ]);
        await withPebble.stopServices(['synapse']);
        expect(await withPebble.serviceStatus([])).toEqual([
          { name: 'synapse', current: 'inactive' },
        ]);
        await expect(withPebble.startServices(['nope'])).rejects.toThrow(
          /starting services nope with Pebble in synapse-model\/synapse-0 \(container synapse\) exited with status 1/,
        );
      });
    });

    describe('the backup engine over Kubernetes exec, with MinIO', () => {
      let minio: MinioPeer;
      const prefix = 'backups/kubernetes';

      beforeAll(async () => {
        minio = await startMinio();
      });
      afterAll(async () => {
        await minio?.stop();
      });

      const s3 = (endpoint = minio.endpoint) =>
        parseS3Settings({
          bucket: minio.bucket,
          prefix,
          endpoint,
          uriStyle: 'path',
          accessKeyId: minio.accessKeyId,
          secretAccessKey: minio.secretAccessKey,
        });
      const engineFor = (dataDir: string, extra: Partial<EngineOptions> = {}) =>
        new BackupEngine({ s3: s3(), passphrase: PASSPHRASE, workload, dataDir, ...extra });

      const uploadsLeft = async () => {
        const engine = engineFor('/nonexistent');
        try {
          return (await engine.list()).uploads;
        } finally {
          engine.close();
        }
      };

      /** A create that must fail with `message`, leaving no object, manifest or upload behind. */
      async function expectCleanFailure(id: string, engine: BackupEngine, message: RegExp) {
        const err = await engine.create({ id }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(BackupError);
        expect((err as Error).message).toMatch(message);
        const listed = await engine.list();
        expect(listed.backups.find((b) => b.backupId === id)).toBeUndefined();
        expect(await uploadsLeft()).toEqual([]);
      }

      test('create and restore round-trip (the restore streams through stdin to tar)', async () => {
        const src = await tmpDir('synapse-src');
        const dst = await tmpDir('synapse-dst');
        await makeSynapseTree(src.path, { bigFileBytes: 12 * MiB });
        const engine = engineFor(src.path);
        const created = await engine.create({ id: 'kube-roundtrip' });
        expect(created.files).toBe(28);
        const restorer = engineFor(dst.path);
        const restored = await restorer.restore({ id: 'kube-roundtrip' });
        expect(restored.files).toBe(28);
        const expected = withoutSkipped(await snapshotTree(src.path));
        const actual = await snapshotTree(dst.path);
        expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
        expected.delete('homeserver.db'); // a snapshot, compared by the engine tests
        for (const [key, entry] of expected) expect([key, actual.get(key)]).toEqual([key, entry]);
        engine.close();
        restorer.close();
      });

      describe('failures mid-stream abort the multipart upload', () => {
        let src: { path: string };
        beforeAll(async () => {
          src = await tmpDir('synapse-src');
          await makeSynapseTree(src.path, { bigFileBytes: 40 * MiB });
        });

        test('tar exits non-zero', async () => {
          const failing = new Intercept(
            workload,
            () => undefined,
            (o) =>
              isTarCreate(o)
                ? {
                    ...o,
                    command: ['sh', '-c', '"$@" | head -c 20971520; exit 3', 'sh', ...o.command],
                  }
                : o,
          );
          const engine = engineFor(src.path, { workload: failing, partSize: 5 * MiB });
          await expectCleanFailure(
            'kube-exit-3',
            engine,
            /tar in pod synapse-model\/synapse-0 .* exited with status 3/,
          );
          engine.close();
        });

        test('tar is killed by a signal in the workload', async () => {
          const failing = new Intercept(
            workload,
            () => undefined,
            (o) =>
              isTarCreate(o)
                ? {
                    ...o,
                    command: [
                      'sh',
                      '-c',
                      '"$@" | head -c 20971520; kill -9 $$',
                      'sh',
                      ...o.command,
                    ],
                  }
                : o,
          );
          const engine = engineFor(src.path, { workload: failing, partSize: 5 * MiB });
          await expectCleanFailure('kube-signal', engine, /tar in .* exited with status 137/);
          engine.close();
        });

        test('the charm kills the command (kill())', async () => {
          const killing = new Intercept(workload, (proc, o) => {
            if (isTarCreate(o)) afterStdoutBytes(proc, 20 * MiB, () => proc.kill());
          });
          const engine = engineFor(src.path, { workload: killing, partSize: 5 * MiB });
          await expectCleanFailure('kube-killed', engine, /tar in .* was killed/);
          engine.close();
        });

        test('the connection drops (the kubelet dies)', async () => {
          const dropping = new Intercept(workload, (proc, o) => {
            if (isTarCreate(o)) afterStdoutBytes(proc, 20 * MiB, () => void rig.killKubelet());
          });
          const engine = engineFor(src.path, { workload: dropping, partSize: 5 * MiB });
          try {
            await expectCleanFailure(
              'kube-dropped',
              engine,
              /cannot run "sh" in synapse-model\/synapse-0 \(container synapse\): (the connection to the command was lost before it finished|the connection to the Kubernetes API closed)/,
            );
          } finally {
            await rig.startKubelet();
            engine.close();
          }
        });
      });

      describe('memory: a 1 GiB create with a slow S3 keeps the charm process small', () => {
        const BOUND = 400 * MiB;
        // Well below what tar, the API server and the encryption can produce even on a busy
        // CI machine: without backpressure the backlog would pile up in the charm (a run
        // with pausing disabled went past 400 MiB even at 40 MiB/s on a loaded machine).
        const S3_BYTES_PER_SECOND = 20 * MiB;
        let bigSrc: { path: string };
        let slow: ThrottledProxy;
        let childScript: string;

        beforeAll(async () => {
          bigSrc = await tmpDir('synapse-big');
          await makeSynapseTree(bigSrc.path, { mediaFiles: 2 });
          const blob = path.join(bigSrc.path, 'media_store/local_content/big');
          await fsp.mkdir(blob, { recursive: true });
          const fd = openSync(path.join(blob, 'blob'), 'w');
          try {
            const made = spawnSync('head', ['-c', String(1100 * MiB), '/dev/urandom'], {
              stdio: ['ignore', fd, 'pipe'],
            });
            expect(made.status).toBe(0);
          } finally {
            closeSync(fd);
          }
          slow = await startThrottledProxy(new URL(minio.endpoint), S3_BYTES_PER_SECOND);
          const out = await tmpDir('rss-child');
          childScript = path.join(out.path, 'rss-child.js');
          // esbuild's CLI, not its API: the API's realm checks trip inside jest's sandbox.
          const esbuildDir = path.dirname(require.resolve('esbuild/package.json'));
          const bundled = spawnSync(
            path.join(esbuildDir, 'bin', 'esbuild'),
            [
              path.join(__dirname, 'support', 'rss-child.ts'),
              '--bundle',
              '--platform=node',
              '--format=cjs',
              '--target=node20',
              '--log-level=warning',
              `--outfile=${childScript}`,
            ],
            { encoding: 'utf8' },
          );
          expect(bundled.stderr).toBe('');
          expect(bundled.status).toBe(0);
        }, 300_000);
        afterAll(async () => {
          await slow?.close();
        });

        async function measure(
          transport: 'kubernetes' | 'pebble',
          id: string,
          pebble?: PebblePeer,
        ) {
          const config: ChildConfig = {
            transport,
            kube: {
              server: rig.server,
              caCert: rig.caCert,
              token: rig.adminToken,
              namespace: rig.namespace,
              pod: rig.pod,
              container: 'synapse',
            },
            pebbleSocket: pebble?.socketPath,
            s3: {
              endpoint: slow.endpoint,
              bucket: minio.bucket,
              prefix,
              accessKeyId: minio.accessKeyId,
              secretAccessKey: minio.secretAccessKey,
            },
            dataDir: bigSrc.path,
            id,
            passphrase: PASSPHRASE,
          };
          const report = await runChild(childScript, config);
          const mib = (n: number) => (n / MiB).toFixed(1);
          console.log(
            `${transport}: peak RSS ${mib(report.peakRssBytes)} MiB (sampled ${mib(report.sampledPeakRssBytes)} MiB) ` +
              `for ${mib(report.plaintextBytes)} MiB of tar in ${report.durationSeconds.toFixed(1)} s through S3 throttled to ${mib(S3_BYTES_PER_SECOND)} MiB/s`,
          );
          expect(report.plaintextBytes).toBeGreaterThan(1024 * MiB);
          expect(report.peakRssBytes).toBeLessThan(BOUND);
          return report;
        }

        test('over Kubernetes exec', async () => {
          await measure('kubernetes', 'kube-rss');
        }, 600_000);

        test('over Pebble, for comparison (same bound)', async () => {
          const pebble = await startPebble();
          try {
            await measure('pebble', 'pebble-rss', pebble);
          } finally {
            await pebble.stop();
          }
        }, 600_000);
      });
    });
  },
);

// ------------------------------------------------------------------ helpers for the memory test

/** Runs the bundled rss-child with plain node; resolves with its report. */
function runChild(script: string, config: ChildConfig): Promise<ChildReport> {
  return new Promise((resolve, reject) => {
    // Node's flags as the charm's dispatch gives them.
    const child = spawn(process.execPath, ['--max-semi-space-size=1', script], {
      env: { ...process.env, RSS_CHILD_CONFIG: JSON.stringify(config) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) {
        reject(new Error(`rss-child exited ${code}: ${stderr.slice(-2000)}`));
        return;
      }
      resolve(JSON.parse(stdout.trim().split('\n').at(-1)!) as ChildReport);
    });
  });
}

interface ThrottledProxy {
  endpoint: string;
  close(): Promise<void>;
}

/** A TCP proxy to `target` that forwards client-to-server bytes at most `bytesPerSecond`. */
async function startThrottledProxy(target: URL, bytesPerSecond: number): Promise<ThrottledProxy> {
  const sockets = new Set<net.Socket>();
  // One budget for all connections: the uploads share the slow link.
  let nextFree = Date.now();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    upstream.pipe(client);
    client.on('data', (chunk: Buffer) => {
      const now = Date.now();
      nextFree = Math.max(nextFree, now) + (chunk.length / bytesPerSecond) * 1000;
      const wait = nextFree - now;
      upstream.write(chunk);
      if (wait > 5) {
        client.pause();
        setTimeout(() => client.resume(), wait);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
