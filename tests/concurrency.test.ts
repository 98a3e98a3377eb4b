/**
 * Issue #13, cases 3 and 8 on the in-memory store: an id is reserved by a
 * pending marker (a conditional write) before anything of the backup is
 * written, cleanup removes only what its own run made, prune leaves an id with
 * a live marker alone, and a stale marker leads prune to an upload that only
 * its exact key lists (MinIO after a restart).
 */

import type { EngineOptions } from '../src/backup/types';
import { BackupError } from '../src/errors';
import { MemoryStore } from './support/memory-store';
import { MEMORY_PASSPHRASE, memoryEngine, memorySynapseDir } from './support/memory-engine';

const PASSPHRASE = MEMORY_PASSPHRASE;
const engineOn = (store: MemoryStore, dataDir: string, extra: Partial<EngineOptions> = {}) =>
  memoryEngine(store, dataDir, { passphrase: PASSPHRASE, ...extra });
const MiB = 1024 * 1024;
const day = 86_400_000;

const synapseDir = (options: { mediaFiles?: number; bigFileBytes?: number } = {}) =>
  memorySynapseDir('synapse-concurrency', options);

/** The settled outcomes of `runs`, the fulfilled first. */
async function outcomes<T>(runs: Promise<T>[]) {
  const settled = await Promise.allSettled(runs);
  return {
    ok: settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : [])),
    failed: settled.flatMap((r) => (r.status === 'rejected' ? [r.reason as BackupError] : [])),
  };
}

describe('one backup id, one run', () => {
  // Two data dirs (two units, or two hosts) on one bucket: the data dir's lock cannot tell.
  test('two creates with the same id at once: one wins, the other is refused and removes nothing', async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    const other = await synapseDir();
    const { ok, failed } = await outcomes([
      engineOn(store, data).create({ id: 'same' }),
      engineOn(store, other).create({ id: 'same' }),
    ]);
    expect(ok).toHaveLength(1);
    expect(failed).toHaveLength(1);
    expect(failed[0]!.code).toBe('already-exists');
    expect(failed[0]!.message).toMatch(
      /^backup same is being created by the run of .+ pid \d+ started .+ \(its pending marker backups\/same\.pending is there\)$/,
    );
    expect(failed[0]!.remedy).toMatchObject({ kind: 'run', operation: 'delete' });
    expect(store.keys()).toEqual(['backups/same.manifest.json', 'backups/same.tar.enc']);
    await expect(engineOn(store, data).verify('same')).resolves.toMatchObject({
      sha256: ok[0]!.sha256,
    });
  });

  test('two creates with the default id in the same second: the second never deletes the first', async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    const other = await synapseDir();
    // Same second: pin the clock's second by starting right after it turns.
    await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 5));
    const { ok, failed } = await outcomes([
      engineOn(store, data).create(),
      engineOn(store, other).create(),
    ]);
    expect(ok).toHaveLength(1);
    expect(failed.map((e) => e.code)).toEqual(['already-exists']);
    const id = ok[0]!.backupId;
    expect(store.keys()).toEqual([`backups/${id}.manifest.json`, `backups/${id}.tar.enc`]);
    expect(store.calls.filter((c) => c.method === 'removeFailedUpload')).toEqual([]);
    await expect(engineOn(store, data).verify(id)).resolves.toMatchObject({
      sha256: ok[0]!.sha256,
    });
  });

  test('an id that exists is refused, and its own marker goes again', async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    await engineOn(store, data).create({ id: 'taken' });
    await expect(engineOn(store, data).create({ id: 'taken' })).rejects.toMatchObject({
      code: 'already-exists',
    });
    expect(store.keys()).toEqual(['backups/taken.manifest.json', 'backups/taken.tar.enc']);
  });
});

/** A store that runs `between` when the manifest is about to be written: after the upload. */
class PausingStore extends MemoryStore {
  between: (() => Promise<unknown>) | undefined;
  override async putTextIfAbsent(key: string, text: string, type: string): Promise<boolean> {
    if (key.endsWith('.manifest.json') && this.between) {
      const run = this.between;
      this.between = undefined;
      await run();
    }
    return super.putTextIfAbsent(key, text, type);
  }
}

