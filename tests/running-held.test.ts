/**
 * The running-Synapse check (src/backup/running.ts, scripts/running.ts) beyond
 * `synapse.app.homeserver` naming the data dir: pip's `synapse_homeserver`
 * script, container paths read through --config-root, the process's own config
 * path in the message, and any process that holds a database the restore would
 * replace open (device and inode), in the data dir or outside it, even with no
 * homeserver.yaml; processes whose fds it may not read (not root) are skipped,
 * not an error. Real parts: this host's sh, grep, python3 and /proc (the local
 * workload); stand-ins whose argv names Synapse, and python3 holding a file open.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { EngineContext } from '../src/backup/context';
import { refuseOpenDatabases, refuseRunningSynapse } from '../src/backup/running';
import { runningCheckCommand } from '../src/backup/scripts/running';
import { BackupError } from '../src/errors';
import { LocalWorkload } from '../src/workload/local';

let root: string;
let dataDir: string;
const children: ChildProcess[] = [];

beforeEach(() => {
  root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'running-held-')));
  fs.chmodSync(root, 0o755);
  dataDir = path.join(root, 'data');
  fs.mkdirSync(dataDir, { mode: 0o755 });
  fs.writeFileSync(path.join(dataDir, 'homeserver.yaml'), 'server_name: "held.test"\n');
});

/** Kills the first `n` children started (all by default) and waits until they are gone. */
async function killChildren(n = children.length): Promise<void> {
  for (const child of children.splice(0, n)) {
    const exited = new Promise((r) => child.once('exit', r));
    process.kill(-child.pid!, 'SIGKILL');
    await exited;
  }
}

afterEach(async () => {
  await killChildren();
  fs.rmSync(root, { recursive: true, force: true });
});

/** `argv` (argv[0] first) running `sleep` in its own process group, from `/`. */
async function standIn(argv: string[]): Promise<number> {
  const child = spawn('sh', ['-c', 'sleep 300; exit 0', ...argv], {
    cwd: '/',
    detached: true,
    stdio: 'ignore',
  });
  children.push(child);
  await new Promise((r) => child.once('spawn', r));
  return child.pid!;
}

/** python3 holding `file` open (read-only, no lock), once it says so. */
async function holder(file: string): Promise<number> {
  const code =
    'import sys, time\nf = open(sys.argv[1], "rb")\nprint("held", flush=True)\ntime.sleep(300)';
  const child = spawn('python3', ['-c', code, file], {
    detached: true,
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  children.push(child);
  await new Promise((r) => child.stdout!.once('data', r));
  return child.pid!;
}

/**
 * How a refusal quotes process `pid`: its comm and, if its argv has one, the config
 * path (`python, --config-path /x/homeserver.yaml`); never the rest of its argv.
 */
function quoted(pid: number): string {
  const read = (name: string) => fs.readFileSync(`/proc/${pid}/${name}`, 'utf8');
  const argv = read('cmdline').split('\0').filter(Boolean);
  const at = argv.indexOf('--config-path');
  const config = at >= 0 ? `--config-path ${argv[at + 1]}` : undefined;
  return [read('comm').trim(), config].filter(Boolean).join(', ');
}

/** `argv` from `/`, as `uid` (and its gid) when given: its status and both outputs. */
function runAs(
  [cmd, ...args]: string[],
  uid?: number,
): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    // As another user: a PATH it can read (this host's python3 may be a shim under /root).
    const as = uid === undefined ? {} : { uid, gid: uid, env: { PATH: '/usr/bin:/bin' } };
    execFile(cmd!, args, { cwd: '/', ...as }, (error, out, err) =>
      resolve({ code: error ? Number(error.code) : 0, out, err }),
    );
  });
}

const ctxFor = (dir: string, configRoot?: string) =>
  ({ workload: new LocalWorkload(), dataDir: dir, configRoot }) as unknown as EngineContext;

async function refusal(p: Promise<void>): Promise<BackupError | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    if (err instanceof BackupError) return err;
    throw err;
  }
}

const UNDER_IT =
  'restoring under it would lose the writes it makes afterwards; nothing was changed';

