import { minioEngine, minioSettings } from './support/engines';
import { ObjectStore } from '../src/s3/store';
import { startFaultyProxy } from './support/faulty-proxy';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import {
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  HeadObjectCommand,
} from '@aws-sdk/client-s3';
import { backupsToForget, parseRetention } from '../src/backup/retention';
import type { BackupInfo } from '../src/backup/types';
import { buildTar, encrypt, putBackup } from './support/backups';
import { type MinioPeer, describeWithPeers, startMinio, tmpDir } from './support/peers';

const day = 86_400_000;
const now = new Date('2026-11-26T12:00:00Z');
const backup = (
  id: string,
  daysAgo: number,
  status: BackupInfo['status'] = 'complete',
): BackupInfo => ({
  backupId: id,
  created: new Date(now.getTime() - daysAgo * day).toISOString(),
  size: 1,
  status,
});

describe('retention policy', () => {
  test('parses restic-style rules and names what is wrong', () => {
    expect(parseRetention('keep-last=7,keep-days=30')).toEqual({ keepLast: 7, keepDays: 30 });
    expect(parseRetention(' keep-days = 3 ')).toEqual({ keepDays: 3 });
    expect(parseRetention('')).toEqual({});
    expect(() => parseRetention('keep-weekly=4')).toThrow(
      'backup-retention "keep-weekly=4" is not valid: use keep-last=N and/or keep-days=N',
    );
    expect(() => parseRetention('keep-last=0')).toThrow('keep-last must be at least 1');
  });

  const backups = [
    backup('a', 40),
    backup('b', 20),
    backup('c', 10),
    backup('d', 1),
    backup('x', 50, 'incomplete'),
  ];

  test('a backup is kept when any rule keeps it; incomplete ones are not its business', () => {
    expect(backupsToForget(backups, { keepLast: 2 }, now).map((b) => b.backupId)).toEqual([
      'a',
      'b',
    ]);
    expect(backupsToForget(backups, { keepDays: 15 }, now).map((b) => b.backupId)).toEqual([
      'a',
      'b',
    ]);
    expect(
      backupsToForget(backups, { keepLast: 1, keepDays: 25 }, now).map((b) => b.backupId),
    ).toEqual(['a']);
    expect(backupsToForget(backups, {}, now)).toEqual([]);
  });

  test('the newest complete backup is never forgotten, however old', () => {
    const old = [backup('p', 400), backup('q', 300)];
    expect(backupsToForget(old, { keepDays: 1 }, now).map((b) => b.backupId)).toEqual(['p']);
  });
});

