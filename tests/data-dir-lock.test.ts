/**
 * Issue #13, case 3: one operation at a time per data dir. Create, restore and
 * prune's workload cleanup hold `<data dir>/.synapse-backup.lock`; another
 * run is refused naming the holder; a stale lock is taken over and said so.
 * In-memory store, this host's sh. Then a killed run's commands, still running.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, promises as fsp, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { EngineOptions } from '../src/backup/types';
import { MemoryStore } from './support/memory-store';
import { MEMORY_PASSPHRASE, memoryEngine, memorySynapseDir } from './support/memory-engine';

const PASSPHRASE = MEMORY_PASSPHRASE;
const engineOn = (store: MemoryStore, dataDir: string, extra: Partial<EngineOptions> = {}) =>
  memoryEngine(store, dataDir, { passphrase: PASSPHRASE, ...extra });
const LOCK = '.synapse-backup.lock';

const synapseDir = () => memorySynapseDir('synapse-lock');

const exists = (p: string) =>
  fsp.stat(p).then(
    () => true,
    () => false,
  );

/** A store whose object reads wait until `open()`: a restore held mid-way. */
class GatedStore extends MemoryStore {
  private opened!: () => void;
  readonly gate = new Promise<void>((r) => (this.opened = r));
  open(): void {
    this.opened();
  }
  override async getStream(key: string, range?: { end: number }) {
    if (key.endsWith('.tar.enc') && !range) await this.gate;
    return super.getStream(key, range) as Promise<{ body: Readable; size: number }>;
  }
}

const BUSY = (dir: string, op: string) =>
  new RegExp(
    `^${dir.replace(/[/.]/g, '\\$&')} is in use by ${op} \\(host ${hostname()}, pid ${process.pid}, since [0-9T:.Z-]+\\): one operation at a time$`,
  );

describe("the data dir's lock", () => {
  test('two creates with different ids on one data dir: one runs, the other is refused naming it', async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    const settled = await Promise.allSettled([
      engineOn(store, data).create({ id: 'one' }),
      engineOn(store, data).create({ id: 'two' }),
    ]);
    const ok = settled.filter((r) => r.status === 'fulfilled');
    const failed = settled.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
    expect(ok).toHaveLength(1);
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ code: 'busy' });
    expect(failed[0]!.message).toMatch(BUSY(data, 'create-backup (one|two)'));
    expect(await exists(path.join(data, LOCK))).toBe(false);
    const id = (ok[0] as PromiseFulfilledResult<{ backupId: string }>).value.backupId;
    await expect(engineOn(store, data).verify(id)).resolves.toMatchObject({ backupId: id });
  });

  test('a create, a second restore and a prune during a restore are refused; its staging survives', async () => {
    const store = new GatedStore();
    const data = await synapseDir();
    await engineOn(store, data).create({ id: 'base' });
    const restoring = engineOn(store, data).restore({ id: 'base' });
    const staging = async () =>
      (await fsp.readdir(data)).some((n) => n.startsWith('.synapse-restore-'));
    for (let i = 0; i < 200 && !(await staging()); i++) await new Promise((r) => setTimeout(r, 20));
    expect(await staging()).toBe(true);

    await expect(engineOn(store, data).create({ id: 'during' })).rejects.toThrow(
      BUSY(data, 'restore-backup base'),
    );
    await expect(engineOn(store, data).restore({ id: 'base' })).rejects.toThrow(
      BUSY(data, 'restore-backup base'),
    );
    await expect(engineOn(store, data).prune({ keepLast: 1 })).rejects.toThrow(
      BUSY(data, 'restore-backup base'),
    );
    // Retention alone (no workload cleanup) needs no lock.
    await expect(
      engineOn(store, data).prune({ keepLast: 1 }, { workloadLeftovers: false }),
    ).resolves.toMatchObject({ forgotten: [] });
    expect(await staging()).toBe(true);

    store.open();
    await expect(restoring).resolves.toMatchObject({ backupId: 'base' });
    expect(await exists(path.join(data, LOCK))).toBe(false);
    expect(await fsp.readdir(data)).toContain('homeserver.yaml');
    expect(await staging()).toBe(false);
    expect(store.keys()).toEqual(['backups/base.manifest.json', 'backups/base.tar.enc']);
  });

  test('a lock whose holder on this host is gone is taken over, and said so', async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    const dead = {
      operation: 'create-backup x',
      host: hostname(),
      pid: 2 ** 22 + 7,
      since: 'then',
    };
    await fsp.mkdir(path.join(data, LOCK));
    await fsp.writeFile(path.join(data, LOCK, 'holder'), `${JSON.stringify(dead)}\n`);
    const notices: string[] = [];
    const engine = engineOn(store, data, { onNotice: (m) => notices.push(m) });
    await expect(engine.create({ id: 'after' })).resolves.toMatchObject({ backupId: 'after' });
    expect(notices).toEqual([
      `took over the lock of ${data} from create-backup x (host ${hostname()}, pid ${dead.pid}, since then): its holder, pid ${dead.pid} on this host, is gone`,
    ]);
    expect(await exists(path.join(data, LOCK))).toBe(false);
  });

  test("another host's lock: refused while fresh, taken over once its heartbeat is 10 minutes old", async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    const other = { operation: 'restore-backup y', host: 'elsewhere', pid: 1, since: 'then' };
    const holder = path.join(data, LOCK, 'holder');
    await fsp.mkdir(path.join(data, LOCK));
    await fsp.writeFile(holder, `${JSON.stringify(other)}\n`);
    const notices: string[] = [];
    const engine = engineOn(store, data, { onNotice: (m) => notices.push(m) });
    await expect(engine.create({ id: 'x' })).rejects.toMatchObject({
      code: 'busy',
      message: `${data} is in use by restore-backup y (host elsewhere, pid 1, since then): one operation at a time`,
    });
    expect(store.keys()).toEqual([]);
    const old = new Date(Date.now() - 11 * 60_000);
    await fsp.utimes(holder, old, old);
    await expect(engine.create({ id: 'x' })).resolves.toMatchObject({ backupId: 'x' });
    expect(notices).toHaveLength(1);
    expect(notices[0]).toMatch(/: its holder has not refreshed it for 6\d\d s$/);
  });
});

