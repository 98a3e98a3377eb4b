import { minioEngine } from './support/engines';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import {
  GetObjectCommand,
  PutObjectCommand,
  CreateMultipartUploadCommand,
} from '@aws-sdk/client-s3';
import type { EngineOptions } from '../src/backup/types';
import { BackupError } from '../src/errors';
import { LocalWorkload } from '../src/workload/local';
import { PebbleWorkload } from '../src/workload/pebble';
import type { Workload } from '../src/workload/workload';
import { buildTar, encrypt, putBackup } from './support/backups';
import {
  type MinioPeer,
  type PebblePeer,
  describeWithPeers,
  startMinio,
  startPebble,
  tmpDir,
} from './support/peers';
import { KillAfterBytes } from './support/workloads';
import {
  inspectSqliteDb,
  makeSynapseTree,
  snapshotTree,
  treeHash,
  withoutSkipped,
} from './support/synapse-tree';

const PASSPHRASE = 'correct horse battery staple';

type Transport = 'local' | 'pebble';

for (const transport of ['local', 'pebble'] as Transport[]) {
  describeWithPeers(transport === 'pebble' ? ['minio', 'pebble'] : ['minio'])(
    `engine over the ${transport} transport`,
    () => {
      let minio: MinioPeer;
      let pebble: PebblePeer | undefined;
      let workload: Workload;
      const prefix = `backups/${transport}`;

      beforeAll(async () => {
        minio = await startMinio();
        if (transport === 'pebble') {
          pebble = await startPebble();
          workload = new PebbleWorkload({ socketPath: pebble.socketPath });
        } else {
          workload = new LocalWorkload();
        }
      });
      afterAll(async () => {
        await pebble?.stop();
        await minio?.stop();
      });

      const engineFor = (dataDir: string, extra: Partial<EngineOptions> = {}) =>
        minioEngine(minio, prefix, { passphrase: PASSPHRASE, workload, dataDir, ...extra });

      const uploadsLeft = async () => {
        const engine = engineFor('/nonexistent');
        try {
          return (await engine.list()).uploads;
        } finally {
          engine.close();
        }
      };

      test('create, list, verify and restore round-trip every selected file, mode and mtime', async () => {
        const src = await tmpDir('synapse-src');
        const dst = await tmpDir('synapse-dst');
        await makeSynapseTree(src.path, { bigFileBytes: 12 * 1024 * 1024 });
        const progress: number[] = [];
        const engine = engineFor(src.path, {
          onProgress: (p) => progress.push(p.bytes),
          progressIntervalMs: 50,
        });
        const created = await engine.create({ id: 'roundtrip-1' });
        expect(created.backupId).toBe('roundtrip-1');
        expect(created.files).toBe(28);
        expect(created.sha256).toMatch(/^[0-9a-f]{64}$/);
        expect(created.size).toBeGreaterThan(created.plaintextBytes);
        expect(progress.at(-1)).toBe(created.plaintextBytes);

        const listed = await engine.list();
        expect(listed.backups).toEqual([
          expect.objectContaining({
            backupId: 'roundtrip-1',
            status: 'complete',
            size: created.size,
          }),
        ]);
        expect(listed.uploads).toEqual([]);

        const verified = await engine.verify('roundtrip-1');
        expect(verified).toMatchObject({ files: 28, sha256: created.sha256 });

        const restorer = engineFor(dst.path);
        const restored = await restorer.restore({ id: 'roundtrip-1' });
        expect(restored.files).toBe(28);
        const expected = withoutSkipped(await snapshotTree(src.path));
        const actual = await snapshotTree(dst.path);
        expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
        // The database is a snapshot with one-time keys removed: compare its content instead.
        expected.delete('homeserver.db');
        for (const [key, entry] of expected) expect([key, actual.get(key)]).toEqual([key, entry]);
        expect(inspectSqliteDb(path.join(dst.path, 'homeserver.db'))).toEqual({
          events: 300,
          oneTimeKeys: 0,
          integrity: 'ok',
        });
        expect(restored.oneTimeKeysRemoved).toBe(5);
        expect(inspectSqliteDb(path.join(src.path, 'homeserver.db')).oneTimeKeys).toBe(5);
        engine.close();
        restorer.close();
      });

      test('an existing id is refused: a backup is never overwritten', async () => {
        const src = await tmpDir('synapse-src');
        await makeSynapseTree(src.path, { mediaFiles: 1 });
        const engine = engineFor(src.path);
        await engine.create({ id: 'once' });
        await expect(engine.create({ id: 'once' })).rejects.toThrow(
          'backup once already exists and is never overwritten',
        );
        engine.close();
      });

      test('an empty selection is a clear error and leaves nothing in S3', async () => {
        const src = await tmpDir('synapse-empty');
        await fsp.mkdir(path.join(src.path, 'media_store/remote_content'), { recursive: true });
        const engine = engineFor(src.path);
        await expect(engine.create({ id: 'empty' })).rejects.toMatchObject({
          code: 'empty-selection',
          message: expect.stringContaining(`nothing to back up in ${src.path}`),
        });
        const listed = await engine.list();
        expect(listed.backups.find((b) => b.backupId === 'empty')).toBeUndefined();
        expect(listed.uploads).toEqual([]);
        engine.close();
      });

      test('tar killed mid-stream: the upload is aborted, no object, no manifest, no in-progress upload', async () => {
        const src = await tmpDir('synapse-src');
        await makeSynapseTree(src.path, { bigFileBytes: 40 * 1024 * 1024 });
        const engine = engineFor(src.path, {
          workload: new KillAfterBytes(workload, 20 * 1024 * 1024),
          partSize: 5 * 1024 * 1024,
        });
        const err = await engine.create({ id: 'killed' }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(BackupError);
        expect((err as Error).message).toMatch(/tar in .* (was killed|exited with status)/);
        const listed = await engine.list();
        expect(listed.backups.find((b) => b.backupId === 'killed')).toBeUndefined();
        expect(await uploadsLeft()).toEqual([]);
        engine.close();
      });

      test('wrong passphrase: a clear error and nothing written', async () => {
        const src = await tmpDir('synapse-src');
        const dst = await tmpDir('synapse-dst');
        await makeSynapseTree(src.path, { mediaFiles: 2 });
        const engine = engineFor(src.path);
        await engine.create({ id: 'secret' });
        const wrong = engineFor(dst.path, { passphrase: 'not the passphrase' });
        await expect(wrong.restore({ id: 'secret' })).rejects.toMatchObject({
          code: 'wrong-passphrase',
          message:
            'cannot decrypt backup secret: the passphrase does not match the one it was encrypted with',
        });
        await expect(wrong.verify('secret')).rejects.toMatchObject({ code: 'wrong-passphrase' });
        expect(await fsp.readdir(dst.path)).toEqual([]);
        engine.close();
        wrong.close();
      });

      test('a flipped byte is caught by verify and by restore', async () => {
        const src = await tmpDir('synapse-src');
        const dst = await tmpDir('synapse-dst');
        await makeSynapseTree(src.path, { bigFileBytes: 3 * 1024 * 1024 });
        const engine = engineFor(src.path);
        await engine.create({ id: 'flipped' });
        const key = `${prefix}/flipped.tar.enc`;
        const got = await minio.client.send(
          new GetObjectCommand({ Bucket: minio.bucket, Key: key }),
        );
        const bytes = Buffer.from(await got.Body!.transformToByteArray());
        bytes[Math.floor(bytes.length / 2)] ^= 0x01;
        await minio.client.send(
          new PutObjectCommand({ Bucket: minio.bucket, Key: key, Body: bytes }),
        );
        await expect(engine.verify('flipped')).rejects.toMatchObject({
          code: 'corrupt',
          message: expect.stringContaining(
            'backup flipped is damaged: its authentication check failed',
          ),
        });
        const restorer = engineFor(dst.path);
        await expect(restorer.restore({ id: 'flipped' })).rejects.toMatchObject({
          code: 'corrupt',
        });
        engine.close();
        restorer.close();
      });

      test.each([
        ['an absolute path', [{ name: '/etc/evil', content: 'x' }], 'has an absolute path'],
        ['a ".." path', [{ name: 'media_store/../../evil', content: 'x' }], 'contains ".."'],
        [
          'a symlink escape',
          [{ name: 'media_store', type: 'symlink' as const, linkname: '../../outside' }],
          'points outside the data directory',
        ],
        [
          'an absolute symlink',
          [{ name: 'etc', type: 'symlink' as const, linkname: '/etc' }],
          'points to the absolute path',
        ],
        [
          'a write through a symlink',
          [
            { name: 'inside', type: 'symlink' as const, linkname: 'media_store' },
            { name: 'inside/x', content: 'x' },
          ],
          'which the archive made a symlink',
        ],
        [
          'a hard link escape',
          [{ name: 'pw', type: 'link' as const, linkname: '../../etc/passwd' }],
          'contains ".."',
        ],
        [
          'a hard link to a non-member',
          [{ name: 'pw', type: 'link' as const, linkname: 'etc/passwd' }],
          'which is not a file earlier in the archive',
        ],
        ['a device node', [{ name: 'dev', type: 'character-device' as const }], 'is a device node'],
      ])('restore rejects %s before it reaches the workload', async (_label, entries, message) => {
        const dst = await tmpDir('synapse-dst');
        await fsp.writeFile(path.join(dst.path, 'homeserver.yaml'), 'live data\n');
        const before = await treeHash(dst.path);
        const tar = await buildTar([{ name: 'homeserver.yaml', content: 'evil' }, ...entries]);
        const ciphertext = await encrypt(tar, PASSPHRASE);
        const id = `hostile-${Math.random().toString(36).slice(2, 8)}`;
        await putBackup(minio.client, minio.bucket, prefix, id, tar, ciphertext, {
          files: entries.length + 1,
          entries: entries.length + 1,
        });
        const engine = engineFor(dst.path);
        await expect(engine.restore({ id })).rejects.toMatchObject({
          code: 'archive-rejected',
          message: expect.stringContaining(message),
        });
        expect(await treeHash(dst.path)).toBe(before);
        engine.close();
      });

      test('delete removes object and manifest; an unknown id is a clear error', async () => {
        const src = await tmpDir('synapse-src');
        await makeSynapseTree(src.path, { mediaFiles: 1 });
        const engine = engineFor(src.path);
        await engine.create({ id: 'doomed' });
        const deleted = await engine.delete('doomed');
        expect(deleted.deletedKeys).toEqual([
          `${prefix}/doomed.manifest.json`,
          `${prefix}/doomed.tar.enc`,
        ]);
        expect((await engine.list()).backups.find((b) => b.backupId === 'doomed')).toBeUndefined();
        await expect(engine.delete('doomed')).rejects.toMatchObject({
          code: 'not-found',
          message: expect.stringContaining('backup doomed does not exist'),
          remedy: { kind: 'run', operation: 'list', why: 'to see the ids' },
        });
        await expect(engine.restore({ id: 'never' })).rejects.toMatchObject({ code: 'not-found' });
        engine.close();
      });

      test('list reports objects without a manifest as incomplete, and in-progress uploads', async () => {
        const engine = engineFor('/data');
        const tar = await buildTar([{ name: 'homeserver.yaml', content: 'x' }]);
        await putBackup(
          minio.client,
          minio.bucket,
          prefix,
          'orphan',
          tar,
          await encrypt(tar, PASSPHRASE),
          {
            files: 1,
            entries: 1,
            withManifest: false,
          },
        );
        const mpu = await minio.client.send(
          new CreateMultipartUploadCommand({
            Bucket: minio.bucket,
            Key: `${prefix}/stale.tar.enc`,
          }),
        );
        const listed = await engine.list();
        expect(listed.backups.find((b) => b.backupId === 'orphan')).toMatchObject({
          status: 'incomplete',
        });
        expect(listed.uploads).toContainEqual(
          expect.objectContaining({ key: `${prefix}/stale.tar.enc`, uploadId: mpu.UploadId }),
        );
        await expect(engine.restore({ id: 'orphan' })).rejects.toMatchObject({
          message: expect.stringContaining('backup orphan is incomplete: it has no manifest'),
          remedy: {
            kind: 'run-again',
            option: 'allow-no-manifest',
            when: "if it is an old charm's backup",
          },
        });
        await expect(engine.create({ id: 'stale' })).rejects.toMatchObject({
          message: expect.stringContaining('an upload of backup stale is in progress'),
          remedy: { kind: 'run', operation: 'prune' },
        });
        engine.close();
      });
    },
  );
}
