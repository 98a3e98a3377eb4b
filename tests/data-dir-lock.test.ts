/**
 * Issue #13, case 3: one operation at a time per data dir. Create, restore and
 * prune's workload cleanup hold `<data dir>/.synapse-backup.lock`; another
 * run is refused naming the holder; a stale lock is taken over and said so.
 * In-memory store, this host's sh.
 */
import { promises as fsp } from 'node:fs';
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
