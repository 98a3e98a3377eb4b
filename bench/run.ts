/**
 * `npm run bench` (scripts/bench.sh prepares, then runs this): our engine against the
 * alternatives a user would pick, on the same generated data and the same MinIO.
 *
 *   ours (pebble)  node build/synapse-backup.js --pebble-socket … --direct: the charm's default
 *                  (workload-exec=pebble): the archive goes between tar and the engine over a
 *                  unix socket in Pebble's directory; Pebble starts tar and reports its status
 *   ours (relay)   the same with the archive through Pebble's exec websocket
 *                  (workload-exec=pebble-relay, and the fallback when the socket cannot be used)
 *   ours (local)   the same engine with tar run on this host (no Pebble)
 *   floor          tar -c | aws s3 cp -            (no encryption: the least work possible)
 *   gpg            tar -c | gpg --symmetric | aws s3 cp -   (the released Python charm's way)
 *   seed           bench/seed_backup.py: tarfile -> aws-encryption-sdk -> boto3 (the seed's design)
 *   ours (kubernetes)  the engine with workload-exec=kubernetes (bench/kube-engine.ts): tar
 *                  through the API server's exec, on the rig of tests/support/kube.ts (a real
 *                  kube-apiserver and etcd, the test kubelet running commands on this host)
 *
 * The file-count case (--files 50000,100000,200000): Synapse-shaped media stores of small
 * files (bench/gen_data.py --files), ours (pebble) against `tar -c` (create) and
 * `tar -c | tar -x` (restore) of the same selection, with the cost per file.
 *
 * Restores of ours report the flush of the staged files before the swap (`sync -f`) in
 * its own column (flushSeconds of the restore's result); it is part of the wall time.
 *
 * Cases (--cases, BENCH_CASES; default all): sizes (the 1/4 GiB rows), files (the
 * file-count rows), kube (ours (kubernetes) at the first size, with the floor beside it
 * when sizes is not run), stage (the in-memory crypto stages).
 * Each run is timed by GNU time (wall, user+sys of the whole process tree, peak RSS of the
 * largest process); the CPU that MinIO and Pebble (with the tar it runs) spend meanwhile is
 * read from /proc. Throughput is the plain tar's size over wall time. Ratios compare ours
 * with each alternative for the same operation and size (their wall time / ours).
 *
 * Usage: node .bench/run.js --data-root DIR --sizes 1024,4096 --baselines-at 1024
 *          --venv DIR --out FILE [--repeat N] [--skip seed,gpg,local] [--cli BUNDLE]
 *          [--minio-dir DIR] [--cases sizes,files,kube,stage] [--files 50000,100000,200000]
 *
 * Noise control (2 shared cores; see README):
 *   - MinIO keeps its data on tmpfs (/dev/shm) when it has room for the largest size three
 *     times over, so that this VM's disk writeback does not decide the result for everyone;
 *     --minio-dir (BENCH_MINIO_DIR) picks another place, e.g. a disk.
 *   - Between runs: the object is deleted, MinIO's trash of deleted objects is emptied (else
 *     MinIO frees it in the background during the next run), dirty pages are synced, Pebble
 *     restarts with an empty state (freshPebble), and the run starts once MinIO is idle.
 *   - ours (pebble) and the floor, which decide the main ratio, run --repeat times (default 3)
 *     at every size and the median is kept (the 4 GiB floor's create took 13.9 to 20.3 s in
 *     single runs); so do the file-count creates, ours and tar -c (seconds each, where one
 *     slow moment moved the ratio by 0.1); everything else runs once. The repeated runs are
 *     interleaved (ours, floor, floor, ours, ours, floor), so that a slow stretch of the VM
 *     falls on both sides of the ratio rather than on all of one tool's runs.
 *   - The in-memory encryption stage runs first, while nothing else runs.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { SELECTED_GLOBS, SELECTED_PATHS, SQLITE_SNAPSHOT } from '../src/backup/scripts';
import { startKubeRig } from '../tests/support/kube';
import { kubePeerPaths } from '../tests/support/peers';

const REPO = path.resolve(__dirname, '..');
const DEFAULT_CLI = path.join(REPO, 'build', 'synapse-backup.js');
/** Node's flags as the charm's dispatch and the CLI's shebang give them. */
const NODE_FLAGS = '--max-semi-space-size=1';
const PASSPHRASE = 'bench passphrase, not a secret';

interface Measure {
  wallSeconds: number;
  userSeconds: number;
  sysSeconds: number;
  peakRssMiB: number;
  minioCpuSeconds: number;
  pebbleCpuSeconds: number;
  /** kube-apiserver, etcd and the kubelet (with the tar it runs), for ours (kubernetes). */
  kubeCpuSeconds: number;
  /** Ours' restore: seconds of the flush before the swap (from its --json result). */
  flushSeconds?: number;
}

interface Row extends Measure {
  /** What was archived: "1 GiB", or "50k files" for the file-count case. */
  label: string;
  sizeMiB: number;
  /** The file-count case: files in the selection; and wall microseconds per file. */
  files?: number;
  usPerFile?: number;
  operation: 'create' | 'restore';
  tool: string;
  bytes: number;
  mbPerSecond: number;
  cpuSeconds: number;
  allCpuSeconds: number;
  loadAverage: number;
  ok: boolean;
  note?: string;
  ratios?: Record<string, number>;
}

