/**
 * Retention per server: backups of several servers (their manifests' server_name)
 * under one bucket and prefix never count against each other. The policy alone,
 * then the real engine's prune against MinIO, dry run and real.
 */
import { retentionGroups } from '../src/backup/retention';
import type { BackupInfo } from '../src/backup/types';
import { buildTar, encrypt, putBackup } from './support/backups';
import { minioEngine } from './support/engines';
import { type MinioPeer, describeWithPeers, startMinio } from './support/peers';

const day = 86_400_000;
const now = new Date('2026-11-26T12:00:00Z');
const backup = (id: string, daysAgo: number, serverName?: string): BackupInfo => ({
  backupId: id,
  created: new Date(now.getTime() - daysAgo * day).toISOString(),
  size: 1,
  status: 'complete',
  ...(serverName ? { serverName } : {}),
});
const ids = (backups: BackupInfo[]) => backups.map((b) => b.backupId);

describe('retention groups', () => {
  // other.org's three backups are the newest: a policy over all of them would drop example.org's.
  const backups = [
    backup('e1', 40, 'example.org'),
    backup('e2', 30, 'example.org'),
    backup('o1', 25, 'other.org'),
    backup('e3', 20, 'example.org'),
    backup('o2', 3, 'other.org'),
    backup('o3', 2, 'other.org'),
    backup('o4', 1, 'other.org'),
    backup('n1', 50),
  ];

  test('keep-last counts each server on its own; no server is one more group, listed last', () => {
    const groups = retentionGroups(backups, { keepLast: 3 }, now);
    expect(groups.map((g) => [g.serverName, ids(g.kept), ids(g.forgotten)])).toEqual([
      ['example.org', ['e3', 'e2', 'e1'], []],
      ['other.org', ['o4', 'o3', 'o2'], ['o1']],
      [undefined, ['n1'], []],
    ]);
  });

  test('keep-days keeps each server its newest even when all are older', () => {
    const groups = retentionGroups(backups, { keepDays: 10 }, now);
    expect(groups.map((g) => [g.serverName, ids(g.kept), ids(g.forgotten)])).toEqual([
      ['example.org', ['e3'], ['e2', 'e1']],
      ['other.org', ['o4', 'o3', 'o2'], ['o1']],
      [undefined, ['n1'], []],
    ]);
  });

  test('no rule keeps everything; incomplete backups are in no group', () => {
    const withIncomplete = [
      ...backups,
      { ...backup('x', 60, 'third.org'), status: 'incomplete' as const },
    ];
    const groups = retentionGroups(withIncomplete, {}, now);
    expect(groups.map((g) => g.serverName)).toEqual(['example.org', 'other.org', undefined]);
    expect(groups.flatMap((g) => g.forgotten)).toEqual([]);
  });
});

describeWithPeers(['minio'])('prune per server against MinIO (real engine)', () => {
  let minio: MinioPeer;
  let tar: Buffer;
  let ciphertext: Buffer;
  beforeAll(async () => {
    minio = await startMinio();
    tar = await buildTar([{ name: 'homeserver.yaml', content: 'x' }]);
    ciphertext = await encrypt(tar, 'p');
  });
  afterAll(async () => {
    await minio?.stop();
  });

  /** Stores complete backups `[id, server]` under `prefix` (their manifests' start times are now: ids order them). */
  async function put(prefix: string, backups: [string, string | undefined][]): Promise<void> {
    for (const [id, serverName] of backups) {
      await putBackup(minio.client, minio.bucket, prefix, id, tar, ciphertext, {
        files: 1,
        entries: 1,
        serverName,
      });
    }
  }

  test('two servers interleaved in one prefix: dry run and real run keep each server its newest N', async () => {
    const prefix = 'shared';
    // Interleaved; other.org's are the three newest.
    await put(prefix, [
      ['20261101000000', 'example.org'],
      ['20261102000000', 'other.org'],
      ['20261103000000', 'example.org'],
      ['20261104000000', 'example.org'],
      ['20261105000000', 'other.org'],
      ['20261106000000', 'other.org'],
      ['20261107000000', 'other.org'],
      ['20261100000000', undefined],
    ]);
    const engine = minioEngine(minio, prefix);
    const complete = async () =>
      (await engine.list()).backups
        .filter((b) => b.status === 'complete')
        .map((b) => [b.backupId, b.serverName ?? null]);
    try {
      const dry = await engine.prune({ keepLast: 3 }, { dryRun: true, workloadLeftovers: false });
      expect(dry).toMatchObject({
        dryRun: true,
        forgotten: ['20261102000000'],
        kept: 7,
        servers: [
          {
            serverName: 'example.org',
            kept: ['20261104000000', '20261103000000', '20261101000000'],
            forgotten: [],
          },
          {
            serverName: 'other.org',
            kept: ['20261107000000', '20261106000000', '20261105000000'],
            forgotten: ['20261102000000'],
          },
          { serverName: null, kept: ['20261100000000'], forgotten: [] },
        ],
      });
      expect(await complete()).toHaveLength(8);

      const real = await engine.prune({ keepLast: 2 }, { workloadLeftovers: false });
      expect(real.forgotten).toEqual(['20261101000000', '20261102000000', '20261105000000']);
      expect(real.kept).toBe(5);
      expect(real.servers?.map((s) => [s.serverName, s.kept, s.forgotten])).toEqual([
        ['example.org', ['20261104000000', '20261103000000'], ['20261101000000']],
        ['other.org', ['20261107000000', '20261106000000'], ['20261102000000', '20261105000000']],
        [null, ['20261100000000'], []],
      ]);
      expect(await complete()).toEqual([
        ['20261100000000', null],
        ['20261103000000', 'example.org'],
        ['20261104000000', 'example.org'],
        ['20261106000000', 'other.org'],
        ['20261107000000', 'other.org'],
      ]);

      // keep-last 1, and keep-days that no backup meets: each server keeps its newest.
      const later = new Date(Date.now() + 30 * day);
      await engine.prune({ keepLast: 1, keepDays: 1 }, { now: later, workloadLeftovers: false });
      expect(await complete()).toEqual([
        ['20261100000000', null],
        ['20261104000000', 'example.org'],
        ['20261107000000', 'other.org'],
      ]);
    } finally {
      engine.close();
    }
  });

  test('one server: the result is as before, with no servers field', async () => {
    const prefix = 'single';
    await put(prefix, [
      ['20261101000000', 'example.org'],
      ['20261102000000', 'example.org'],
      ['20261103000000', 'example.org'],
    ]);
    const engine = minioEngine(minio, prefix);
    try {
      const dry = await engine.prune({ keepLast: 1 }, { dryRun: true, workloadLeftovers: false });
      expect(dry).toEqual({
        dryRun: true,
        forgotten: ['20261101000000', '20261102000000'],
        incompleteRemoved: [],
        uploadsAborted: [],
        pendingRemoved: [],
        kept: 1,
        leftoversRemoved: false,
        staleRemoved: [],
      });
      const real = await engine.prune({ keepLast: 1 }, { workloadLeftovers: false });
      expect(real.forgotten).toEqual(['20261101000000', '20261102000000']);
      expect(real.servers).toBeUndefined();
      expect((await engine.list()).backups.map((b) => b.backupId)).toEqual(['20261103000000']);
    } finally {
      engine.close();
    }
  });
});
