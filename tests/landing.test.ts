/**
 * Issue #15, case 3: never land elsewhere. With host-style addressing, a store
 * without virtual-host support (MinIO without MINIO_DOMAIN, as here) reached
 * by a name whose subdomains resolve takes `PUT http://<bucket>.<host>/demo/<id>.tar.enc`
 * as bucket `demo`, key `<id>.tar.enc`. Before: create succeeded and list of
 * the configured bucket found nothing. Now create confirms with a listing of
 * the configured bucket (src/s3/landing.ts) and fails naming the addressing.
 *
 * `<bucket>.localhost` resolves through tests/support/wildcard-localhost.cjs,
 * preloaded into the CLI: offline, and only the name lookup changes.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
} from '@aws-sdk/client-s3';
import { BackupError } from '../src/errors';
import { parseS3Settings } from '../src/s3/settings';
import { ObjectStore } from '../src/s3/store';
import { MemoryStore } from './support/memory-store';
import { memoryEngine, memorySynapseDir } from './support/memory-engine';
import { type MinioPeer, describeWithPeers, startMinio, tmpDir } from './support/peers';
import { makeSynapseTree } from './support/synapse-tree';

const ROOT = path.resolve(__dirname, '..');
const BUNDLE = path.join(ROOT, 'build', 'synapse-backup.js');
const WILDCARD_LOCALHOST = path.join(__dirname, 'support', 'wildcard-localhost.cjs');
const PASSPHRASE = `landing ${randomBytes(8).toString('hex')}`;

interface Run {
  code: number | null;
  out: string;
  err: string;
}

/** Runs `node <args>` with the wildcard-localhost preload and `env`. */
function node(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        NODE_OPTIONS: `--require ${WILDCARD_LOCALHOST}`,
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, out, err }));
  });
}

