/**
 * S3 settings that cannot work, through the charm's actions: wrong
 * credentials, a missing bucket, an unreachable endpoint, TLS with a CA the
 * charm does not know and with the right s3-ca-chain; and the text of the
 * engine's own exceptions for such failures, which must hold no secret.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { CreateBucketCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { BackupEngine } from '../../src/backup/engine';
import { BackupError } from '../../src/errors';
import { parseS3Settings, type S3SettingsInput } from '../../src/s3/settings';
import { LocalWorkload } from '../../src/workload/local';
import { internalError } from '../support/faulty-proxy';
import { describeWithPeers, freePort, startMinio, tmpDir, type MinioPeer } from '../support/peers';
import { makeSynapseTree } from '../support/synapse-tree';
import { errorText, FaultBed, PREFIX } from './support/bed';
import { expected, observed } from './support/report';

describeWithPeers(['minio', 'pebble'])('S3 settings that cannot work', () => {
  let bed: FaultBed;

  beforeAll(async () => {
    bed = await FaultBed.start();
  });
  afterAll(async () => {
    await bed?.stop();
  });
  afterEach(() => {
    bed.s3.clearRules();
  });

  test('S3: wrong credentials (create, list and restore)', async () => {
    expected('each action fails with HTTP 403, naming the bucket and the credentials to check');
    const before = await bed.before();
    const wrong = randomBytes(20).toString('hex');
    bed.extraSecrets.push(wrong);
    bed.setCredentials(bed.minio.accessKeyId, wrong);
    try {
      const runs = [
        await bed.run('create-backup'),
        await bed.run('list-backups'),
        await bed.run('restore-backup', { 'backup-id': '20250101000000' }),
      ];
      for (const run of runs) {
        // The access key came from the same Juju secret, so the charm redacts it too.
        expect(FaultBed.failure(run)).toMatch(
          new RegExp(
            `^cannot .*: access to bucket "${bed.minio.bucket}" was denied \\(HTTP 403( \\w+)?\\); check the access key "(\\*\\*\\*|${bed.minio.accessKeyId})" and its secret key and the bucket policy$`,
          ),
        );
      }
      observed(`create-backup failed: ${FaultBed.failure(runs[0])}`);
      observed(`list-backups failed: ${FaultBed.failure(runs[1])}`);
      observed(`restore-backup failed: ${FaultBed.failure(runs[2])}`);
      bed.setCredentials(bed.minio.accessKeyId, bed.minio.secretAccessKey);
      observed(await bed.afterFault(before, runs));
    } finally {
      bed.setCredentials(bed.minio.accessKeyId, bed.minio.secretAccessKey);
    }
  });

  test('secrets: exception text of in-process failures', async () => {
    expected(
      'the errors the engine throws (message, stack, cause chain with the SDK errors) hold neither the passphrase nor the secret key',
    );
    const wrongKey = randomBytes(20).toString('hex');
    const wrongPassphrase = `wrong ${randomBytes(8).toString('hex')}`;
    const source = await tmpDir('synapse-source');
    await makeSynapseTree(source.path, { mediaFiles: 2 });
    const good = bed.engine(source.path);
    await good.create({ id: 'secrets-probe' });
    good.close();
    const engine = (s3: Partial<S3SettingsInput>, passphrase = bed.passphrase) =>
      new BackupEngine({
        s3: parseS3Settings({
          bucket: bed.minio.bucket,
          prefix: PREFIX,
          endpoint: bed.s3.endpoint,
          uriStyle: 'path',
          accessKeyId: bed.minio.accessKeyId,
          secretAccessKey: bed.minio.secretAccessKey,
          ...s3,
        }),
        passphrase,
        workload: new LocalWorkload(),
        dataDir: source.path,
      });
    const cases: [string, BackupEngine, (e: BackupEngine) => Promise<unknown>][] = [
      ['create, wrong secret key', engine({ secretAccessKey: wrongKey }), (e) => e.create()],
      ['list, wrong secret key', engine({ secretAccessKey: wrongKey }), (e) => e.list()],
      ['verify, wrong passphrase', engine({}, wrongPassphrase), (e) => e.verify('secrets-probe')],
      [
        'restore, wrong passphrase',
        engine({}, wrongPassphrase),
        (e) => e.restore({ id: 'secrets-probe' }),
      ],
      [
        'create, every part refused',
        engine({}),
        async (e) => {
          bed.s3.addRule({ op: ['PutObject', 'UploadPart'], fault: internalError() });
          return e.create();
        },
      ],
    ];
    const secrets = [bed.passphrase, bed.minio.secretAccessKey, wrongKey, wrongPassphrase];
    for (const [label, e, op] of cases) {
      const err = await op(e).then(
        () => undefined,
        (x: unknown) => x,
      );
      e.close();
      expect(err).toBeInstanceOf(BackupError);
      const text = errorText(err);
      for (const secret of secrets) expect(text).not.toContain(secret);
      observed(`${label}: ${(err as BackupError).code} (${text.length} characters inspected)`);
    }
    bed.s3.clearRules();
    const cleanup = bed.engine();
    await cleanup.delete('secrets-probe');
    cleanup.close();
  });

  test('S3: bucket missing', async () => {
    expected('fails saying the bucket does not exist at the endpoint');
    const before = await bed.before();
    bed.h.setConfig({ 's3-bucket': 'no-such-bucket' });
    try {
      const run = await bed.run('create-backup');
      const msg = FaultBed.failure(run);
      observed(`action failed: ${msg}`);
      // The first request of a create is its id's pending marker (src/backup/pending.ts).
      expect(msg).toMatch(
        new RegExp(
          `^cannot write ${PREFIX}/\\d{14}\\.pending: bucket "no-such-bucket" does not exist at ${bed.s3.endpoint.replace(/\./g, '\\.')}; set s3-bucket to an existing bucket, or create it$`,
        ),
      );
      observed(await bed.afterFault(before, [run]));
    } finally {
      bed.h.setConfig({ 's3-bucket': bed.minio.bucket });
    }
  });

  test('S3: endpoint unreachable', async () => {
    expected('fails saying the endpoint is unreachable (ECONNREFUSED)');
    const before = await bed.before();
    const closed = `http://127.0.0.1:${await freePort()}`;
    bed.h.setConfig({ 's3-endpoint': closed });
    try {
      const run = await bed.run('create-backup');
      const msg = FaultBed.failure(run);
      observed(`action failed: ${msg}`);
      expect(msg).toMatch(
        new RegExp(
          `^cannot \\w+ ${PREFIX}/\\d{14}\\.(tar\\.enc|manifest\\.json|pending)|cannot list in-progress uploads`,
        ),
      );
      expect(msg).toContain(
        `the S3 endpoint ${closed} is unreachable (ECONNREFUSED); set s3-endpoint to the right URL, or fix the network`,
      );
      observed(await bed.afterFault(before, [run]));
    } finally {
      bed.h.setConfig({ 's3-endpoint': bed.s3.endpoint });
    }
  });

  test('S3: host-style addressing to a store without virtual-host support', async () => {
    expected(
      'with s3-uri-style=host, s3-path=demo and a bucket demo, create-backup fails naming the addressing and s3-uri-style=path; nothing is left in bucket demo',
    );
    // <bucket>.localhost resolves (tests/support/wildcard-localhost.cjs): MinIO, which
    // ignores the bucket in the Host, then reads the path's first part as the bucket.
    const endpoint = bed.minio.endpoint.replace('127.0.0.1', 'localhost');
    const preload = path.join(__dirname, '..', 'support', 'wildcard-localhost.cjs');
    await bed.minio.client.send(new CreateBucketCommand({ Bucket: 'demo' }));
    const before = await bed.before();
    bed.h.setConfig({ 's3-endpoint': endpoint, 's3-uri-style': 'host', 's3-path': 'demo' });
    try {
      const run = await bed.run('create-backup', {}, undefined, {
        NODE_OPTIONS: `--require ${preload}`,
      });
      const msg = FaultBed.failure(run);
      observed(`action failed: ${msg}`);
      expect(msg).toMatch(
        new RegExp(
          `^demo/(\\d{14})\\.pending was written, but a listing of bucket "${bed.minio.bucket}" does not hold it: the write went elsewhere\\. .* it most likely went to bucket "demo" as "\\1\\.pending"; nothing else of backup \\1 was written, and it was removed again; set s3-uri-style=path unless the store serves virtual-host names$`,
        ),
      );
      const demo = await bed.minio.client.send(new ListObjectsV2Command({ Bucket: 'demo' }));
      expect(demo.Contents ?? []).toEqual([]);
      observed('bucket demo: empty');
      bed.h.setConfig({
        's3-endpoint': bed.s3.endpoint,
        's3-uri-style': 'path',
        's3-path': PREFIX,
      });
      observed(await bed.afterFault(before, [run]));
    } finally {
      bed.h.setConfig({
        's3-endpoint': bed.s3.endpoint,
        's3-uri-style': 'path',
        's3-path': PREFIX,
      });
    }
  });

  describe('TLS', () => {
    let tls: MinioPeer;
    beforeAll(async () => {
      tls = await startMinio({ tls: true });
    });
    afterAll(async () => {
      await tls?.stop();
    });

    async function useTls(run: () => Promise<void>): Promise<void> {
      bed.setCredentials(tls.accessKeyId, tls.secretAccessKey);
      bed.extraSecrets.push(tls.secretAccessKey);
      bed.h.setConfig({ 's3-endpoint': tls.endpoint, 's3-bucket': tls.bucket });
      try {
        await run();
      } finally {
        bed.setCredentials(bed.minio.accessKeyId, bed.minio.secretAccessKey);
        bed.h.setConfig({
          's3-endpoint': bed.s3.endpoint,
          's3-bucket': bed.minio.bucket,
          's3-ca-chain': null,
        });
      }
    }

    test('S3: TLS with a CA the charm does not know', async () => {
      expected('fails saying the certificate is not trusted and to set s3-ca-chain');
      await useTls(async () => {
        const before = await bed.before(tls);
        const run = await bed.run('create-backup');
        const msg = FaultBed.failure(run);
        observed(`action failed: ${msg}`);
        expect(msg).toMatch(
          new RegExp(
            `: the TLS certificate of ${tls.endpoint.replace(/\./g, '\\.')} is not trusted \\(.+\\); set s3-ca-chain to the CA that signed it$`,
          ),
        );
        observed(await bed.afterFault(before, [run], [], tls));
      });
    });

    test('S3: TLS with the right s3-ca-chain', async () => {
      expected('create-backup completes over TLS; the backup verifies');
      await useTls(async () => {
        bed.h.setConfig({ 's3-ca-chain': Buffer.from(tls.caCert!).toString('base64') });
        const before = await bed.before(tls);
        const run = await bed.run('create-backup');
        const id = FaultBed.succeeded(run);
        observed(`backup ${id} complete over TLS`);
        observed(await bed.verifyIntact(id, tls));
        observed(await bed.afterFault(before, [run], [id], tls));
      });
    });
  });
});