/**
 * A killed run's commands (scripts/lock.ts recordRunCommand): `<lock>/run.<pid>`
 * holds cksum lines of the command's /proc cmdline; its children carry
 * SYNAPSE_BACKUP_RUN=<the holder's token>. A stale lock is not taken over while
 * one of them runs.
 */
describe("the data dir's lock and a killed run's commands", () => {
  const TOKEN = 'a1b2c3d4e5f6';
  const gone = { operation: 'create-backup k', host: hostname(), pid: 2 ** 22 + 7, since: 'then' };
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const child of children.splice(0)) child.kill('SIGKILL');
  });

  /** A stale lock of `gone` (its pid is no process) on a new data dir, with `runs` recorded. */
  async function staleLock(runs: Record<number, string>): Promise<string> {
    const data = await synapseDir();
    await fsp.mkdir(path.join(data, LOCK));
    await fsp.writeFile(
      path.join(data, LOCK, 'holder'),
      `${JSON.stringify({ ...gone, token: TOKEN })}\n`,
    );
    for (const [pid, sums] of Object.entries(runs)) {
      await fsp.writeFile(path.join(data, LOCK, `run.${pid}`), sums);
    }
    return data;
  }

  /** A process of this test that sleeps until killed, and the cksum line of its cmdline. */
  async function sleeper(env: NodeJS.ProcessEnv = {}): Promise<{ pid: number; sum: string }> {
    const child = spawn('sleep', ['600'], { stdio: 'ignore', env: { ...process.env, ...env } });
    children.push(child);
    await new Promise((resolve) => child.once('spawn', resolve));
    const pid = child.pid!;
    // Until exec has replaced node's fork with sleep.
    while ((await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8')) !== 'sleep\x00600\x00') {
      await new Promise((r) => setTimeout(r, 10));
    }
    const sum = execFileSync('sh', ['-c', 'cksum < "/proc/$1/cmdline"', 'sh', String(pid)], {
      encoding: 'utf8',
    });
    return { pid, sum };
  }

  /** The refusal, naming `pid` by its /proc comm as the takeover script reads it. */
  const refusal = (data: string, pid: number) =>
    `${data} is in use by process ${pid} (${readFileSync(`/proc/${pid}/comm`, 'utf8').trim()}) in the workload, started by create-backup k (host ${hostname()}, pid ${gone.pid}, since then): its lock is stale (its holder, pid ${gone.pid} on this host, is gone) but what it started still runs; the lock was not taken over, nothing was started`;

  test('a recorded command that still runs: refused naming it, nothing started; taken over once it is killed', async () => {
    const live = await sleeper();
    const data = await staleLock({ [live.pid]: `1 2\n${live.sum}` });
    const store = new MemoryStore();
    const notices: string[] = [];
    const engine = engineOn(store, data, { onNotice: (m) => notices.push(m) });
    await expect(engine.create({ id: 'during' })).rejects.toMatchObject({
      code: 'busy',
      message: refusal(data, live.pid),
      remedy: { kind: 'stop-process', pids: [live.pid] },
    });
    expect(store.keys()).toEqual([]);
    expect(notices).toEqual([]);
    expect(JSON.parse(await fsp.readFile(path.join(data, LOCK, 'holder'), 'utf8'))).toMatchObject(
      gone,
    );

    process.kill(live.pid, 'SIGKILL');
    while (
      existsSync(`/proc/${live.pid}/cmdline`) &&
      readFileSync(`/proc/${live.pid}/cmdline`).length
    ) {
      await new Promise((r) => setTimeout(r, 10));
    }
    await expect(engine.create({ id: 'after' })).resolves.toMatchObject({ backupId: 'after' });
    expect(notices).toHaveLength(1);
    expect(await exists(path.join(data, LOCK))).toBe(false);
  });

  test("a child of a killed command (the holder's token in its environment) is found when the command is gone", async () => {
    const child = await sleeper({ SYNAPSE_BACKUP_RUN: TOKEN });
    const data = await staleLock({ [gone.pid + 1]: 'x' });
    await expect(engineOn(new MemoryStore(), data).create({ id: 'during' })).rejects.toMatchObject({
      code: 'busy',
      message: refusal(data, child.pid),
    });
  });

  test('recorded pids that are dead, or reused by another program, do not block: taken over, said so', async () => {
    const reused = await sleeper();
    // Another run's token: not this holder's.
    await sleeper({ SYNAPSE_BACKUP_RUN: 'another' });
    const data = await staleLock({ [gone.pid + 1]: reused.sum, [reused.pid]: '1 2\n3 4\n' });
    const notices: string[] = [];
    const engine = engineOn(new MemoryStore(), data, { onNotice: (m) => notices.push(m) });
    await expect(engine.create({ id: 'after' })).resolves.toMatchObject({ backupId: 'after' });
    expect(notices).toEqual([
      `took over the lock of ${data} from create-backup k (host ${hostname()}, pid ${gone.pid}, since then): its holder, pid ${gone.pid} on this host, is gone`,
    ]);
    expect(await exists(path.join(data, LOCK))).toBe(false);
  });
});
