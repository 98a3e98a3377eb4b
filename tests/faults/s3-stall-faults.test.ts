/**
 * S3 stops answering mid-transfer (the faulty proxy's 'stall-body': the
 * connection stays open, no byte moves): create, verify and restore through
 * the engine (local transport) against MinIO behind the proxy, with the stall
 * limit shortened to 3 s through the S3 settings. Each fails saying S3
 * stopped answering and what was being done, well within the test's 60 s
 * (before the timeouts, restore hung 304 s and create 423 s, until killed);
 * create leaves no upload behind, restore no staging dir and the live data
 * as it was.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { ListMultipartUploadsCommand } from '@aws-sdk/client-s3';
import { BackupEngine } from '../../src/backup/engine';
import { STAGING_PREFIX } from '../../src/backup/scripts/common';
import { parseS3Settings } from '../../src/s3/settings';
import { LocalWorkload } from '../../src/workload/local';
import { startFaultyProxy, type FaultyProxy } from '../support/faulty-proxy';
import {
  describeWithPeers,
  startMinio,
  tmpDir,
  type MinioPeer,
  type TmpDir,
} from '../support/peers';
import { makeSynapseTree, treeHash } from '../support/synapse-tree';
import { expected, observed } from './support/report';

const MiB = 1024 * 1024;
const PREFIX = 'stall';
const STALL_MS = 3000;

jest.setTimeout(60_000);

describeWithPeers(['minio'])('S3 stops answering mid-transfer', () => {
  let minio: MinioPeer;
  let s3: FaultyProxy;
  let data: TmpDir;
  let id: string;
  const passphrase = `stall ${randomBytes(12).toString('base64')}`;

  /** An engine through the proxy, giving up after 3 s without progress and 2 attempts. */
  function engine(): BackupEngine {
    return new BackupEngine({
      s3: parseS3Settings({
        bucket: minio.bucket,
        prefix: PREFIX,
        endpoint: s3.endpoint,
        uriStyle: 'path',
        accessKeyId: minio.accessKeyId,
        secretAccessKey: minio.secretAccessKey,
        maxAttempts: 2,
        stallTimeoutMs: STALL_MS,
      }),
      passphrase,
      workload: new LocalWorkload(),
      dataDir: data.path,
    });
  }

  beforeAll(async () => {
    minio = await startMinio();
    s3 = await startFaultyProxy(minio.endpoint);
    data = await tmpDir('synapse-stall');
    await makeSynapseTree(data.path, { mediaFiles: 4 });
    // 18 MiB: a two-part upload at 16 MiB parts, and an object far longer than the stall point.
    const blob = path.join(data.path, 'media_store/local_content/big/blob');
    await fsp.mkdir(path.dirname(blob), { recursive: true });
    await fsp.writeFile(blob, '');
    await fsp.truncate(blob, 18 * MiB);
    const e = engine();
    try {
      // An id of its own: the create case below makes one of the current second.
      id = (await e.create({ id: '20200101000000' })).backupId;
    } finally {
      e.close();
    }
  });
  afterAll(async () => {
    await s3?.close();
    await minio?.stop();
    await data?.cleanup();
  });
  afterEach(() => s3.clearRules());

  const stalled = (doing: string) =>
    new RegExp(
      `^cannot ${doing}: S3 at ${s3.endpoint.replace(/\./g, '\\.')} stopped answering for 3 s$`,
    );

  /** Runs `op` against a fresh engine; returns its error and the seconds it took to fail. */
  async function failing(op: (e: BackupEngine) => Promise<unknown>): Promise<[Error, number]> {
    const e = engine();
    const started = Date.now();
    try {
      await op(e);
    } catch (err) {
      return [err as Error, (Date.now() - started) / 1000];
    } finally {
      e.close();
    }
    throw new Error('expected the operation to fail');
  }

  /** Processes still working on the data dir (the create script has it as its $1). */
  function workloadLeft(): string[] {
    const left: string[] = [];
    for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
        if (cmd.includes(data.path)) left.push(`${pid} ${cmd}`);
      } catch {
        // gone
      }
    }
    return left;
  }

  test('S3 stall: every UploadPart stops after 1 MiB (create)', async () => {
    expected(
      'create fails within the test timeout naming the upload and "stopped answering for 3 s"; the upload is aborted; no tar left',
    );
    s3.addRule({ op: 'UploadPart', fault: { kind: 'stall-body', afterBytes: MiB } });
    const [err, seconds] = await failing((e) => e.create());
    observed(`create failed after ${seconds.toFixed(1)} s: ${err.message}`);
    expect(err.message).toMatch(stalled(`upload ${PREFIX}/\\d{14}\\.tar\\.enc`));
    const uploads = await minio.client.send(
      new ListMultipartUploadsCommand({ Bucket: minio.bucket }),
    );
    expect(uploads.Uploads ?? []).toEqual([]);
    expect(workloadLeft()).toEqual([]);
    observed('uploads: 0, no workload process left');
  });

  test('S3 stall: the object stops after 1 MiB (verify)', async () => {
    expected(
      'verify fails within the test timeout naming the download and "stopped answering for 3 s"',
    );
    s3.addRule({
      op: 'GetObject',
      key: /\.tar\.enc$/,
      fault: { kind: 'stall-body', afterBytes: MiB },
    });
    const [err, seconds] = await failing((e) => e.verify(id));
    observed(`verify failed after ${seconds.toFixed(1)} s: ${err.message}`);
    expect(err.message).toMatch(stalled(`download ${PREFIX}/${id}\\.tar\\.enc`));
  });

  test('S3 stall: the object stops after 1 MiB (restore)', async () => {
    expected(
      'restore fails within the test timeout naming the download and "stopped answering for 3 s"; no staging dir; the live data unchanged',
    );
    const before = await treeHash(data.path);
    s3.addRule({
      op: 'GetObject',
      key: /\.tar\.enc$/,
      fault: { kind: 'stall-body', afterBytes: MiB },
    });
    const [err, seconds] = await failing((e) => e.restore({ id }));
    observed(`restore failed after ${seconds.toFixed(1)} s: ${err.message}`);
    expect(err.message).toMatch(stalled(`download ${PREFIX}/${id}\\.tar\\.enc`));
    expect(readdirSync(data.path).filter((n) => n.startsWith(STAGING_PREFIX))).toEqual([]);
    expect(await treeHash(data.path)).toBe(before);
    expect(workloadLeft()).toEqual([]);
    observed('no staging dir, tree unchanged, no tar left');
  });
});
