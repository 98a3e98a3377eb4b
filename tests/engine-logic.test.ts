/**
 * The engine's logic on an in-memory store (tests/support/memory-store.ts)
 * and this host's tar: no MinIO, no Pebble, seconds. What the store does
 * over the network is tests/engine.test.ts's business.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { EngineOptions } from '../src/backup/types';
import { BackupError, ConfigError } from '../src/errors';
import { LocalWorkload } from '../src/workload/local';
import { MemoryStore } from './support/memory-store';
import { MEMORY_PASSPHRASE, memoryEngine, memorySynapseDir } from './support/memory-engine';
import { tmpDir } from './support/peers';
import { KillAfterBytes } from './support/workloads';
import { snapshotTree, withoutSkipped } from './support/synapse-tree';

const PASSPHRASE = MEMORY_PASSPHRASE;
const engineOn = (store: MemoryStore, dataDir: string, extra: Partial<EngineOptions> = {}) =>
  memoryEngine(store, dataDir, { passphrase: PASSPHRASE, ...extra });
const MiB = 1024 * 1024;
const day = 86_400_000;

const synapseDir = (options: { mediaFiles?: number; bigFileBytes?: number } = {}) =>
  memorySynapseDir('synapse-logic', options);

describe('engine logic on an in-memory store', () => {
  test('the data dir and the parents of selected paths get their owner, group and mode back', async () => {
    const store = new MemoryStore();
    const src = await synapseDir();
    await fsp.chmod(src, 0o750);
    await fsp.chmod(path.join(src, 'media_store'), 0o751);
    await fsp.chown(path.join(src, 'media_store'), 991, 991);
    await fsp.chown(src, 991, 992);
    const created = await engineOn(store, src).create({ id: 'modes' });
    // In place (the parent is recreated by the swap) and into a fresh dir (the root too).
    await fsp.chmod(src, 0o700);
    await fsp.chown(src, 0, 0);
    const fresh = (await tmpDir('synapse-logic-modes')).path;
    for (const dir of [src, fresh]) {
      await engineOn(store, dir).restore({ id: created.backupId, force: true });
      const root = await fsp.stat(dir);
      const media = await fsp.stat(path.join(dir, 'media_store'));
      expect([root.uid, root.gid, root.mode & 0o7777]).toEqual([991, 992, 0o750]);
      expect([media.uid, media.gid, media.mode & 0o7777]).toEqual([991, 991, 0o751]);
    }
  });

  test('create, list, verify and restore round-trip the selected files', async () => {
    const store = new MemoryStore();
    const src = await synapseDir({ bigFileBytes: 6 * MiB });
    const dst = (await tmpDir('synapse-logic-dst')).path;
    const engine = engineOn(store, src);
    const created = await engine.create({ id: 'one' });
    expect(created).toMatchObject({ backupId: 'one', files: expect.any(Number) });
    expect(store.keys()).toEqual(['backups/one.manifest.json', 'backups/one.tar.enc']);

    const listed = await engine.list();
    expect(listed.backups).toEqual([
      expect.objectContaining({ backupId: 'one', status: 'complete', size: created.size }),
    ]);
    expect(listed.uploads).toEqual([]);
    await expect(engine.verify('one')).resolves.toMatchObject({ sha256: created.sha256 });

    const restored = await engineOn(store, dst).restore({ id: 'one' });
    expect(restored).toMatchObject({ backupId: 'one', files: created.files });
    const expected = withoutSkipped(await snapshotTree(src));
    const actual = await snapshotTree(dst);
    expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
    expected.delete('homeserver.db'); // a snapshot, one-time keys removed
    for (const [key, entry] of expected) expect([key, actual.get(key)]).toEqual([key, entry]);

    const plain: Buffer[] = [];
    const out = new Writable({
      write: (c: Buffer, _e, done) => {
        plain.push(c);
        done();
      },
    });
    const decrypted = await engine.decryptTo('one', out);
    expect(decrypted).toEqual({ plaintextBytes: created.plaintextBytes, sha256: created.sha256 });
    expect(Buffer.concat(plain).length).toBe(created.plaintextBytes);
  });

  test('an existing id is refused, and so is one with an upload in progress', async () => {
    const store = new MemoryStore();
    const engine = engineOn(store, await synapseDir());
    await engine.create({ id: 'once' });
    await expect(engine.create({ id: 'once' })).rejects.toMatchObject({
      code: 'already-exists',
      message: expect.stringContaining('backup once already exists and is never overwritten'),
    });
    store.startUpload('backups/busy.tar.enc');
    await expect(engine.create({ id: 'busy' })).rejects.toMatchObject({
      code: 'already-exists',
      message: 'an upload of backup busy is in progress or was left behind by an interrupted run',
      remedy: { kind: 'run', operation: 'prune' },
    });
    expect(store.keys()).toEqual(['backups/once.manifest.json', 'backups/once.tar.enc']);
  });

  test('a backup without a manifest is listed incomplete and restored only when allowed', async () => {
    const store = new MemoryStore();
    const engine = engineOn(store, await synapseDir());
    await engine.create({ id: 'legacy' });
    store.objects.delete('backups/legacy.manifest.json');
    expect((await engine.list()).backups).toEqual([
      expect.objectContaining({ backupId: 'legacy', status: 'incomplete' }),
    ]);
    const dst = (await tmpDir('synapse-logic-legacy')).path;
    const restorer = engineOn(store, dst);
    await expect(restorer.restore({ id: 'legacy' })).rejects.toMatchObject({
      code: 'corrupt',
      message: expect.stringContaining('backup legacy is incomplete: it has no manifest'),
      remedy: { kind: 'run-again', option: 'allow-no-manifest' },
    });
    expect(await fsp.readdir(dst)).toEqual([]);
    await expect(
      restorer.restore({ id: 'legacy', allowMissingManifest: true }),
    ).resolves.toMatchObject({ backupId: 'legacy' });
    expect(await fsp.readdir(dst)).toContain('homeserver.yaml');
  });

  test('prune applies the retention policy, aborts stale uploads and removes leftovers', async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    const engine = engineOn(store, data, { passphrase: undefined });
    const creator = engineOn(store, data);
    for (const id of ['20261101000000', '20261110000000', '20261120000000']) {
      await creator.create({ id });
    }
    const stale = store.startUpload('backups/stale.tar.enc', new Date(Date.now() - 2 * day));
    await fsp.writeFile(path.join(data, '.synapse-backup-snapshot.db'), 'half a snapshot');
    const later = new Date(Date.now() + day);

    const dry = await engine.prune({ keepLast: 1 }, { dryRun: true, now: later });
    expect(dry).toEqual({
      dryRun: true,
      forgotten: ['20261101000000', '20261110000000'],
      incompleteRemoved: [],
      uploadsAborted: ['backups/stale.tar.enc'],
      pendingRemoved: [],
      kept: 1,
      leftoversRemoved: false,
      staleRemoved: [],
    });
    expect(store.keys()).toHaveLength(6);

    const real = await engine.prune({ keepLast: 1 }, { now: later });
    expect(real).toMatchObject({ forgotten: dry.forgotten, leftoversRemoved: true });
    expect(store.keys()).toEqual([
      'backups/20261120000000.manifest.json',
      'backups/20261120000000.tar.enc',
    ]);
    expect(store.uploads.has(stale.uploadId)).toBe(false);
    expect(await fsp.readdir(data)).not.toContain('.synapse-backup-snapshot.db');
  });

  test('prune asks the workload to remove its stale files, and reports a failure', async () => {
    const store = new MemoryStore();
    const local = new LocalWorkload();
    const removeStale = jest.fn(async () => ['/run/stale.sock']);
    const engine = engineOn(store, await synapseDir(), {
      workload: Object.assign(Object.create(local) as LocalWorkload, { removeStale }),
    });
    expect(await engine.prune({ keepLast: 1 })).toMatchObject({
      staleRemoved: ['/run/stale.sock'],
    });
    expect((await engine.prune({ keepLast: 1 }, { dryRun: true })).staleRemoved).toEqual([]);
    expect(removeStale).toHaveBeenCalledTimes(1);
    removeStale.mockRejectedValueOnce(new Error('permission denied'));
    expect(await engine.prune({ keepLast: 1 })).toMatchObject({
      staleRemoved: [],
      staleError: 'permission denied',
    });
  });

  test('a failed upload reports S3, not tar, and leaves nothing behind', async () => {
    const store = new MemoryStore();
    const data = await synapseDir({ bigFileBytes: 12 * MiB });
    const engine = engineOn(store, data);
    store.fail('upload', {
      afterBytes: 6 * MiB,
      error: new BackupError('s3', 'cannot upload backups/cut.tar.enc: HTTP 500 InternalError'),
    });
    await expect(engine.create({ id: 'cut' })).rejects.toMatchObject({
      code: 's3',
      message: 'cannot upload backups/cut.tar.enc: HTTP 500 InternalError',
    });
    expect(store.keys()).toEqual([]);
    expect(store.uploads.size).toBe(0);
    // The pending marker goes only once the upload is known gone.
    expect(store.calls.slice(-2)).toEqual([
      { method: 'removeFailedUpload', key: 'backups/cut.tar.enc' },
      { method: 'delete', key: 'backups/cut.pending' },
    ]);
    expect(await fsp.readdir(data)).not.toContain('.synapse-backup-snapshot.db');

    // At once, before a byte was read, too.
    store.fail('upload', { error: new BackupError('s3-auth', 'cannot upload: access denied') });
    await expect(engine.create({ id: 'denied' })).rejects.toMatchObject({ code: 's3-auth' });
    expect(store.keys()).toEqual([]);
  });

  test('a failed manifest write removes the uploaded object', async () => {
    const store = new MemoryStore();
    const engine = engineOn(store, await synapseDir());
    store.fail('putTextIfAbsent', { key: 'backups/half.manifest.json' });
    await expect(engine.create({ id: 'half' })).rejects.toMatchObject({
      message: 'cannot putTextIfAbsent: injected failure',
    });
    expect(store.keys()).toEqual([]);
  });

  test("tar dying mid-stream reports tar's exit status", async () => {
    const store = new MemoryStore();
    const data = await synapseDir({ bigFileBytes: 12 * MiB });
    const engine = engineOn(store, data, {
      workload: new KillAfterBytes(new LocalWorkload(), 3 * MiB),
    });
    const err = await engine.create({ id: 'killed' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackupError);
    expect((err as Error).message).toMatch(/tar in local host (was killed|exited with status)/);
    expect(store.keys()).toEqual([]);
    expect(store.uploads.size).toBe(0);
  });

  test('delete removes the manifest first: a half-deleted backup never looks complete', async () => {
    const store = new MemoryStore();
    const engine = engineOn(store, await synapseDir(), { passphrase: undefined });
    await engineOn(store, await synapseDir()).create({ id: 'doomed' });
    store.calls.length = 0;
    store.fail('delete', { key: 'backups/doomed.tar.enc' });
    await expect(engine.delete('doomed')).rejects.toThrow('cannot delete: injected failure');
    expect(store.keys()).toEqual(['backups/doomed.tar.enc']);
    expect((await engine.list()).backups).toEqual([
      expect.objectContaining({ backupId: 'doomed', status: 'incomplete' }),
    ]);
    const deleted = await engine.delete('doomed');
    expect(deleted.deletedKeys).toEqual(['backups/doomed.tar.enc']);
    expect(store.calls.filter((c) => c.method === 'delete').map((c) => c.key)).toEqual([
      'backups/doomed.manifest.json',
      'backups/doomed.tar.enc',
      'backups/doomed.tar.enc',
    ]);
  });

  test('an unknown id: not-found with a list remedy, or the missing bucket', async () => {
    const store = new MemoryStore();
    const engine = engineOn(store, await synapseDir());
    await expect(engine.delete('nothing')).rejects.toMatchObject({
      code: 'not-found',
      message: 'backup nothing does not exist under prefix "backups/" in bucket "memory"',
      remedy: { kind: 'run', operation: 'list', why: 'to see the ids', sameAs: 's3-path' },
    });
    store.bucketExists = false;
    await expect(engine.verify('nothing')).rejects.toMatchObject({ code: 's3-bucket' });
    // Without a prefix, the message says the bucket's top was looked at.
    const top = engineOn(new MemoryStore(''), await synapseDir());
    await expect(top.delete('nothing')).rejects.toMatchObject({
      code: 'not-found',
      message: 'backup nothing does not exist at the top of bucket "memory" (no prefix)',
    });
  });

  test('without a passphrase, list, delete and prune work; the rest say which setting', async () => {
    const store = new MemoryStore();
    const data = await synapseDir();
    await engineOn(store, data).create({ id: 'kept' });
    const engine = engineOn(store, data, { passphrase: undefined });
    const missing = {
      code: 'config',
      message: 'no backup passphrase is set',
      remedy: { kind: 'set', setting: 'backup-passphrase' },
    };
    const calls = store.calls.length;
    await expect(engine.create({ id: 'new' })).rejects.toMatchObject(missing);
    await expect(engine.verify('kept')).rejects.toMatchObject(missing);
    await expect(engine.restore({ id: 'kept' })).rejects.toMatchObject(missing);
    const sink = new Writable({ write: (_c, _e, done) => done() });
    await expect(engine.decryptTo('kept', sink)).rejects.toBeInstanceOf(ConfigError);
    expect(store.calls.length).toBe(calls); // refused before touching the store
    expect((await engine.list()).backups).toHaveLength(1);
    await expect(engine.prune({ keepLast: 1 })).resolves.toMatchObject({ kept: 1 });
    await expect(engine.delete('kept')).resolves.toMatchObject({ backupId: 'kept' });
  });
});
