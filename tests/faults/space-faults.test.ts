/**
 * Space for the database snapshot (root only: the data dir is a small tmpfs of
 * its own). A create on a volume with less free space than homeserver.db is
 * refused before the snapshot, naming what is needed and free, and the live
 * database stays writable; the create script run alone (as if the check had
 * raced with another writer) reports the snapshot's own reason: the volume
 * full, its free-space watch, python3 missing.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { BackupEngine } from '../../src/backup/engine';
import { SNAPSHOT_FAILED_EXIT, tarCreateCommand } from '../../src/backup/scripts';
import { selectionOf } from '../support/selection';
import { BackupError } from '../../src/errors';
import { formatBytes } from '../../src/format';
import { parseS3Settings } from '../../src/s3/settings';
import { LocalWorkload } from '../../src/workload/local';
import { describeWithPeers, startMinio, tmpDir, type MinioPeer } from '../support/peers';
import { makeSynapseTree, treeHash } from '../support/synapse-tree';
import { expected, observed } from './support/report';

const isRoot = process.getuid?.() === 0;
const MiB = 1024 * 1024;

/** Grows a SQLite database by about `mib` MiB of random rows (a table of its own). */
function grow(db: string, mib: number): void {
  const script = [
    'import sqlite3, sys',
    'c = sqlite3.connect(sys.argv[1])',
    "c.execute('CREATE TABLE IF NOT EXISTS filler (x BLOB)')",
    "c.execute('WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) INSERT INTO filler SELECT randomblob(1024) FROM n', (int(sys.argv[2]) * 1024,))",
    'c.commit()',
  ].join('\n');
  const run = spawnSync('python3', ['-c', script, db, String(mib)]);
  if (run.status !== 0) throw new Error(`cannot grow ${db}: ${run.stderr}`);
}

/** Writes a row into the live database, as Synapse would; returns python's stderr ('' when it worked). */
function liveWrite(db: string): string {
  const script =
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE IF NOT EXISTS live (x BLOB)'); c.execute('INSERT INTO live VALUES (randomblob(65536))'); c.commit()";
  const run = spawnSync('python3', ['-c', script, db]);
  return run.status === 0 ? '' : run.stderr.toString().trim().split('\n').pop()!;
}

/** Runs the create script alone in `dir` (stdout discarded); its status and stderr. */
async function runScript(dir: string, keep = 0, env: NodeJS.ProcessEnv = process.env) {
  const [cmd, ...args] = tarCreateCommand(dir, keep, await selectionOf(dir));
  const run = spawnSync(cmd!, args, { env, maxBuffer: 256 * MiB });
  return { status: run.status, stderr: run.stderr.toString() };
}

const describeAsRoot = isRoot ? describeWithPeers(['minio']) : describe.skip;