it("finds pip's console script (synapse_homeserver) by its --config-path", async () => {
  const pid = await standIn([
    '/opt/venv/bin/synapse_homeserver',
    '--config-path',
    path.join(dataDir, 'homeserver.yaml'),
  ]);
  const err = await refusal(refuseRunningSynapse(ctxFor(dataDir), []));
  expect(err?.code).toBe('busy');
  expect(err?.message).toBe(
    `Synapse is running on ${dataDir}: process ${pid} is synapse_homeserver with ${dataDir}/homeserver.yaml; ${UNDER_IT}`,
  );
  expect(err?.remedy).toEqual({ kind: 'stop-synapse' });
});

it("names the process's own config path, not the symlinked data dir it was given", async () => {
  const link = path.join(root, 'link');
  fs.symlinkSync(dataDir, link);
  const pid = await standIn(['synapse.app.homeserver', '-c', `${dataDir}/homeserver.yaml`]);
  const err = await refusal(refuseRunningSynapse(ctxFor(link), []));
  expect(err?.message).toBe(
    `Synapse is running on ${link}: process ${pid} is synapse.app.homeserver with ${dataDir}/homeserver.yaml; ${UNDER_IT}`,
  );
});

/**
 * A stand-in in a mount namespace of its own (as a container is), `mounted` bind-mounted
 * at /srv/data over a tmpfs on /srv; its argv names synapse.app.homeserver and
 * /srv/data/homeserver.yaml, a path this host does not have.
 */
async function containerStandIn(mounted: string): Promise<number> {
  const script =
    'set -e; mount -t tmpfs held /srv; mkdir /srv/data; mount --bind "$MOUNTED" /srv/data; echo up; sleep 300; exit 0';
  const child = spawn(
    'unshare',
    ['--mount', 'sh', '-c', script, 'synapse.app.homeserver', '-c', '/srv/data/homeserver.yaml'],
    {
      detached: true,
      stdio: ['ignore', 'pipe', 'ignore'],
      env: { ...process.env, MOUNTED: mounted },
    },
  );
  children.push(child);
  await new Promise((r) => child.stdout!.once('data', r));
  return child.pid!;
}

it("reads a container path in its argv through --config-root, in the process's own mount namespace: this dir mounted there is found, another dir mounted at the same path is not", async () => {
  expect(fs.existsSync('/srv/data')).toBe(false);
  const pid = await containerStandIn(dataDir);
  // Without --config-root, /srv/data is not this dir (and holds nothing open here).
  await expect(refuseRunningSynapse(ctxFor(dataDir), [])).resolves.toBeUndefined();
  for (const configRoot of ['/srv/data', '/srv/data/']) {
    const err = await refusal(refuseRunningSynapse(ctxFor(dataDir, configRoot), []));
    expect(err?.message).toBe(
      `Synapse is running on ${dataDir}: process ${pid} is synapse.app.homeserver with /srv/data/homeserver.yaml; ${UNDER_IT}`,
    );
  }
  await killChildren(1);
  // Another container's /srv/data (another server's dir) is not this one.
  const other = path.join(root, 'other');
  fs.mkdirSync(other);
  fs.writeFileSync(path.join(other, 'homeserver.yaml'), 'server_name: other.org\n');
  await containerStandIn(other);
  // Nor is a path that only starts like the root, on a process this host can see into.
  await standIn(['synapse.app.homeserver', '-c', '/srv/database/homeserver.yaml']);
  await expect(refuseRunningSynapse(ctxFor(dataDir, '/srv/data'), [])).resolves.toBeUndefined();
  await killChildren(2);
});

it('refuses while any process holds the database open, whatever its name; its -wal too', async () => {
  const db = path.join(dataDir, 'homeserver.db');
  fs.writeFileSync(db, 'db');
  fs.writeFileSync(`${db}-wal`, 'wal');
  await expect(refuseRunningSynapse(ctxFor(dataDir), [], undefined, [db])).resolves.toBeUndefined();
  const pid = await holder(`${db}-wal`);
  const err = await refusal(refuseRunningSynapse(ctxFor(dataDir), [], undefined, [db]));
  expect(err?.code).toBe('busy');
  expect(err?.message).toBe(
    `Synapse is running on ${dataDir}: process ${pid} (${quoted(pid)}) has ${db}-wal open, a database this restore would replace; ${UNDER_IT}`,
  );
  // Its name only: never the rest of its command line (python's -c program here).
  expect(quoted(pid)).toBe('python3');
  expect(err?.message).not.toContain('time.sleep');
  // homeserver.yaml's own database is looked at without being named by the caller.
  const elsewhere = path.join(root, 'elsewhere.db');
  fs.writeFileSync(elsewhere, 'db');
  fs.writeFileSync(
    path.join(dataDir, 'homeserver.yaml'),
    `database:\n  args:\n    database: ${elsewhere}\n`,
  );
  const other = await holder(elsewhere);
  await killChildren(1);
  const byConfig = await refusal(refuseRunningSynapse(ctxFor(dataDir), []));
  expect(byConfig?.message).toContain(`process ${other} (${quoted(other)}) `);
  expect(byConfig?.message).toContain(
    `has ${elsewhere} open, a database this restore would replace`,
  );
});