describeWithPeers(['minio'])('prune against MinIO', () => {
  let minio: MinioPeer;
  beforeAll(async () => {
    minio = await startMinio();
  });
  afterAll(async () => {
    await minio?.stop();
  });

  test('a pending marker reserves an id with one conditional PutObject (If-None-Match: *)', async () => {
    const store = new ObjectStore(minioSettings(minio, 'reserve'));
    const send = jest.spyOn(store.client, 'send');
    const key = store.key('r.pending');
    await expect(store.putTextIfAbsent(key, 'first', 'text/plain')).resolves.toBe(true);
    await expect(store.putTextIfAbsent(key, 'second', 'text/plain')).resolves.toBe(false);
    // MinIO honours the header: no HEAD and read-back fallback.
    expect(send.mock.calls.map(([command]) => command.constructor.name)).toEqual([
      'PutObjectCommand',
      'PutObjectCommand',
    ]);
    await expect(store.getText(key)).resolves.toBe('first');
    store.close();
  });

  test('putText and putTextIfAbsent write the same object: the text and its Content-Type', async () => {
    const store = new ObjectStore(minioSettings(minio, 'same-put'));
    const plain = store.key('plain.json');
    const conditional = store.key('conditional.json');
    await store.putText(plain, '{"a":1}', 'application/json');
    await expect(store.putTextIfAbsent(conditional, '{"a":1}', 'application/json')).resolves.toBe(
      true,
    );
    for (const key of [plain, conditional]) {
      await expect(store.getText(key)).resolves.toBe('{"a":1}');
      const head = await store.client.send(
        new HeadObjectCommand({ Bucket: minio.bucket, Key: key }),
      );
      expect(head.ContentType).toBe('application/json');
      expect(head.ContentLength).toBe(7);
    }
    store.close();
  });

  test('a store that answers 501 to If-None-Match: a HEAD, the write and a read-back', async () => {
    const proxy = await startFaultyProxy(minio.endpoint);
    const store = new ObjectStore(minioSettings(minio, 'fallback', { endpoint: proxy.endpoint }));
    try {
      const key = store.key('f.pending');
      const notImplemented = {
        kind: 'error' as const,
        status: 501,
        code: 'NotImplemented',
        message: 'A header you provided implies functionality that is not implemented',
      };
      proxy.addRule({ op: 'PutObject', key: /f\.pending$/, fault: notImplemented, times: 1 });
      await expect(store.putTextIfAbsent(key, 'first', 'text/plain')).resolves.toBe(true);
      proxy.addRule({ op: 'PutObject', key: /f\.pending$/, fault: notImplemented, times: 1 });
      await expect(store.putTextIfAbsent(key, 'second', 'text/plain')).resolves.toBe(false);
      await expect(store.getText(key)).resolves.toBe('first');
      expect(proxy.log.map((e) => e.op)).toEqual([
        'PutObject',
        'HeadObject',
        'PutObject',
        'GetObject',
        'PutObject',
        'HeadObject',
        'GetObject',
      ]);
    } finally {
      store.close();
      await proxy.close();
    }
  });

  test('dry-run reports, a real run removes forgotten, stale incomplete backups and stale uploads', async () => {
    const prefix = 'prune';
    const data = await tmpDir('prune-data');
    const engine = minioEngine(minio, prefix, { dataDir: data.path });
    const tar = await buildTar([{ name: 'homeserver.yaml', content: 'x' }]);
    const ciphertext = await encrypt(tar, 'p');
    for (const id of ['20261101000000', '20261110000000', '20261120000000']) {
      await putBackup(minio.client, minio.bucket, prefix, id, tar, ciphertext, {
        files: 1,
        entries: 1,
      });
    }
    // An object without a manifest and without a pending marker: maybe the original Python
    // charm's backup (it wrote no manifests; restorable with allow-no-manifest). Kept.
    await putBackup(minio.client, minio.bucket, prefix, 'legacy', tar, ciphertext, {
      files: 1,
      entries: 1,
      withManifest: false,
    });
    // A manifest without its object: never restorable, removed once stale.
    await putBackup(minio.client, minio.bucket, prefix, 'orphan', tar, ciphertext, {
      files: 1,
      entries: 1,
    });
    await minio.client.send(
      new DeleteObjectCommand({ Bucket: minio.bucket, Key: `${prefix}/orphan.tar.enc` }),
    );
    await minio.client.send(
      new CreateMultipartUploadCommand({ Bucket: minio.bucket, Key: `${prefix}/stale.tar.enc` }),
    );
    const later = new Date(Date.now() + 2 * day);

    const dry = await engine.prune({ keepLast: 1 }, { dryRun: true, now: later });
    // Manifests written now all carry the same start time; ids order the rest.
    expect(dry).toEqual({
      dryRun: true,
      forgotten: ['20261101000000', '20261110000000'],
      incompleteRemoved: ['orphan'],
      uploadsAborted: [`${prefix}/stale.tar.enc`],
      pendingRemoved: [],
      kept: 1,
      leftoversRemoved: false,
      staleRemoved: [],
    });
    expect((await engine.list()).backups).toHaveLength(5);

    const fresh = await engine.prune({ keepLast: 1 }, { now: new Date() });
    expect(fresh.incompleteRemoved).toEqual([]); // younger than 24 h: maybe still being written
    expect(fresh.uploadsAborted).toEqual([]);

    // What a killed create and a killed restore leave in the data dir; a kept previous copy stays.
    await fsp.writeFile(path.join(data.path, '.synapse-backup-snapshot.db'), 'half a snapshot');
    await fsp.mkdir(path.join(data.path, '.synapse-restore-20261101T000000000Z'));
    await fsp.mkdir(path.join(data.path, '.pre-restore-20261101T000000000Z'));
    const real = await engine.prune({ keepLast: 1 }, { now: later });
    expect(real.dryRun).toBe(false);
    expect(real).toMatchObject({ leftoversRemoved: true, staleRemoved: [] });
    expect(await fsp.readdir(data.path)).toEqual(['.pre-restore-20261101T000000000Z']);
    const listed = await engine.list();
    expect(listed.backups.map((b) => b.backupId)).toEqual(['20261120000000', 'legacy']);
    expect(listed.uploads).toEqual([]);
    engine.close();
  });
});