describe('prune during a create', () => {
  test('between the upload and the manifest: the live marker keeps prune off it', async () => {
    const store = new PausingStore();
    const data = await synapseDir();
    const engine = engineOn(store, data);
    let pruned: unknown;
    store.between = async () => {
      expect((await engine.list()).backups).toEqual([
        expect.objectContaining({ backupId: 'racing', status: 'in-progress' }),
      ]);
      pruned = await engine.prune({ keepLast: 1 }, { workloadLeftovers: false });
    };
    await expect(engine.create({ id: 'racing' })).resolves.toMatchObject({ backupId: 'racing' });
    expect(pruned).toMatchObject({ forgotten: [], incompleteRemoved: [], pendingRemoved: [] });
    await expect(engine.verify('racing')).resolves.toMatchObject({ backupId: 'racing' });
  });

  test('with a stale age of 0 prune takes the object, and create then says so instead of success', async () => {
    const store = new PausingStore();
    const data = await synapseDir();
    const engine = engineOn(store, data);
    store.between = async () => {
      await new Promise((r) => setTimeout(r, 5));
      await engine.prune({ keepLast: 1 }, { workloadLeftovers: false, staleAfterSeconds: 0 });
    };
    const error = await engine.create({ id: 'racing' }).catch((e: unknown) => e);
    expect(error).toMatchObject({
      code: 'corrupt',
      message: "backup racing's object is gone after its upload: something else changed it",
    });
    expect(store.keys()).toEqual([]);
  });
});

describe('an upload its store lists only by its exact key (MinIO restarted mid-upload)', () => {
  test('create and its cleanup fail; the marker stays, and prune aborts the upload by its key', async () => {
    const store = new MemoryStore();
    const data = await synapseDir({ bigFileBytes: 12 * MiB });
    const engine = engineOn(store, data);
    store.uploadsListedByKeyOnly = true;
    store.fail('upload', {
      afterBytes: 6 * MiB,
      leaveUpload: true,
      error: new BackupError('s3-unreachable', 'cannot reach the S3 endpoint: ECONNREFUSED'),
    });
    store.fail('removeFailedUpload', {
      error: new BackupError('s3-unreachable', 'cannot reach the S3 endpoint: ECONNREFUSED'),
    });
    await expect(engine.create({ id: 'cut' })).rejects.toMatchObject({
      code: 's3-unreachable',
      message:
        'cannot reach the S3 endpoint: ECONNREFUSED; cleanup also failed: cannot reach the S3 endpoint: ECONNREFUSED',
    });
    expect(store.uploads.size).toBe(1);
    expect(store.keys()).toEqual(['backups/cut.pending']);
    const listed = await engine.list();
    expect(listed.uploads).toEqual([]); // invisible to a listing of the bucket
    expect(listed.backups).toEqual([
      expect.objectContaining({ backupId: 'cut', status: 'in-progress' }),
    ]);

    // While the marker is young, prune leaves it; once stale, it finds the upload by its key.
    const young = await engine.prune({ keepLast: 1 }, { workloadLeftovers: false });
    expect(young).toMatchObject({ uploadsAborted: [], pendingRemoved: [] });
    expect(store.uploads.size).toBe(1);
    const later = new Date(Date.now() + 2 * day);
    const dry = await engine.prune({ keepLast: 1 }, { dryRun: true, now: later });
    expect(dry).toMatchObject({ uploadsAborted: ['backups/cut.tar.enc'], pendingRemoved: ['cut'] });
    expect(store.uploads.size).toBe(1);
    const pruned = await engine.prune({ keepLast: 1 }, { workloadLeftovers: false, now: later });
    expect(pruned).toMatchObject({
      uploadsAborted: ['backups/cut.tar.enc'],
      pendingRemoved: ['cut'],
      incompleteRemoved: [],
    });
    expect(store.uploads.size).toBe(0);
    expect(store.keys()).toEqual([]);
  });
});