it('an outside database from the backup is checked even where there is no homeserver.yaml', async () => {
  fs.rmSync(path.join(dataDir, 'homeserver.yaml'));
  const outside = path.join(root, 'srva', 'homeserver.db');
  fs.mkdirSync(path.dirname(outside));
  fs.writeFileSync(outside, 'db');
  await expect(
    refuseRunningSynapse(ctxFor(dataDir), [], undefined, [outside]),
  ).resolves.toBeUndefined();
  const pid = await holder(outside);
  const err = await refusal(refuseRunningSynapse(ctxFor(dataDir), [], undefined, [outside]));
  expect(err?.message).toContain(`process ${pid} (${quoted(pid)}) has ${outside} open`);
});

it('with services stopped, a process still holding a database names it with a stop-process remedy', async () => {
  const db = path.join(dataDir, 'homeserver.db');
  fs.writeFileSync(db, 'db');
  await expect(refuseOpenDatabases(ctxFor(dataDir), ['synapse'], [db])).resolves.toBeUndefined();
  const pid = await holder(db);
  const err = await refusal(refuseOpenDatabases(ctxFor(dataDir), ['synapse'], [db]));
  expect(err?.message).toBe(
    `with synapse stopped, process ${pid} (${quoted(pid)}) has ${db} open, a database this restore would replace; ${UNDER_IT}`,
  );
  expect(err?.remedy).toEqual({ kind: 'stop-process', pids: [pid] });
});

it("as a user who may not read other users' fds: those processes are skipped and counted, not an error", async () => {
  if (process.getuid?.() !== 0) throw new Error('this test runs as root (it drops to nobody)');
  const db = path.join(dataDir, 'homeserver.db');
  fs.writeFileSync(db, 'db', { mode: 0o644 });
  const pid = await holder(db);
  const [cmd, ...args] = runningCheckCommand({
    pidFile: '',
    configPath: path.join(dataDir, 'homeserver.yaml'),
    dataDir,
    configRoot: '',
    byProcess: true,
    databases: [db],
  });
  const run = (uid?: number) => runAs([cmd, ...args], uid);
  const asRoot = await run();
  expect(asRoot).toMatchObject({ code: 0, err: '' });
  expect(JSON.parse(asRoot.out.replace(/^open /, ''))).toMatchObject({ pid, path: db });
  const asNobody = await run(65534);
  expect(asNobody.err).toBe('');
  expect(asNobody.code).toBe(0);
  expect(asNobody.out).toMatch(/^none [1-9]\d*\n$/);
});

it("as a user who may not read another user's working directory: a relative config path is read under the data dir (it may be this one)", async () => {
  if (process.getuid?.() !== 0) throw new Error('this test runs as root (it drops to nobody)');
  // nobody may look into the data dir, not into the process's working directory.
  fs.chmodSync(root, 0o755);
  fs.chmodSync(dataDir, 0o755);
  const child = spawn(
    'sh',
    ['-c', 'sleep 300; exit 0', 'synapse.app.homeserver', '-c', 'homeserver.yaml'],
    { cwd: dataDir, detached: true, stdio: 'ignore' },
  );
  children.push(child);
  await new Promise((r) => child.once('spawn', r));
  const [cmd, ...args] = runningCheckCommand({
    pidFile: '',
    configPath: path.join(dataDir, 'homeserver.yaml'),
    dataDir,
    configRoot: '',
    byProcess: true,
    databases: [],
  });
  const run = (uid?: number) => runAs([cmd, ...args], uid);
  // As root its working directory is read: the data dir itself.
  expect((await run()).out).toBe(`proc ${child.pid} m\ncwd ${dataDir}\n`);
  // As nobody it cannot be: the relative path, read under the data dir, is reported as given.
  const asNobody = await run(65534);
  expect(asNobody.err).toBe('');
  expect(asNobody.out).toBe(`proc ${child.pid} m\nconfig homeserver.yaml\n`);
});
