/**
 * S3 faults during create-backup, through the charm's action (the built
 * dispatch) against a real MinIO behind a fault-injecting proxy: error replies,
 * resets and stalls on some requests (retried: the backup completes and
 * verifies), the same on every part, a manifest that cannot be written, and
 * MinIO killed mid-upload and restarted. (Settings that cannot work are in
 * s3-settings-faults.test.ts.)
 */
import {
  internalError,
  serviceUnavailable,
  slowDown,
  type Fault,
  type FaultRule,
  type S3Op,
} from '../support/faulty-proxy';
import { describeWithPeers } from '../support/peers';
import { FaultBed, PREFIX, until, within } from './support/bed';
import { expected, observed } from './support/report';

const MiB = 1024 * 1024;
const isTarCreate = (command: string[]) => command[2]?.includes('tar --create') ?? false;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeWithPeers(['minio', 'pebble'])('S3 faults during create-backup', () => {
  let bed: FaultBed;

  beforeAll(async () => {
    // 18 MiB of media: a two-part upload at the charm's 16 MiB part size.
    bed = await FaultBed.start({ blobBytes: 18 * MiB });
  });
  afterAll(async () => {
    await bed?.stop();
  });
  afterEach(() => {
    bed.s3.clearRules();
    bed.s3.setRefusing(false);
    bed.h.setConfig({ 'workload-exec': null });
  });

  /** "2 of 3 UploadPart requests answered 503" from the proxy's log. */
  function proxyLog(op: S3Op, how: string): string {
    const seen = bed.s3.log.filter((e) => e.op === op);
    const faulted = seen.filter((e) => e.fault);
    return `proxy: ${faulted.length} of ${seen.length} ${op} requests ${how}`;
  }

  async function transient(op: S3Op, fault: Fault, how: string, times: number) {
    expected('create-backup completes (the SDK retries); the backup verifies; nothing left over');
    const before = await bed.before();
    bed.s3.log.length = 0;
    bed.s3.addRule({ op, fault, times });
    const run = await bed.run('create-backup');
    const id = FaultBed.succeeded(run);
    expect(bed.s3.log.filter((e) => e.op === op && e.fault)).toHaveLength(times);
    observed(`backup ${id} complete`);
    observed(proxyLog(op, how));
    observed(await bed.verifyIntact(id));
    observed(await bed.afterFault(before, [run], [id]));
  }

  test('S3: UploadPart answered 500 InternalError once', async () => {
    await transient('UploadPart', internalError(), 'answered 500 InternalError', 1);
  });

  test('S3: UploadPart answered 503 SlowDown twice', async () => {
    await transient('UploadPart', slowDown(), 'answered 503 SlowDown', 2);
  });

  test('S3: UploadPart connection reset after 1 MiB, once', async () => {
    await transient('UploadPart', { kind: 'reset', afterBytes: MiB }, 'reset after 1 MiB', 1);
  });

  test('S3: UploadPart stalled for 3 s', async () => {
    await transient('UploadPart', { kind: 'stall', release: () => sleep(3000) }, 'held for 3 s', 1);
  });

  test('S3: CompleteMultipartUpload answered 503 ServiceUnavailable once', async () => {
    await transient(
      'CompleteMultipartUpload',
      serviceUnavailable(),
      'answered 503 ServiceUnavailable',
      1,
    );
  });

  /**
   * A fault on every matching request. With `holdTar`, tar's output is held
   * (17 MiB in: the first part is being uploaded) until the upload has given
   * up and is being aborted: the failure then reaches the archive side of the
   * pipeline while tar is still running, and the message must still name S3.
   */
  async function persistent(
    rule: FaultRule,
    message: RegExp,
    expectText: string,
    holdTar = false,
  ): Promise<string> {
    expected(expectText);
    const before = await bed.before();
    bed.s3.log.length = 0;
    // Holding tar's output in the Pebble proxy needs it to come through Pebble's websocket.
    bed.h.setConfig({ 'workload-exec': holdTar ? 'pebble-relay' : null });
    const hold = holdTar ? bed.pebbleProxy.holdOutput(isTarCreate, 17 * MiB) : undefined;
    // The first attempt waits for tar to be held, so that the upload cannot give up first.
    if (hold)
      bed.s3.addRule({ ...rule, fault: { kind: 'stall', release: hold.reached }, times: 1 });
    bed.s3.addRule(rule);
    const run = await bed.run('create-backup', {}, async () => {
      if (!hold) return;
      await within('tar to produce 17 MiB', hold.reached).catch((err: unknown) => {
        hold.release();
        throw err;
      });
      await until('the upload is aborted', () =>
        bed.s3.log.some((e) => e.op === 'AbortMultipartUpload'),
      );
      observed('tar held mid-stream until the upload gave up');
      hold.release();
    });
    const msg = FaultBed.failure(run);
    observed(`action failed: ${msg}`);
    expect(msg).toMatch(message);
    const ops = Array.isArray(rule.op) ? rule.op : [rule.op];
    observed(proxyLog(ops[0], 'faulted'));
    observed(await bed.afterFault(before, [run]));
    return msg;
  }

  test('S3: every UploadPart answered 503 ServiceUnavailable', async () => {
    await persistent(
      { op: 'UploadPart', fault: serviceUnavailable() },
      new RegExp(
        `^cannot upload ${PREFIX}/\\d{14}\\.tar\\.enc: HTTP 503 ServiceUnavailable The service is unavailable\\. Please retry\\.$`,
      ),
      'fails naming the upload and "503 ServiceUnavailable" (not tar, which is killed); the multipart upload is aborted',
      true,
    );
  });

  test('S3: every UploadPart connection reset after 1 MiB', async () => {
    await persistent(
      { op: 'UploadPart', fault: { kind: 'reset', afterBytes: MiB } },
      new RegExp(
        `^cannot upload ${PREFIX}/\\d{14}\\.tar\\.enc: the S3 endpoint ${bed.s3.endpoint.replace(/\./g, '\\.')} is unreachable \\((ECONNRESET|EPIPE|socket hang up)\\); set s3-endpoint to the right URL, or fix the network$`,
      ),
      'fails naming the endpoint and ECONNRESET (not tar, which is killed); the multipart upload is aborted',
      true,
    );
  });

  test('S3: the manifest cannot be written (500 on every PUT of it)', async () => {
    const msg = await persistent(
      { op: 'PutObject', key: /\.manifest\.json$/, fault: internalError() },
      new RegExp(
        `^cannot write ${PREFIX}/\\d{14}\\.manifest\\.json: HTTP 500 InternalError We encountered an internal error\\. Please try again\\.$`,
      ),
      'fails naming the manifest; the uploaded object is deleted, so nothing looks complete',
    );
    const id = /(\d{14})\.manifest/.exec(msg)![1];
    expect(await bed.objectKeys()).not.toContain(`${PREFIX}/${id}.tar.enc`);
    observed(`object ${id}.tar.enc removed`);
  });

  /**
   * Holds the second part at the proxy, kills MinIO (kill -9) with the first
   * part stored and the upload in progress, resets the held part's connection
   * as the dying server would, and starts MinIO again on the same data.
   * Requests that arrive meanwhile wait at the proxy (a server restarting).
   */
  async function killMinioMidUpload(afterRestart = () => undefined): Promise<string> {
    let releaseHeld!: () => void;
    bed.s3.addRule({
      op: 'UploadPart',
      skip: 1,
      times: 1,
      fault: { kind: 'stall', release: new Promise<void>((r) => (releaseHeld = r)) },
    });
    const key = await bed.waitForUpload();
    await until('a part is stored', () =>
      bed.s3.log.some((e) => e.op === 'UploadPart' && e.status === 200),
    );
    await until('a part is held', () => bed.s3.stalled() > 0);
    let releaseAll!: () => void;
    bed.s3.clearRules();
    bed.s3.addRule({
      op: ['UploadPart', 'CompleteMultipartUpload', 'AbortMultipartUpload', 'ListMultipartUploads'],
      fault: { kind: 'stall', release: new Promise<void>((r) => (releaseAll = r)) },
    });
    bed.s3.setRefusing(true); // the held part's connection dies with the server
    bed.s3.setRefusing(false);
    releaseHeld();
    await bed.minio.restart();
    bed.s3.clearRules();
    afterRestart();
    releaseAll();
    return key;
  }

  test('S3: MinIO killed mid-upload and restarted', async () => {
    expected(
      'the part in flight is retried against the restarted MinIO: create-backup completes and the backup verifies',
    );
    const before = await bed.before();
    bed.s3.log.length = 0;
    let key = '';
    const run = await bed.run('create-backup', {}, async () => {
      key = await killMinioMidUpload();
    });
    const id = FaultBed.succeeded(run);
    expect(key).toBe(`${PREFIX}/${id}.tar.enc`);
    observed(`MinIO killed with one part of ${key} stored and the other in flight, then restarted`);
    observed(`backup ${id} complete`);
    observed(await bed.verifyIntact(id));
    observed(await bed.afterFault(before, [run], [id]));
  });

  test('S3: MinIO restarted mid-upload, then refuses parts and aborts', async () => {
    expected(
      'fails naming the refusal; the cleanup finds the upload by its key (after a restart MinIO lists it only that way) and aborts it',
    );
    const before = await bed.before();
    bed.s3.log.length = 0;
    let key = '';
    const run = await bed.run('create-backup', {}, async () => {
      // The restarted server's drive is full, and its first aborts fail too (SDK retries included).
      key = await killMinioMidUpload(() => {
        bed.s3.addRule({
          op: 'UploadPart',
          fault: {
            kind: 'error',
            status: 507,
            code: 'XMinioStorageFull',
            message: 'Storage backend has reached its minimum free drive threshold.',
          },
        });
        bed.s3.addRule({ op: 'AbortMultipartUpload', fault: internalError(), times: 5 });
      });
    });
    const msg = FaultBed.failure(run);
    observed(`action failed: ${msg}`);
    expect(msg).toBe(
      `cannot upload ${key}: HTTP 507 XMinioStorageFull Storage backend has reached its minimum free drive threshold.`,
    );
    const aborts = bed.s3.log.filter((e) => e.op === 'AbortMultipartUpload');
    observed(
      `proxy: ${aborts.filter((e) => e.fault).length} of ${aborts.length} AbortMultipartUpload answered 500`,
    );
    expect(aborts.filter((e) => !e.fault && e.status === 204)).toHaveLength(1);
    observed(await bed.afterFault(before, [run]));
  });
  test('S3: MinIO restarted mid-upload, then the cleanup fails too', async () => {
    expected(
      'create-backup fails, its cleanup too; the upload is invisible to a listing of the bucket, but its pending marker leads prune-backups to it by its exact key, which aborts it',
    );
    const before = await bed.before();
    bed.s3.log.length = 0;
    let key = '';
    const run = await bed.run('create-backup', {}, async () => {
      key = await killMinioMidUpload(() => {
        bed.s3.addRule({ op: 'UploadPart', fault: internalError() });
        bed.s3.addRule({ op: 'AbortMultipartUpload', fault: internalError() });
      });
    });
    const msg = FaultBed.failure(run);
    observed(`action failed: ${msg}`);
    expect(msg).toContain('; cleanup also failed: ');
    bed.s3.clearRules();
    const id = /(\d{14})\.tar\.enc/.exec(key)![1]!;
    expect(await bed.objectKeys()).toContain(`${PREFIX}/${id}.pending`);
    const list = await bed.run('list-backups');
    expect(list.result.results.formatted as string).not.toContain('unfinished upload');
    observed(`list-backups: no unfinished upload listed; ${id}.pending left`);

    const prune = await bed.run('prune-backups', { 'stale-hours': 0 });
    expect(prune.result.failed).toBe(false);
    expect(prune.result.results['uploads-aborted']).toBe(key);
    expect(prune.result.results['pending-removed']).toBe(id);
    observed(`prune-backups: uploads-aborted=${key}, pending-removed=${id}`);
    observed(await bed.afterFault(before, [run, list, prune]));
  });

  test('S3: manifest reads answered 503 SlowDown during prune-backups', async () => {
    expected('prune-backups fails naming the manifest read and 503 SlowDown; no backup is deleted');
    FaultBed.succeeded(await bed.run('create-backup'));
    const before = await bed.before();
    const keys = await bed.objectKeys();
    bed.h.setConfig({ 'backup-retention': 'keep-last=10' });
    bed.s3.log.length = 0;
    bed.s3.addRule({ op: 'GetObject', key: /\.manifest\.json$/, fault: slowDown() });
    const run = await bed.run('prune-backups', { 'stale-hours': 0 });
    bed.h.setConfig({ 'backup-retention': null });
    const msg = FaultBed.failure(run);
    observed(`action failed: ${msg}`);
    expect(msg).toMatch(
      /cannot tell whether backup \d{14} is complete: cannot download synapse\/\d{14}\.manifest\.json: HTTP 503 SlowDown/,
    );
    expect(bed.s3.log.filter((e) => e.op === 'DeleteObject')).toEqual([]);
    expect(await bed.objectKeys()).toEqual(keys);
    observed(`${before.complete.length} complete backups, all kept; no DeleteObject`);
    observed(await bed.afterFault(before, [run]));
  });
});