const { values: args } = parseArgs({
  options: {
    'data-root': { type: 'string' },
    sizes: { type: 'string', default: '1024,4096' },
    'baselines-at': { type: 'string', default: '1024' },
    venv: { type: 'string' },
    out: { type: 'string', default: path.join(REPO, 'bench-results', 'latest.json') },
    repeat: { type: 'string', default: '3' },
    'minio-dir': { type: 'string', default: process.env.BENCH_MINIO_DIR ?? '' },
    skip: { type: 'string', default: '' },
    cases: { type: 'string', default: 'sizes,files,kube,stage' },
    files: { type: 'string', default: '50000,100000,200000' },
    /** Another build of the CLI to measure as "ours" (e.g. a proposed change). */
    cli: { type: 'string', default: DEFAULT_CLI },
  },
});

const log = (msg: string) => process.stderr.write(`==> ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined || value === '') throw new Error(`missing ${what}`);
  return value;
}

const dataRoot = need(args['data-root'], '--data-root');
const venv = need(args.venv, '--venv');
const sizes = args.sizes!.split(',').map(Number);
const baselineSizes = new Set(args['baselines-at']!.split(',').map(Number));
const repeat = Math.max(1, Number(args.repeat));
const skip = new Set(args.skip!.split(',').filter(Boolean));
const CASES = ['sizes', 'files', 'kube', 'stage'];
const cases = new Set(args.cases!.split(',').filter(Boolean));
for (const c of cases)
  if (!CASES.includes(c)) throw new Error(`unknown case ${c} (${CASES.join(',')})`);
const fileCounts = args.files!.split(',').filter(Boolean).map(Number);
const CLI = path.resolve(args.cli!);
const peersCache =
  process.env.SYNAPSE_PEERS_CACHE ?? path.join(os.homedir(), '.cache', 'synapse-backup-peers');
const minioBin = process.env.MINIO_BIN ?? path.join(peersCache, 'bin', 'minio');
const pebbleBin = process.env.PEBBLE_BIN ?? path.join(peersCache, 'bin', 'pebble');

// ---------------------------------------------------------------- processes and /proc

function cpuSecondsOf(pid: number): number {
  // utime stime cutime cstime: the process and the children it has waited for (tar).
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i]), 0);
  return ticks / Number(spawnSync('getconf', ['CLK_TCK']).stdout.toString().trim() || 100);
}

function loadAverage(): number {
  return Number(fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

const daemons: ChildProcess[] = [];
function daemon(command: string, argv: string[], env: NodeJS.ProcessEnv, logFile: string) {
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(command, argv, { env, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  daemons.push(child);
  return child;
}

async function waitFor(what: string, probe: () => boolean, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited while starting`);
    if (probe()) return;
    await sleep(100);
  }
  throw new Error(`${what} did not start`);
}

function stopDaemons(): void {
  for (const child of daemons) if (child.exitCode === null) child.kill('SIGKILL');
}
process.on('exit', stopDaemons);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    stopDaemons();
    process.exit(130);
  });
}

// ---------------------------------------------------------------- the runs

interface Env {
  work: string;
  minioDir: string;
  endpoint: string;
  bucket: string;
  socket: string;
  minio: ChildProcess;
  pebble: ChildProcess;
  env: NodeJS.ProcessEnv;
  /** The Kubernetes rig, when the kube case runs. */
  kube?: { configFile: string; pids: number[]; stop: () => Promise<void> };
}

