/**
 * The data dir's lock after a killed run (`kill -9` of the CLI): the command it
 * started in the workload goes on (the local transport's own process group;
 * Pebble kills the exec's first process, not its children). The next run must
 * not take the lock over while it runs, and does once it has ended or been
 * killed. Built CLI (`npm run build` first), real MinIO, this host's sh and a
 * real Pebble.
 *
 * The killed create is held mid-way without timing: an exclusive SQLite lock
 * on homeserver.db (a writer) makes its snapshot wait, tar waiting for the
 * names it sends.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, promises as fsp, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import {
  type MinioPeer,
  type PebblePeer,
  describeWithPeers,
  startMinio,
  startPebble,
  tmpDir,
} from './support/peers';
import {
  inspectSqliteDb,
  makeSynapseTree,
  snapshotTree,
  withoutSkipped,
} from './support/synapse-tree';

const BUNDLE = path.resolve(__dirname, '..', 'build', 'synapse-backup.js');
const PREFIX = `lock-live-${Date.now()}`;
const LOCK = '.synapse-backup.lock';
const SNAPSHOT = '.synapse-backup-snapshot.db';

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/** The pids of the processes whose working directory is `dir` (the create script's and its children's). */
function processesIn(dir: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readlinkSync(`/proc/${name}/cwd`) === dir) pids.push(Number(name));
    } catch {
      // gone, or not ours to read
    }
  }
  return pids.sort((a, b) => a - b);
}