describeAsRoot('space for the database snapshot', () => {
  let minio: MinioPeer;
  let volume: string;

  beforeAll(async () => {
    minio = await startMinio();
    volume = (await tmpDir('synapse-small-volume')).path;
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', volume]);
    if (mounted.status !== 0) throw new Error(`cannot mount a tmpfs: ${mounted.stderr}`);
  });
  afterAll(async () => {
    if (volume) spawnSync('umount', [volume]);
    await minio?.stop();
  });

  /** A fresh data dir on the 8 MiB volume with a database of about `mib` MiB. */
  async function dataDir(mib: number): Promise<string> {
    for (const name of readdirSync(volume))
      await fsp.rm(path.join(volume, name), { recursive: true });
    const dir = path.join(volume, 'data');
    await makeSynapseTree(dir, { mediaFiles: 2 });
    grow(path.join(dir, 'homeserver.db'), mib);
    return dir;
  }

  const snapshotLeft = (dir: string) =>
    readdirSync(dir).filter((n) => n.startsWith('.synapse-backup'));

  test('space: the volume has less free space than homeserver.db (create)', async () => {
    expected(
      'create refused before the snapshot: "backing up needs N MiB free in DIR for the database snapshot, but only M MiB is free", advice remedy; no snapshot written; the live database stays writable; nothing in S3',
    );
    const dir = await dataDir(5);
    const before = await treeHash(dir);
    const engine = new BackupEngine({
      s3: parseS3Settings({
        bucket: minio.bucket,
        prefix: 'space',
        endpoint: minio.endpoint,
        uriStyle: 'path',
        accessKeyId: minio.accessKeyId,
        secretAccessKey: minio.secretAccessKey,
      }),
      passphrase: `space ${randomBytes(9).toString('base64')}`,
      workload: new LocalWorkload(),
      dataDir: dir,
    });
    let err: unknown;
    try {
      await engine.create();
    } catch (e) {
      err = e;
    } finally {
      engine.close();
    }
    expect(err).toBeInstanceOf(BackupError);
    const e = err as BackupError;
    observed(`create failed: ${e.message}`);
    expect(e.code).toBe('no-space');
    // The database, plus 10% of the 8 MiB volume (more than 10% of the database), against df.
    const db = (await fsp.stat(path.join(dir, 'homeserver.db'))).size;
    const fsInfo = await fsp.statfs(dir);
    const needed =
      db + Math.max(Math.ceil(db / 10), Math.floor((fsInfo.blocks * fsInfo.bsize) / 10));
    const free = Math.floor((fsInfo.bavail * fsInfo.bsize) / 1024) * 1024;
    expect(free).toBeLessThan(db);
    expect(e.message).toBe(
      `backing up needs ${formatBytes(needed)} free in ${dir} for the database snapshot, but only ${formatBytes(free)} is free`,
    );
    expect(e.remedy).toMatchObject({ kind: 'advice' });
    expect(snapshotLeft(dir)).toEqual([]);
    expect(await treeHash(dir)).toBe(before);
    expect(liveWrite(path.join(dir, 'homeserver.db'))).toBe('');
    expect((await engine.list().catch(() => ({ backups: [] }))).backups).toEqual([]);
    observed(
      'no snapshot written, tree unchanged, the live database took a write, no backup listed',
    );
  });

  test('space: the snapshot fills the volume anyway (the create script alone)', async () => {
    expected(
      'fails with its own reason: "...online backup API: database or disk is full"; no snapshot left',
    );
    const dir = await dataDir(5);
    const run = await runScript(dir);
    observed(`script exit ${run.status}: ${run.stderr.trim().split('\n').pop()}`);
    expect(run.status).toBe(SNAPSHOT_FAILED_EXIT);
    expect(run.stderr.trim().split('\n').pop()).toBe(
      "cannot snapshot homeserver.db with SQLite's online backup API: database or disk is full",
    );
    expect(snapshotLeft(dir)).toEqual([]);
    expect(liveWrite(path.join(dir, 'homeserver.db'))).toBe('');
  });

  test('space: free space falls below what the snapshot must leave', async () => {
    expected('the snapshot stops itself with that reason, not a claim that python3 is missing');
    const dir = await dataDir(1);
    const run = await runScript(dir, 64 * MiB);
    const last = run.stderr.trim().split('\n').pop();
    observed(`script exit ${run.status}: ${last}`);
    expect(run.status).toBe(SNAPSHOT_FAILED_EXIT);
    expect(last).toBe(
      "cannot snapshot homeserver.db with SQLite's online backup API: the free space in the data volume fell below 64 MiB: stopped to leave it to Synapse",
    );
    expect(snapshotLeft(dir)).toEqual([]);
  });

  test('space: no python3 in the workload', async () => {
    expected('fails saying the workload has no python3');
    const dir = await dataDir(1);
    // Every command of /usr/bin and /bin but python3.
    const bin = (await tmpDir('no-python')).path;
    for (const from of ['/usr/bin', '/bin']) {
      for (const name of readdirSync(from)) {
        if (name.startsWith('python')) continue;
        await fsp.symlink(path.join(from, name), path.join(bin, name)).catch(() => undefined);
      }
    }
    const run = await runScript(dir, 0, { PATH: bin });
    const last = run.stderr.trim().split('\n').pop();
    observed(`script exit ${run.status}: ${last}`);
    expect(run.status).toBe(SNAPSHOT_FAILED_EXIT);
    expect(last).toBe(
      "cannot snapshot homeserver.db: the workload has no python3 (SQLite's online backup API needs python3 with sqlite3)",
    );
  });
});