function sh(script: string, env: NodeJS.ProcessEnv): void {
  const out = spawnSync('bash', ['-c', script], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  if (out.status !== 0) throw new Error(`${script}: ${out.stderr.toString().trim()}`);
}

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The engine's selection, as arguments for a plain tar (what the baselines archive). */
function selection(dataDir: string): string[] {
  const suffixes = SELECTED_GLOBS.map((g) => g.replace(/^\*/, ''));
  const names = fs
    .readdirSync(dataDir)
    .filter((n) => suffixes.some((s) => n.endsWith(s)))
    .sort();
  if (fs.existsSync(path.join(dataDir, 'homeserver.db'))) names.push('homeserver.db');
  return [...names, ...SELECTED_PATHS.filter((p) => fs.existsSync(path.join(dataDir, p)))];
}

/** Runs `script` under GNU time, with MinIO's and Pebble's CPU read around it. */
function timed(
  e: Env,
  script: string,
  extraEnv: NodeJS.ProcessEnv = {},
): Measure & { ok: boolean; stderr: string } {
  const timeFile = path.join(e.work, 'time.txt');
  const kubeCpu = () => (e.kube?.pids ?? []).reduce((sum, pid) => sum + cpuSecondsOf(pid), 0);
  const m0 = cpuSecondsOf(e.minio.pid!);
  const p0 = cpuSecondsOf(e.pebble.pid!);
  const k0 = kubeCpu();
  const out = spawnSync(
    '/usr/bin/time',
    ['-f', '%e %U %S %M', '-o', timeFile, 'bash', '-c', `set -o pipefail; ${script}`],
    { env: { ...e.env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 },
  );
  const minioCpuSeconds = cpuSecondsOf(e.minio.pid!) - m0;
  const pebbleCpuSeconds = cpuSecondsOf(e.pebble.pid!) - p0;
  const kubeCpuSeconds = kubeCpu() - k0;
  const [wall, user, sys, rss] = fs
    .readFileSync(timeFile, 'utf8')
    .trim()
    .split('\n')
    .at(-1)!
    .split(' ')
    .map(Number);
  return {
    ok: out.status === 0,
    stderr: out.stderr.toString().trim().split('\n').slice(-3).join(' / '),
    wallSeconds: wall!,
    userSeconds: user!,
    sysSeconds: sys!,
    peakRssMiB: Math.round(rss! / 1024),
    minioCpuSeconds: +minioCpuSeconds.toFixed(2),
    pebbleCpuSeconds: +pebbleCpuSeconds.toFixed(2),
    kubeCpuSeconds: +kubeCpuSeconds.toFixed(2),
    flushSeconds: flushSecondsOf(out.stdout.toString()),
  };
}

/** flushSeconds of a restore's one-line JSON result (ours), else undefined. */
function flushSecondsOf(stdout: string): number | undefined {
  const line = stdout.trim().split('\n').at(-1);
  if (!line?.startsWith('{')) return undefined;
  try {
    const parsed = JSON.parse(line) as Record<string, unknown>;
    const value = parsed.flushSeconds ?? parsed['flush-seconds'];
    return typeof value === 'number' ? +value.toFixed(2) : undefined;
  } catch {
    return undefined;
  }
}

/** Seconds for SQLite's online backup of the data dir's homeserver.db (as the engine makes it). */
function timeSnapshot(dataDir: string, work: string): number {
  const copy = path.join(work, 'snapshot.db');
  const t0 = process.hrtime.bigint();
  const out = spawnSync('python3', [
    '-c',
    SQLITE_SNAPSHOT,
    path.join(dataDir, 'homeserver.db'),
    copy,
  ]);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  fs.rmSync(copy, { force: true });
  return out.status === 0 ? +seconds.toFixed(2) : NaN;
}

/** Files and bytes of a tree (to check that a baseline's restore got everything). */
function treeStats(root: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  const walk = (dir: string) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.isFile()) {
        files++;
        bytes += fs.statSync(full).size;
      }
    }
  };
  walk(root);
  return { files, bytes };
}

interface Tool {
  name: string;
  create(dataDir: string, id: string): string;
  restore(id: string, target: string): string;
  cleanup(id: string): string;
}

function tools(e: Env): Tool[] {
  const aws = `${q(path.join(venv, 'bin', 'aws'))} --endpoint-url ${q(e.endpoint)}`;
  const py = q(path.join(venv, 'bin', 'python'));
  const cli = (pebble: boolean, direct = false) =>
    `node ${NODE_FLAGS} ${q(CLI)} --bucket ${e.bucket} --prefix bench --endpoint ${q(e.endpoint)} --uri-style path` +
    (pebble ? ` --pebble-socket ${q(e.socket)}` : '') +
    (direct ? ' --direct' : '');
  const tar = (dataDir: string) =>
    `tar -c -f - --format=posix -C ${q(dataDir)} -- ${selection(dataDir).map(q).join(' ')}`;
  const object = (id: string) => `s3://${e.bucket}/bench/${id}`;
  const passFile = path.join(e.work, 'passphrase');
  const gpg = `gpg --batch --quiet --pinentry-mode loopback --passphrase-file ${q(passFile)}`;
  const ours = (name: string, pebble: boolean, direct = false): Tool => ({
    name,
    create: (dataDir, id) =>
      // gen_data.py's homeserver.yaml names /data (the charm's mount): read it under dataDir.
      `${cli(pebble, direct)} create --config-root /data --data-dir ${q(dataDir)} --id ${id} --json`,
    restore: (id, target) =>
      `${cli(pebble, direct)} restore --id ${id} --data-dir ${q(target)} --json`,
    cleanup: (id) => `${cli(false)} delete --id ${id} --json`,
  });
  const kubeDriver = `node ${NODE_FLAGS} ${q(path.join(REPO, '.bench', 'kube-engine.js'))}`;
  return [
    ours('ours (pebble)', true, true),
    {
      name: 'ours (kubernetes)',
      create: (dataDir, id) => `${kubeDriver} create --data-dir ${q(dataDir)} --id ${id}`,
      restore: (id, target) => `${kubeDriver} restore --id ${id} --data-dir ${q(target)}`,
      cleanup: (id) => `${cli(false)} delete --id ${id} --json`,
    },
    {
      // The file-count case's baselines: what tar alone costs on the same selection.
      name: 'tar -c',
      create: (dataDir) => `${tar(dataDir)} | wc -c >/dev/null`,
      restore: () => 'false',
      cleanup: () => 'true',
    },
    {
      name: 'tar -c | tar -x',
      create: () => 'true',
      restore: (id, target) => `${tar(sourceOf(id))} | tar -x -f - -C ${q(target)}`,
      cleanup: () => 'true',
    },
    ours('ours (relay)', true),
    ours('ours (local)', false),
    {
      name: 'floor',
      create: (dataDir, id) => `${tar(dataDir)} | ${aws} s3 cp - ${object(id)}`,
      restore: (id, target) => `${aws} s3 cp ${object(id)} - | tar -x -f - -C ${q(target)}`,
      cleanup: (id) => `${aws} s3 rm ${object(id)}`,
    },
    {
      name: 'gpg',
      create: (dataDir, id) =>
        `${tar(dataDir)} | ${gpg} --symmetric | ${aws} s3 cp - ${object(id)}`,
      restore: (id, target) =>
        `${aws} s3 cp ${object(id)} - | ${gpg} --decrypt | tar -x -f - -C ${q(target)}`,
      cleanup: (id) => `${aws} s3 rm ${object(id)}`,
    },
    {
      name: 'seed',
      create: (dataDir, id) =>
        `${py} ${q(path.join(REPO, 'bench', 'seed_backup.py'))} create --endpoint ${q(e.endpoint)} --bucket ${e.bucket} --key bench/${id} --data-dir ${q(dataDir)}`,
      restore: (id, target) =>
        `${py} ${q(path.join(REPO, 'bench', 'seed_backup.py'))} restore --endpoint ${q(e.endpoint)} --bucket ${e.bucket} --key bench/${id} --data-dir ${q(target)}`,
      cleanup: (id) => `${aws} s3 rm ${object(id)}`,
    },
  ];
}