describeWithPeers(['minio'])('never land elsewhere (real MinIO, host-style addressing)', () => {
  let minio: MinioPeer;
  let hostEndpoint: string;
  let env: Record<string, string>;

  beforeAll(async () => {
    if (!existsSync(BUNDLE)) throw new Error('build/synapse-backup.js is missing: npm run build');
    minio = await startMinio();
    hostEndpoint = minio.endpoint.replace('127.0.0.1', 'localhost');
    await minio.client.send(new CreateBucketCommand({ Bucket: 'demo' }));
    env = {
      AWS_ACCESS_KEY_ID: minio.accessKeyId,
      AWS_SECRET_ACCESS_KEY: minio.secretAccessKey,
      SYNAPSE_BACKUP_PASSPHRASE: PASSPHRASE,
    };
  });
  afterAll(async () => {
    await minio?.stop();
  });

  const keysOf = async (bucket: string, prefix?: string) =>
    (
      (await minio.client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix })))
        .Contents ?? []
    ).map((o) => o.Key);
  const uploadsOf = async (bucket: string) =>
    (await minio.client.send(new ListMultipartUploadsCommand({ Bucket: bucket }))).Uploads ?? [];

  test('the rig reproduces the misroute: a host-style PutObject of demo/x lands in bucket demo as x', async () => {
    const script = `
      const { S3Client, PutObjectCommand, HeadObjectCommand } = require(${JSON.stringify(require.resolve('@aws-sdk/client-s3'))});
      const s3 = new S3Client({ endpoint: ${JSON.stringify(hostEndpoint)}, region: 'us-east-1',
        credentials: { accessKeyId: process.env.AWS_ACCESS_KEY_ID, secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY } });
      (async () => {
        await s3.send(new PutObjectCommand({ Bucket: ${JSON.stringify(minio.bucket)}, Key: 'demo/probe', Body: 'probe' }));
        const head = await s3.send(new HeadObjectCommand({ Bucket: ${JSON.stringify(minio.bucket)}, Key: 'demo/probe' }));
        console.log('head', head.ContentLength);
      })().catch((e) => { console.error(e.name, e.message); process.exit(1); });`;
    const run = await node(['-e', script], env);
    expect(run.err).toBe('');
    // The misrouted HEAD "finds" it: only a listing can tell.
    expect(run.out).toBe('head 5\n');
    expect(await keysOf('demo')).toEqual(['probe']);
    expect(await keysOf(minio.bucket)).toEqual([]);
    await minio.client.send(new DeleteObjectCommand({ Bucket: 'demo', Key: 'probe' }));
  });

  test('CLI create with --uri-style host and --prefix demo: fails naming the addressing; nothing left in bucket demo', async () => {
    const data = await tmpDir('landing-data');
    await makeSynapseTree(data.path, { mediaFiles: 3 });
    const flags = ['--endpoint', hostEndpoint, '--region', 'us-east-1', '--uri-style', 'host'];
    const s3 = [...flags, '--bucket', minio.bucket, '--prefix', 'demo'];
    const run = await node(
      [BUNDLE, 'create', '--data-dir', data.path, '--id', 'misrouted', ...s3],
      env,
    );
    expect(run.out).toBe('');
    expect(run.code).toBe(1);
    expect(run.err).toBe(
      `synapse-backup: error: demo/misrouted.pending was written, but a listing of bucket "${minio.bucket}" does not hold it: the write went elsewhere. Requests go to ${hostEndpoint} in host style (the bucket in the host name, ${minio.bucket}.${new URL(hostEndpoint).host}), and a store without virtual-host support takes the first part of the path as the bucket instead: it most likely went to bucket "demo" as "misrouted.pending"; nothing else of backup misrouted was written, and it was removed again; pass --uri-style path unless the store serves virtual-host names\n`,
    );
    expect(await keysOf('demo')).toEqual([]);
    expect(await uploadsOf('demo')).toEqual([]);
    expect(await keysOf(minio.bucket)).toEqual([]);

    // The fix the message names: the same command with --uri-style path is complete and listed.
    const pathStyle = s3.map((a) => (a === 'host' ? 'path' : a));
    const fixed = await node(
      [BUNDLE, 'create', '--data-dir', data.path, '--id', 'routed', ...pathStyle],
      env,
    );
    expect(fixed.err).toBe('');
    expect(fixed.code).toBe(0);
    const listed = await node([BUNDLE, 'list', '--json', ...pathStyle], env);
    expect(JSON.parse(listed.out).backups).toEqual([
      expect.objectContaining({ 'backup-id': 'routed', status: 'complete' }),
    ]);
    expect(await keysOf('demo')).toEqual([]);
  });

  test('confirmListed: the exact key with its size; another size, or a key that only prefixes another, is refused', async () => {
    const store = new ObjectStore(
      parseS3Settings({
        bucket: minio.bucket,
        prefix: 'confirm',
        endpoint: minio.endpoint,
        uriStyle: 'path',
        accessKeyId: minio.accessKeyId,
        secretAccessKey: minio.secretAccessKey,
      }),
    );
    try {
      await store.putText('confirm/a.tar.enc.bak', 'twelve bytes', 'text/plain');
      await store.putText('confirm/a.tar.enc', 'seven b', 'text/plain');
      await expect(store.confirmListed('confirm/a.tar.enc', 7)).resolves.toBeUndefined();
      await expect(store.confirmListed('confirm/a.tar.enc', 8)).rejects.toMatchObject({
        code: 'corrupt',
        message: `confirm/a.tar.enc holds 7 bytes in bucket "${minio.bucket}", not the 8 just written: something else changed it`,
      });
      await expect(store.confirmListed('confirm/a.tar', 7)).rejects.toMatchObject({
        code: 'corrupt',
        message: `confirm/a.tar was written, but a listing of bucket "${minio.bucket}" does not hold it: something else removed it at once, or the store does not list what it stores`,
      });
    } finally {
      store.close();
    }
  });
});

describe('never land elsewhere: the object is confirmed before the manifest (in-memory store)', () => {
  test('create lists its marker, then its object with its size; a failure leaves nothing and writes no manifest', async () => {
    const data = await memorySynapseDir('landing-logic');
    const store = new MemoryStore();
    await memoryEngine(store, data).create({ id: 'ok' });
    const confirmed = store.calls.filter((c) => c.method === 'confirmListed').map((c) => c.key);
    expect(confirmed).toEqual(['backups/ok.pending', 'backups/ok.tar.enc']);

    const misrouted = new MemoryStore();
    misrouted.fail('confirmListed', {
      key: 'backups/lost.tar.enc',
      error: new BackupError('misrouted', 'backups/lost.tar.enc was written elsewhere'),
    });
    await expect(memoryEngine(misrouted, data).create({ id: 'lost' })).rejects.toMatchObject({
      code: 'misrouted',
      message: 'backups/lost.tar.enc was written elsewhere',
    });
    // Removed through the same store (which reaches where it went), the marker last.
    expect(misrouted.calls.filter((c) => c.key === 'backups/lost.manifest.json')).toEqual([
      { method: 'head', key: 'backups/lost.manifest.json' },
    ]);
    expect(misrouted.calls.slice(-2)).toEqual([
      { method: 'removeFailedUpload', key: 'backups/lost.tar.enc' },
      { method: 'delete', key: 'backups/lost.pending' },
    ]);
    expect(misrouted.keys()).toEqual([]);
  });
});