/** Whether `pid` has `file` open (one of its /proc fds links to it). */
function hasOpen(pid: number, file: string): boolean {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false; // gone
  }
  return fds.some((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`) === file;
    } catch {
      return false;
    }
  });
}

/** Sends `signal` to `pid` unless it has ended meanwhile. */
function signalIfAlive(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** The data dir's files but for the engine's own (dot) names: the lock, the snapshot. */
async function synapseFiles(dir: string): Promise<[string, unknown][]> {
  return [...withoutSkipped(await snapshotTree(dir))].filter(([name]) => !name.startsWith('.'));
}

/** `pid`'s argv, as /proc has it ([] once gone). */
function argvOf(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1);
  } catch {
    return [];
  }
}

async function until(
  what: string,
  probe: () => boolean,
  detail: () => string = () => '',
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what} ${detail()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A writer's exclusive lock on the SQLite database `db`, held until release(). */
async function holdDatabase(db: string): Promise<{ release(): Promise<void> }> {
  const child = spawn(
    'python3',
    [
      '-c',
      [
        'import sqlite3, sys',
        'c = sqlite3.connect(sys.argv[1], isolation_level=None)',
        "c.execute('BEGIN EXCLUSIVE')",
        "print('locked', flush=True)",
        'sys.stdin.read()',
      ].join('\n'),
      db,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'], cwd: '/' },
  );
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    child.stdout.once('data', () => resolve());
    child.once('close', () => reject(new Error('the database lock holder exited')));
  });
  return {
    async release() {
      if (child.exitCode === null) child.stdin.end();
      await closed;
    },
  };
}

describeWithPeers(['minio', 'pebble'])('a killed run whose workload command goes on', () => {
  let minio: MinioPeer;
  let pebble: PebblePeer;
  const leftovers: string[] = [];
  let prefixes = 0;

  beforeAll(async () => {
    if (!existsSync(BUNDLE)) throw new Error('build/synapse-backup.js is missing: npm run build');
    minio = await startMinio();
    pebble = await startPebble();
  });
  const holders: { release(): Promise<void> }[] = [];
  afterEach(async () => {
    for (const holder of holders.splice(0)) await holder.release();
    // A failed test leaves the killed create's processes: never to outlive it.
    for (const dir of leftovers.splice(0)) {
      for (const pid of processesIn(dir)) signalIfAlive(pid, 'SIGKILL');
    }
  });
  afterAll(async () => {
    await pebble?.stop();
    await minio?.stop();
  });

  function start(args: string[]): { child: ChildProcess; done: Promise<Run> } {
    const child = spawn(
      process.execPath,
      [
        BUNDLE,
        ...args,
        ...['--endpoint', minio.endpoint, '--region', 'us-east-1', '--uri-style', 'path'],
        ...['--bucket', minio.bucket, '--prefix', `${PREFIX}-${prefixes}`],
      ],
      {
        env: {
          PATH: process.env.PATH,
          AWS_ACCESS_KEY_ID: minio.accessKeyId,
          AWS_SECRET_ACCESS_KEY: minio.secretAccessKey,
          SYNAPSE_BACKUP_PASSPHRASE: 'lock live passphrase',
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const done = new Promise<Run>((resolve) =>
      child.once('close', (code, signal) => resolve({ code, signal, stderr })),
    );
    return { child, done };
  }
  const cli = (args: string[]) => start(args).done;
  const stderrOf = (p: { child: ChildProcess; done: Promise<Run> }) => {
    let stderr = '';
    p.child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    return () =>
      `(create: ${stderr}; ${p.child.exitCode}; ${JSON.stringify(
        readdirSync('/proc')
          .filter((n) => /^\d+$/.test(n))
          .map((n) => argvOf(Number(n)))
          .filter((a) => a.join(' ').includes('synapse-backup'))
          .map((a) => a.map((x) => x.slice(0, 30))),
      )})`;
  };

  test.each([
    { where: 'this host', pebble: false, end: 'ends on its own' },
    { where: 'Pebble', pebble: true, end: 'is killed as the error says' },
  ])(
    'through $where: a restore after a SIGKILLed create is refused while its command runs, naming it; after it $end, the restore takes the lock over and works',
    async ({ pebble: viaPebble }) => {
      const flags = viaPebble ? ['--pebble-socket', pebble.socketPath] : [];
      prefixes++;
      const data = await fsp.realpath((await tmpDir('lock-live')).path);
      leftovers.push(data);
      await makeSynapseTree(data, { mediaFiles: 4 });
      const base = await cli(['create', '--data-dir', data, '--id', 'base', ...flags]);
      expect(`${base.code} ${base.stderr}`).toMatch(/^0 /);
      const before = await synapseFiles(data);

      const dbPath = path.join(data, 'homeserver.db');
      const db = await holdDatabase(dbPath);
      holders.push(db);
      const killed = start(['create', '--data-dir', data, '--id', 'killed', ...flags]);
      // Its snapshot's python3 has the database open, so it waits for the lock (up to
      // 60 s): the create script runs. Not the snapshot file's name in an argv alone: the
      // create's removal of leftovers (`rm -f -- <snapshot> ...`, in the data dir, before
      // the script) has it too, and a kill then leaves nothing running; so has a python3
      // launcher (pyenv's shim) before it hands over.
      let snapshot = 0;
      await until(
        "the create's snapshot waits for the database",
        () => {
          const pids = processesIn(data);
          snapshot = pids.find((p) => argvOf(p).includes(SNAPSHOT) && hasOpen(p, dbPath)) ?? 0;
          return snapshot !== 0;
        },
        stderrOf(killed),
      );
      killed.child.kill('SIGKILL');
      expect(await killed.done).toMatchObject({ signal: 'SIGKILL' });
      // Blocked: the create script's sh, tar, dd and the snapshot's python3.
      const blocked = (argv: string[]) =>
        ['sh', 'tar', 'dd'].includes(argv[0] ?? '') || argv.includes(SNAPSHOT);
      await until(
        'only the blocked create, its snapshot among them, is left in the data dir',
        () => {
          const left = processesIn(data);
          return left.includes(snapshot) && left.every((pid) => blocked(argvOf(pid)));
        },
      );

      // Refused: the killed run's lock is stale, its command is not. Named: every
      // process of it that was there before and is still there after (Pebble may end
      // the exec's first process meanwhile).
      const earlier = processesIn(data);
      const refused = await cli(['restore', '--data-dir', data, '--id', 'base', ...flags]);
      const later = processesIn(data);
      expect(later.map((pid) => argvOf(pid)).filter((argv) => !blocked(argv))).toEqual([]);
      expect(later.filter((pid) => argvOf(pid).includes(SNAPSHOT))).toEqual([snapshot]);
      expect(refused.code).toBe(1);
      // "<pid> (<its /proc comm>)", comma-separated.
      const named = /is in use by process(?:es)? (.+?) in the workload/.exec(refused.stderr);
      const pairs = [...(named?.[1] ?? '').matchAll(/(\d+) \(([^)]*)\)/g)];
      const running = pairs.map((m) => Number(m[1]));
      const listed = pairs.map(
        (m) => `${m[1]} \\(${m[2]!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\)`,
      );
      expect(running.filter((pid) => !earlier.includes(pid))).toEqual([]);
      expect(later.filter((pid) => !running.includes(pid))).toEqual([]);
      expect(refused.stderr).toMatch(
        new RegExp(
          `^synapse-backup: error: ${data} is in use by process(es)? ${listed.join(', ')} in the workload, started by create-backup killed \\(host ${hostname()}, pid ${killed.child.pid}, since [0-9T:.Z-]+\\): its lock is stale \\(its holder, pid ${killed.child.pid} on this host, is gone\\) but what it started still runs; the lock was not taken over, nothing was started; wait for (it|them) to finish, or stop (it|them) with \`kill ${running.join(' ')}\` where the workload runs \\(this host; with --pebble-socket, the container Pebble runs in\\), then run again\n$`,
        ),
      );
      expect(await synapseFiles(data)).toEqual(before);
      const holder = JSON.parse(await fsp.readFile(path.join(data, LOCK, 'holder'), 'utf8'));
      expect(holder).toMatchObject({ operation: 'create-backup killed', pid: killed.child.pid });

      if (viaPebble) {
        for (const pid of later) signalIfAlive(pid, 'SIGTERM');
        await until('its processes are gone', () => processesIn(data).length === 0);
        await db.release();
      } else {
        // The snapshot goes on, tar writes to the dead CLI's pipe and the script ends.
        await db.release();
        await until('its processes are gone', () => processesIn(data).length === 0);
      }

      const restored = await cli(['restore', '--data-dir', data, '--id', 'base', ...flags]);
      expect(restored.code).toBe(0);
      expect(restored.stderr).toMatch(
        new RegExp(
          `^synapse-backup: took over the lock of ${data} from create-backup killed \\(host ${hostname()}, pid ${killed.child.pid}, since [0-9T:.Z-]+\\): its holder, pid ${killed.child.pid} on this host, is gone\n`,
        ),
      );
      expect(existsSync(path.join(data, LOCK))).toBe(false);
      // The backup's files; its database without the one-time keys, as every restore.
      const notDb = ([name]: [string, unknown]) => name !== 'homeserver.db';
      expect((await synapseFiles(data)).filter(notDb)).toEqual(before.filter(notDb));
      expect(inspectSqliteDb(path.join(data, 'homeserver.db'))).toEqual({
        events: 300,
        oneTimeKeys: 0,
        integrity: 'ok',
      });
    },
    120_000,
  );
});