/** The data dir a file-count baseline's restore copies from (its "backup id" is that dir). */
const sourceDirs = new Map<string, string>();
const sourceOf = (id: string): string => sourceDirs.get(id) ?? id;

const TOOL_KEYS: Record<string, string> = {
  'ours (pebble)': 'ours',
  'ours (kubernetes)': 'kube',
  'tar -c': 'tar',
  'tar -c | tar -x': 'tar-x',
  'ours (relay)': 'relay',
  'ours (local)': 'local',
  floor: 'floor',
  gpg: 'gpg',
  seed: 'seed',
};

async function start(): Promise<Env> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'synapse-bench-'));
  const [port, consolePort] = [await freePort(), await freePort()];
  const user = `bench${randomBytes(4).toString('hex')}`;
  const secret = randomBytes(16).toString('hex');
  const minioDir = args['minio-dir'] || defaultMinioDir(work);
  fs.mkdirSync(minioDir, { recursive: true });
  log(`MinIO stores its data in ${minioDir}`);
  const minio = daemon(
    minioBin,
    [
      'server',
      minioDir,
      '--address',
      `127.0.0.1:${port}`,
      '--console-address',
      `127.0.0.1:${consolePort}`,
    ],
    {
      ...process.env,
      MINIO_ROOT_USER: user,
      MINIO_ROOT_PASSWORD: secret,
      MINIO_UPDATE: 'off',
      HOME: work,
    },
    path.join(work, 'minio.log'),
  );
  const pebbleDir = path.join(work, 'pebble');
  const pebble = startPebble(work);
  const socket = path.join(pebbleDir, '.pebble.socket');
  const endpoint = `http://127.0.0.1:${port}`;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    AWS_ACCESS_KEY_ID: user,
    AWS_SECRET_ACCESS_KEY: secret,
    AWS_DEFAULT_REGION: 'us-east-1',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    SYNAPSE_BACKUP_PASSPHRASE: PASSPHRASE,
    GNUPGHOME: path.join(work, 'gnupg'),
    BENCH_ENDPOINT: endpoint,
    BENCH_BUCKET: 'bench',
    BENCH_PREFIX: 'bench',
  };
  fs.mkdirSync(env.GNUPGHOME!, { mode: 0o700 });
  fs.writeFileSync(path.join(work, 'passphrase'), PASSPHRASE, { mode: 0o600 });
  const e: Env = { work, endpoint, bucket: 'bench', socket, minio, pebble, env, minioDir };
  await waitFor(
    'minio',
    () => spawnSync('curl', ['-sf', `${endpoint}/minio/health/live`]).status === 0,
    minio,
  );
  await waitFor('pebble', () => fs.existsSync(socket), pebble);
  sh(`${q(path.join(venv, 'bin', 'aws'))} --endpoint-url ${endpoint} s3 mb s3://bench`, env);
  if (cases.has('kube')) e.kube = await startKube(work);
  if (e.kube) env.BENCH_KUBE_CONFIG = e.kube.configFile;
  return e;
}

/**
 * The Kubernetes rig (tests/support/kube.ts: etcd, kube-apiserver, the test kubelet, which
 * runs the pod's commands on this host), and the pids whose CPU counts as the transport's.
 */
async function startKube(work: string): Promise<NonNullable<Env['kube']>> {
  log('starting the Kubernetes rig (etcd, kube-apiserver, the test kubelet)');
  const rig = await startKubeRig();
  const configFile = path.join(work, 'kube.json');
  fs.writeFileSync(
    configFile,
    JSON.stringify({
      kubeConfig: rig.kubeConfig().exportConfig(),
      namespace: rig.namespace,
      pod: rig.pod,
      container: 'synapse',
    }),
    { mode: 0o600 },
  );
  const bins = Object.values(kubePeerPaths()).map((p) => fs.realpathSync(p));
  const pids = fs
    .readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number)
    .filter((pid) => {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
        return (
          Number(stat[1]) === process.pid && bins.includes(fs.readlinkSync(`/proc/${pid}/exe`))
        );
      } catch {
        return false;
      }
    });
  if (pids.length < 3)
    throw new Error(`the Kubernetes rig: found ${pids.length} of its 3 processes`);
  return { configFile, pids, stop: () => rig.stop() };
}

