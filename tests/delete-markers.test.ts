/**
 * delete and a create's pending marker (src/backup/catalog.ts deleteBackup,
 * src/backup/pending.ts): a fresh marker without a manifest is a create that
 * may be running (refused, nothing deleted); a stale one is an interrupted
 * run's (marker, object and upload go); a complete backup's leftover marker
 * goes with it. On the in-memory store.
 */
import { BackupError } from '../src/errors';
import { MemoryStore } from './support/memory-store';
import { memoryEngine } from './support/memory-engine';

const HOUR = 3_600_000;

describe('delete and pending markers (in-memory store)', () => {
  test('a fresh marker without a manifest: refused as busy, nothing deleted', async () => {
    const store = new MemoryStore();
    store.putObject('backups/running.pending', '{}', new Date(Date.now() - 2 * HOUR));
    store.putObject('backups/running.tar.enc', 'half an upload');
    const upload = store.startUpload('backups/running.tar.enc');
    const err = await memoryEngine(store, '/nonexistent')
      .delete('running')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackupError);
    expect(err).toMatchObject({
      code: 'busy',
      message:
        "backup running is being created: its pending marker backups/running.pending was written 2 h ago (S3's time), and a create may still be running; nothing was deleted",
      remedy: { kind: 'run', operation: 'delete' },
    });
    expect(store.keys()).toEqual(['backups/running.pending', 'backups/running.tar.enc']);
    expect([...store.uploads.keys()]).toEqual([upload.uploadId]);
  });

  test('a stale marker: the marker, the object and the upload go, and the result says it was an interrupted run', async () => {
    const store = new MemoryStore();
    const written = new Date(Date.now() - 30 * HOUR);
    store.putObject('backups/gone.pending', '{}', written);
    store.putObject('backups/gone.tar.enc', 'half an upload');
    store.startUpload('backups/gone.tar.enc');
    const r = await memoryEngine(store, '/nonexistent').delete('gone');
    expect(r).toEqual({
      backupId: 'gone',
      deletedKeys: ['backups/gone.tar.enc', 'backups/gone.pending'],
      interruptedRunSince: written.toISOString(),
    });
    expect(store.keys()).toEqual([]);
    expect(store.uploads.size).toBe(0);

    // A shorter stale age makes a younger marker stale too.
    store.putObject('backups/young.pending', '{}', new Date(Date.now() - 2 * HOUR));
    const young = await memoryEngine(store, '/nonexistent').delete('young', {
      staleAfterSeconds: 3600,
    });
    expect(young.deletedKeys).toEqual(['backups/young.pending']);
    expect(store.keys()).toEqual([]);
  });

  test("a complete backup's leftover marker goes with it, whatever its age", async () => {
    const store = new MemoryStore();
    store.putObject('backups/done.manifest.json', '{}');
    store.putObject('backups/done.tar.enc', 'data');
    store.putObject('backups/done.pending', '{}');
    const r = await memoryEngine(store, '/nonexistent').delete('done');
    expect(r).toEqual({
      backupId: 'done',
      deletedKeys: ['backups/done.manifest.json', 'backups/done.tar.enc', 'backups/done.pending'],
    });
    expect(store.keys()).toEqual([]);
  });
});
