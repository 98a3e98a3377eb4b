/**
 * Issue #13 (never lose a backup): prune and retention delete only what they
 * positively know to be removable, on the in-memory store
 * (tests/support/memory-store.ts) and this host's tar.
 */

import type { EngineOptions } from '../src/backup/types';
import { BackupError } from '../src/errors';
import { formatBackupTable } from '../src/format';
import { MemoryStore } from './support/memory-store';
import { MEMORY_PASSPHRASE, memoryEngine, memorySynapseDir } from './support/memory-engine';

const PASSPHRASE = MEMORY_PASSPHRASE;
const engineOn = (store: MemoryStore, dataDir: string, extra: Partial<EngineOptions> = {}) =>
  memoryEngine(store, dataDir, { passphrase: PASSPHRASE, ...extra });

const day = 86_400_000;

const synapseDir = () => memorySynapseDir('synapse-catalog');

const slowDown = () => new BackupError('s3', 'S3 answered 503 SlowDown: reduce your request rate');

describe('prune deletes only what it positively knows to be removable', () => {
  test('manifest reads answered 503 SlowDown: prune stops with that error, deletes nothing', async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    const engine = engineOn(store, data);
    for (const id of ['a1', 'a2', 'a3']) await engine.create({ id });
    const keys = store.keys();
    store.calls.length = 0;
    store.fail('getStream', { error: slowDown(), times: Infinity });
    const later = new Date(Date.now() + 30 * day);

    for (const request of [{ now: later }, { now: later, workloadLeftovers: false }]) {
      const error = await engine.prune({ keepLast: 10 }, request).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(BackupError);
      expect((error as BackupError).code).toBe('s3');
      expect((error as BackupError).message).toBe(
        'cannot tell whether backup a1 is complete: S3 answered 503 SlowDown: reduce your request rate',
      );
    }
    expect(store.keys()).toEqual(keys);
    expect(store.calls.filter((c) => c.method === 'delete')).toEqual([]);

    // list still answers, naming the backups it cannot read and why.
    const listed = await engine.list();
    expect(formatBackupTable(listed.backups).split('\n').at(-1)).toBe(
      'backup a3 is unreadable: its manifest could not be read: S3 answered 503 SlowDown: reduce your request rate',
    );
    expect(listed.backups.map((b) => [b.backupId, b.status, b.reason])).toEqual([
      [
        'a1',
        'unreadable',
        'its manifest could not be read: S3 answered 503 SlowDown: reduce your request rate',
      ],
      [
        'a2',
        'unreadable',
        'its manifest could not be read: S3 answered 503 SlowDown: reduce your request rate',
      ],
      [
        'a3',
        'unreadable',
        'its manifest could not be read: S3 answered 503 SlowDown: reduce your request rate',
      ],
    ]);
  });

  test('a manifest that is not JSON, or disagrees with its object, is unreadable and kept', async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    const engine = engineOn(store, data);
    await engine.create({ id: 'good' });
    const old = new Date(Date.now() - 30 * day);
    store.putObject('backups/garbled.tar.enc', 'x', old);
    store.putObject('backups/garbled.manifest.json', '{not json', old);
    store.putObject('backups/sized.tar.enc', 'xyz', old);
    store.putObject(
      'backups/sized.manifest.json',
      store.objects.get('backups/good.manifest.json')!.data,
      old,
    );

    const listed = await engine.list();
    const byId = new Map(listed.backups.map((b) => [b.backupId, b]));
    expect(byId.get('garbled')).toMatchObject({ status: 'unreadable' });
    expect(byId.get('garbled')!.reason).toMatch(/^its manifest could not be read: /);
    expect(byId.get('sized')).toMatchObject({ status: 'unreadable' });
    expect(byId.get('sized')!.reason).toMatch(
      /^its object holds 3 bytes but the manifest says \d+$/,
    );

    // Strict: the garbled manifest stops the prune.
    await expect(engine.prune({ keepLast: 1 })).rejects.toThrow(
      /^cannot tell whether backup garbled is complete: /,
    );
    await store.delete('backups/garbled.manifest.json');
    await store.delete('backups/garbled.tar.enc');
    // The size mismatch is read fine but not known incomplete: kept, not forgotten either.
    const pruned = await engine.prune({ keepLast: 1 }, { workloadLeftovers: false });
    expect(pruned).toMatchObject({ forgotten: [], incompleteRemoved: [], kept: 1 });
    expect(store.keys()).toContain('backups/sized.tar.enc');
    expect(store.keys()).toContain('backups/sized.manifest.json');
  });

  test("a stale manifest alone goes; an object alone (maybe the Python charm's backup) and young ones stay", async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    const engine = engineOn(store, data);
    const old = new Date(Date.now() - 2 * day);
    store.putObject('backups/orphan-object.tar.enc', 'x', old);
    await engine.create({ id: 'orphan-manifest' });
    store.putObject(
      'backups/orphan-manifest.manifest.json',
      store.objects.get('backups/orphan-manifest.manifest.json')!.data,
      old,
    );
    await store.delete('backups/orphan-manifest.tar.enc');
    store.putObject('backups/young.tar.enc', 'x');
    const pruned = await engine.prune({ keepLast: 1 }, { workloadLeftovers: false });
    expect(pruned.incompleteRemoved).toEqual(['orphan-manifest']);
    expect(store.keys()).toEqual(['backups/orphan-object.tar.enc', 'backups/young.tar.enc']);
    expect((await engine.list()).backups.find((b) => b.backupId === 'orphan-object')).toMatchObject(
      { status: 'incomplete', objectOnly: true },
    );
  });
});