function machine(): Record<string, string | number> {
  const cpu = fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/)?.[1];
  const version = (cmd: string, argv: string[]) =>
    spawnSync(cmd, argv).stdout?.toString().split('\n')[0]?.trim() ?? '?';
  return {
    cpu: cpu ?? '?',
    cpus: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    tar: version('tar', ['--version']),
    gpg: version('gpg', ['--version']),
    awsCli: version(path.join(venv, 'bin', 'aws'), ['--version']),
    python: version(path.join(venv, 'bin', 'python'), ['--version']),
    minio: fs.readFileSync(path.join(peersCache, 'stamps', 'minio'), 'utf8').trim(),
    pebble: fs.readFileSync(path.join(peersCache, 'stamps', 'pebble'), 'utf8').trim(),
  };
}

/** tmpfs when it holds three times the largest size (object, trash, slack); else the work dir. */
function defaultMinioDir(work: string): string {
  const need = 3 * Math.max(...sizes) * 1024 * 1024;
  try {
    const st = fs.statfsSync('/dev/shm');
    if (st.bavail * st.bsize > need) return fs.mkdtempSync('/dev/shm/synapse-bench-minio-');
  } catch {
    // no /dev/shm
  }
  return path.join(work, 'minio');
}

/** Starts Pebble (`pebble run --create-dirs --hold`) with its directory under `work`. */
function startPebble(work: string): ChildProcess {
  const pebbleDir = path.join(work, 'pebble');
  return daemon(
    pebbleBin,
    ['run', '--create-dirs', '--hold'],
    { ...process.env, PEBBLE: pebbleDir },
    path.join(work, 'pebble.log'),
  );
}

/**
 * Pebble with an empty state for the next run. Pebble keeps every finished change (up to 1000,
 * for 7 days: pruneMaxChanges and pruneWait in pebble's internals/overlord/overlord.go) and
 * writes its whole state file, fsynced, on every change of state, so an exec costs more the
 * more changes the daemon holds: the bench's own earlier runs (about 800 changes by the file
 * counts) would otherwise decide the later rows (README: "Pebble's state").
 */
async function freshPebble(e: Env): Promise<void> {
  const old = e.pebble;
  if (old.exitCode === null) {
    const exited = new Promise((resolve) => old.once('exit', resolve));
    old.kill('SIGTERM');
    await Promise.race([exited, sleep(5000)]);
    if (old.exitCode === null && old.signalCode === null) {
      old.kill('SIGKILL');
      // Gone before its socket and state are removed, so that it cannot remove the new one's.
      await Promise.race([exited, sleep(5000)]);
      if (old.exitCode === null && old.signalCode === null) throw new Error('pebble did not exit');
    }
  }
  const pebbleDir = path.join(e.work, 'pebble');
  for (const name of ['.pebble.state', '.pebble.socket']) {
    fs.rmSync(path.join(pebbleDir, name), { force: true });
  }
  e.pebble = startPebble(e.work);
  await waitFor('pebble', () => fs.existsSync(e.socket), e.pebble);
}

/**
 * Readies the next timed run: restarts Pebble with an empty state (freshPebble), empties
 * MinIO's trash (deleted objects, which it otherwise frees in the background), syncs dirty
 * pages, and waits (up to 20 s) until MinIO uses under 5% of a CPU.
 */
async function settle(e: Env): Promise<void> {
  await freshPebble(e);
  // MinIO may still be moving a deleted object in: ENOTEMPTY then, so retry (it ended a run once).
  fs.rmSync(path.join(e.minioDir, '.minio.sys', 'tmp', '.trash'), {
    recursive: true,
    force: true,
    maxRetries: 20,
    retryDelay: 100,
  });
  spawnSync('sync');
  for (let i = 0; i < 40; i++) {
    const before = cpuSecondsOf(e.minio.pid!);
    await sleep(500);
    if (cpuSecondsOf(e.minio.pid!) - before < 0.025) return;
  }
}

/** The engine's own encryption stage, in memory (bench/crypto-stage.ts). */
function cryptoStage(): unknown[] {
  const out = spawnSync('node', [path.join(REPO, '.bench', 'crypto-stage.js'), '1024', '1048576'], {
    env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
  });
  if (out.status !== 0) throw new Error(`crypto stage: ${out.stderr.toString()}`);
  return out.stdout
    .toString()
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as unknown);
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
}

type Run = Measure & { ok: boolean; stderr: string; load: number };

/** One data set: a size of the generated data dir, or a file count. */
interface DataCase {
  label: string;
  sizeMiB: number;
  dataDir: string;
  tarBytes: number;
  files?: number;
  source: { files: number; bytes: number };
}

function dataCase(label: string, sizeMiB: number, dataDir: string, files?: boolean): DataCase {
  // Warms the page cache and measures the plain tar once: the common denominator.
  const tarBytes = Number(
    spawnSync('bash', [
      '-c',
      `tar -c -f - --format=posix -C ${q(dataDir)} -- ${selection(dataDir).map(q).join(' ')} | wc -c`,
    ]).stdout.toString(),
  );
  const source = treeStats(dataDir);
  // Not the stamp and the two files a backup skips.
  return { label, sizeMiB, dataDir, tarBytes, source, files: files ? source.files - 3 : undefined };
}

/** Create (timed), then restore that object (timed): one attempt of `tool`. */
async function runOnce(
  e: Env,
  tool: Tool,
  data: DataCase,
  label: string,
  operations: readonly ('create' | 'restore')[],
): Promise<Partial<Record<'create' | 'restore', Run>>> {
  const key = TOOL_KEYS[tool.name]!;
  const got: Partial<Record<'create' | 'restore', Run>> = {};
  const id = `${key}-${data.sizeMiB}-${data.files ?? 0}-${Date.now()}`;
  sourceDirs.set(id, data.dataDir);
  const target = path.join(e.work, `restore-${id}`);
  fs.mkdirSync(target);
  for (const operation of ['create', 'restore'] as const) {
    const timedRun = operations.includes(operation);
    // An untimed create still makes the object a timed restore reads; an untimed restore is not run.
    if (!timedRun && operation === 'restore') continue;
    if (timedRun) log(`${data.label} ${tool.name} ${operation}${label}`);
    await settle(e);
    const load = loadAverage();
    const m = timed(
      e,
      operation === 'create' ? tool.create(data.dataDir, id) : tool.restore(id, target),
    );
    if (!timedRun) continue;
    if (m.ok && operation === 'restore') {
      // Everything back? (Ours also checks SHA-256 and counts against its manifest.)
      const restored = treeStats(target);
      const expectedFiles = data.source.files - 3; // not the stamp and the two skipped files
      if (restored.files !== expectedFiles || restored.bytes < data.source.bytes * 0.99 - 1e6) {
        m.ok = false;
        m.stderr = `restored ${restored.files} files (${restored.bytes} bytes), expected ${expectedFiles}`;
      }
    }
    got[operation] = { ...m, load };
    log(
      `    ${m.ok ? '' : `FAILED (${m.stderr}) `}${m.wallSeconds} s, ${(data.tarBytes / 1e6 / m.wallSeconds).toFixed(0)} MB/s, ${m.peakRssMiB} MiB${m.flushSeconds !== undefined ? `, flush ${m.flushSeconds} s` : ''}`,
    );
    if (!m.ok) break;
  }
  fs.rmSync(target, { recursive: true, force: true });
  spawnSync('bash', ['-c', tool.cleanup(id)], { env: e.env, stdio: 'ignore' });
  return got;
}

/**
 * Runs each of `list` `times` times, interleaved: attempt i runs them in order, the next one
 * in reverse (ours, floor, floor, ours, ours, …), so that a slow stretch of the VM falls on
 * both sides of a ratio rather than on one tool's runs. Returns each tool's median rows.
 */
async function runTools(
  e: Env,
  list: Tool[],
  data: DataCase,
  times: number,
  operations: readonly ('create' | 'restore')[] = ['create', 'restore'],
): Promise<Row[]> {
  const runs = new Map(list.map((t) => [t, { create: [] as Run[], restore: [] as Run[] }]));
  for (let i = 0; i < times; i++) {
    for (const tool of i % 2 === 0 ? list : [...list].reverse()) {
      const got = await runOnce(e, tool, data, times > 1 ? ` #${i + 1}` : '', operations);
      if (got.create) runs.get(tool)!.create.push(got.create);
      if (got.restore) runs.get(tool)!.restore.push(got.restore);
    }
  }
  return list.flatMap((tool) => medianRows(tool, data, runs.get(tool)!));
}

/** The median run (by wall time) of each operation, as a row. */
function medianRows(tool: Tool, data: DataCase, runs: Record<'create' | 'restore', Run[]>): Row[] {
  const rows: Row[] = [];
  for (const operation of ['create', 'restore'] as const) {
    const list = runs[operation];
    if (list.length === 0) continue;
    const best = list.find((r) => r.wallSeconds === median(list.map((x) => x.wallSeconds)))!;
    const cpuSeconds = +(best.userSeconds + best.sysSeconds).toFixed(2);
    rows.push({
      label: data.label,
      sizeMiB: data.sizeMiB,
      files: data.files,
      usPerFile: data.files ? +((best.wallSeconds * 1e6) / data.files).toFixed(1) : undefined,
      operation,
      tool: tool.name,
      bytes: data.tarBytes,
      wallSeconds: best.wallSeconds,
      mbPerSecond: +(data.tarBytes / 1e6 / best.wallSeconds).toFixed(1),
      userSeconds: best.userSeconds,
      sysSeconds: best.sysSeconds,
      cpuSeconds,
      minioCpuSeconds: best.minioCpuSeconds,
      pebbleCpuSeconds: best.pebbleCpuSeconds,
      kubeCpuSeconds: best.kubeCpuSeconds,
      allCpuSeconds: +(
        cpuSeconds +
        best.minioCpuSeconds +
        best.pebbleCpuSeconds +
        best.kubeCpuSeconds
      ).toFixed(2),
      flushSeconds: best.flushSeconds,
      peakRssMiB: best.peakRssMiB,
      loadAverage: best.load,
      ok: list.every((r) => r.ok),
      note: list.find((r) => !r.ok)?.stderr,
    });
  }
  return rows;
}

/** The 1 and 4 GiB rows (case sizes), and ours (kubernetes) at the first size (case kube). */
async function runSizes(e: Env, rows: Row[], snapshots: Record<number, number>): Promise<void> {
  for (const size of sizes) {
    const first = size === sizes[0];
    if (!cases.has('sizes') && !first) continue;
    const data = dataCase(
      size >= 1024 ? `${size / 1024} GiB` : `${size} MiB`,
      size,
      path.join(dataRoot, `data-${size}`),
    );
    if (cases.has('sizes')) {
      // The engine snapshots homeserver.db with SQLite's online backup (the alternatives
      // tar the live file): how much of its create time that is.
      snapshots[size] = timeSnapshot(data.dataDir, e.work);
      log(`${size} MiB: SQLite snapshot of homeserver.db takes ${snapshots[size]} s`);
    }
    const selected = tools(e).filter((tool) => {
      const key = TOOL_KEYS[tool.name]!;
      if (skip.has(key) || key === 'tar' || key === 'tar-x') return false;
      if (key === 'kube' && !(first && cases.has('kube'))) return false;
      // Without the sizes case, only the kube row and the floor beside it.
      if (!cases.has('sizes') && key !== 'kube' && key !== 'floor') return false;
      const isBaseline = key === 'gpg' || key === 'seed' || key === 'local' || key === 'relay';
      return !(isBaseline && !baselineSizes.has(size));
    });
    // ours (pebble) and the floor decide the main ratio: --repeat runs each, interleaved.
    const repeated = selected.filter((t) => ['ours', 'floor'].includes(TOOL_KEYS[t.name]!));
    const sized = await runTools(e, repeated, data, repeat);
    for (const tool of selected) {
      if (!repeated.includes(tool)) sized.push(...(await runTools(e, [tool], data, 1)));
    }
    const order = (r: Row) => selected.findIndex((t) => t.name === r.tool);
    rows.push(...sized.sort((a, b) => order(a) - order(b)));
  }
}

/**
 * The file-count rows: ours (pebble) against tar -c and tar -c | tar -x. The creates, ours and
 * tar -c, are the median of --repeat runs, interleaved (a few seconds each at 50,000 files,
 * where one slow moment of the VM moved the ratio by 0.1); the restores, tens of seconds
 * each, run once.
 */
async function runFiles(e: Env, rows: Row[]): Promise<void> {
  const all = tools(e);
  const byKey = (key: string) => all.find((t) => TOOL_KEYS[t.name] === key)!;
  for (const n of fileCounts) {
    const label = `${n >= 1000 ? `${n / 1000}k` : n} files`;
    const data = dataCase(label, 0, path.join(dataRoot, `files-${n}`), true);
    log(
      `${label}: ${data.files} files in the selection, ${(data.tarBytes / 1e6).toFixed(0)} MB of tar`,
    );
    const ours = skip.has('ours') ? [] : [byKey('ours')];
    const created = await runTools(e, [...ours, byKey('tar')], data, repeat, ['create']);
    const restored = await runTools(e, [...ours, byKey('tar-x')], data, 1, ['restore']);
    // Rows in the table's order: ours create, ours restore, tar -c, tar -c | tar -x.
    rows.push(...created.slice(0, ours.length), ...restored.slice(0, ours.length));
    rows.push(...created.slice(ours.length), ...restored.slice(ours.length));
  }
}

async function main(): Promise<void> {
  const started = Date.now();
  let stage: unknown[] = [];
  if (cases.has('stage')) {
    log('encryption stage alone (in memory, 1 GiB, 1 MiB frames)');
    stage = cryptoStage();
  }
  const e = await start();
  const rows: Row[] = [];
  const snapshots: Record<number, number> = {};
  try {
    if (cases.has('sizes') || cases.has('kube')) await runSizes(e, rows, snapshots);
    if (cases.has('files')) await runFiles(e, rows);

    // Ratios: ours over each alternative, same data and operation (their wall / ours). In
    // the file-count case the alternatives are tar -c (create) and tar -c | tar -x (restore).
    for (const row of rows) {
      if (!row.tool.startsWith('ours')) continue;
      row.ratios = {};
      for (const other of rows) {
        if (other.label !== row.label || other.operation !== row.operation) continue;
        if (other.tool.startsWith('ours')) continue;
        const name = other.tool.startsWith('tar') ? 'floor' : other.tool;
        row.ratios[name] = +(other.wallSeconds / row.wallSeconds).toFixed(2);
      }
    }
    const result = {
      date: new Date().toISOString(),
      machine: machine(),
      settings: {
        sizesMiB: sizes,
        baselinesAtMiB: [...baselineSizes],
        repeat,
        cases: [...cases],
        fileCounts: cases.has('files') ? fileCounts : [],
        minioDir: e.minioDir.startsWith('/dev/shm') ? 'tmpfs (/dev/shm)' : e.minioDir,
      },
      rows,
      encryptionStage: stage,
      snapshotSeconds: snapshots,
      benchSeconds: Math.round((Date.now() - started) / 1000),
    };
    fs.mkdirSync(path.dirname(args.out!), { recursive: true });
    fs.writeFileSync(args.out!, `${JSON.stringify(result, null, 2)}\n`);
    process.stdout.write(`${table(result)}\n`);
    log(`wrote ${args.out} (${result.benchSeconds} s)`);
  } finally {
    await e.kube?.stop().catch(() => undefined);
    stopDaemons();
    await sleep(200);
    fs.rmSync(e.work, { recursive: true, force: true });
    if (!e.minioDir.startsWith(e.work)) fs.rmSync(e.minioDir, { recursive: true, force: true });
  }
}

/** The results as a Markdown table (what the README shows). */
export function table(result: {
  machine: Record<string, string | number>;
  rows: Row[];
  encryptionStage: unknown[];
  snapshotSeconds?: Record<number, number>;
  // (Older results lack the newer row fields; the table copes.)
  settings?: { repeat?: number; minioDir?: string; sizesMiB?: number[] };
}): string {
  const m = result.machine;
  const st = result.settings;
  const lines = [
    `Machine: ${m.cpu}, ${m.cpus} CPUs, ${m.memoryGiB} GiB RAM, Linux ${m.kernel}; node ${m.node}; MinIO ${String(m.minio).split('@')[1]} and the engine on the same host${st?.minioDir ? `; MinIO data on ${st.minioDir}` : ''}.${st?.repeat && st.repeat > 1 ? ` ours (pebble) and the floor: median of ${st.repeat} runs at each size; the file-count creates (ours and tar -c) too.` : ''}`,
    '',
    '| size | op | tool | wall s | flush s | MB/s | CPU s | all CPU s | peak RSS MiB | vs floor | vs gpg | vs seed |',
    '|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  const ratio = (r: Row, tool: string) => {
    const v = r.ratios?.[tool];
    return v === undefined ? '' : `${v.toFixed(2)}x`;
  };
  // A pipe inside a cell ("tar -c | tar -x") is escaped, or it would split the cell.
  const tool = (r: Row) => `${r.tool.replace(/\|/g, '\\|')}${r.ok ? '' : ' (FAILED)'}`;
  const flush = (r: Row) => (r.flushSeconds === undefined ? '' : r.flushSeconds.toFixed(1));
  // Older results have no label: their size.
  const label = (r: Row) =>
    r.label ?? (r.sizeMiB >= 1024 ? `${r.sizeMiB / 1024} GiB` : `${r.sizeMiB} MiB`);
  const bySize = result.rows.filter((r) => r.files === undefined);
  const byFiles = result.rows.filter((r) => r.files !== undefined);
  for (const r of bySize) {
    lines.push(
      `| ${label(r)} | ${r.operation} | ${tool(r)} | ${r.wallSeconds.toFixed(1)} | ${flush(r)} | ${r.mbPerSecond.toFixed(0)} | ${r.cpuSeconds.toFixed(1)} | ${r.allCpuSeconds.toFixed(1)} | ${r.peakRssMiB} | ${ratio(r, 'floor')} | ${ratio(r, 'gpg')} | ${ratio(r, 'seed')} |`,
    );
  }
  if (byFiles.length > 0) {
    lines.push(
      '',
      '| files | op | tool | wall s | flush s | µs per file | CPU s | all CPU s | peak RSS MiB | vs tar |',
      '|---:|---|---|---:|---:|---:|---:|---:|---:|---:|',
    );
    for (const r of byFiles) {
      lines.push(
        `| ${r.files} | ${r.operation} | ${tool(r)} | ${r.wallSeconds.toFixed(1)} | ${flush(r)} | ${r.usPerFile?.toFixed(0) ?? ''} | ${r.cpuSeconds.toFixed(1)} | ${r.allCpuSeconds.toFixed(1)} | ${r.peakRssMiB} | ${ratio(r, 'floor')} |`,
      );
    }
  }
  const stage = result.encryptionStage as {
    stage: string;
    impl: string;
    mbPerSecond: number;
    mbPerCpuSecond?: number;
  }[];
  if (stage.length > 0) {
    lines.push(
      '',
      '| stage alone (in memory, 64 KiB chunks, 1 MiB frames) | MB/s | MB per CPU second |',
      '|---|---:|---:|',
    );
  }
  for (const s of stage) {
    lines.push(
      `| ${s.stage}: ${s.impl} | ${s.mbPerSecond.toFixed(0)} | ${s.mbPerCpuSecond?.toFixed(0) ?? ''} |`,
    );
  }
  const snaps = Object.entries(result.snapshotSeconds ?? {});
  if (snaps.length > 0) {
    lines.push(
      '',
      `Ours create includes SQLite's online backup of homeserver.db (1/8 of the data), which the alternatives skip: ${snaps.map(([size, s]) => `${s} s at ${Number(size) / 1024} GiB`).join(', ')}.`,
    );
  }
  lines.push(
    '',
    'CPU s: user+sys of the tool’s process tree. all CPU s: that plus MinIO, Pebble (with the tar it runs) and, for ours (kubernetes), kube-apiserver, etcd and the kubelet (with its tar) meanwhile. flush s: ours’ restore flushing the staged files before the swap (in wall s). Ratios: their wall time / ours; for the file counts, tar -c (create) and tar -c | tar -x (restore) of the same selection.',
  );
  return lines.join('\n');
}

if (require.main === module) {
  main().catch((err: unknown) => {
    console.error(err instanceof Error ? err.stack : err);
    stopDaemons();
    process.exit(1);
  });
}
