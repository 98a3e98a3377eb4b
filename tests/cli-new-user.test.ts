/**
 * What a new user's try of the CLI met, through the built bundle against a real
 * MinIO: prune per server when servers share a prefix, decrypt into a reader that
 * stops early, where an unknown id was looked for, and errors that say what to do.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { buildTar, encrypt, putBackup } from './support/backups';
import {
  type MinioPeer,
  type TmpDir,
  describeWithPeers,
  startMinio,
  tmpDir,
} from './support/peers';
import { makeSynapseTree } from './support/synapse-tree';

const ROOT = path.resolve(__dirname, '..');
const BUNDLE = path.join(ROOT, 'build', 'synapse-backup.js');
const PASSPHRASE = `new user ${randomBytes(12).toString('hex')}`;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  stderr: string;
  /** stdout bytes read (all of them, or up to `readBytes`). */
  bytes: number;
}

describeWithPeers(['minio'])('synapse-backup for a new user (built bundle, real MinIO)', () => {
  let minio: MinioPeer;
  let src: TmpDir;

  beforeAll(async () => {
    if (!existsSync(BUNDLE))
      throw new Error('build/synapse-backup.js is missing: run npm run build');
    minio = await startMinio();
    src = await tmpDir('new-user-src');
    // Big enough that decrypt's output overflows a pipe's buffer (64 KiB).
    await makeSynapseTree(src.path, { bigFileBytes: 2 * 1024 * 1024 });
  });
  afterAll(async () => {
    await minio?.stop();
  });

  /**
   * Runs the bundle with the test's credentials (env overrides; undefined removes) and,
   * unless `s3: false`, --endpoint/--region/--uri-style/--bucket and `prefix`'s --prefix.
   * With `readBytes`, stdout is closed once that many bytes have come (`| head -c N`).
   */
  function cli(
    args: string[],
    options: {
      prefix?: string;
      env?: Record<string, string | undefined>;
      readBytes?: number;
    } = {},
  ): Promise<Run> {
    const env: Record<string, string | undefined> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!k.startsWith('AWS_') && !k.startsWith('SYNAPSE_BACKUP_')) env[k] = v;
    }
    Object.assign(
      env,
      {
        AWS_ACCESS_KEY_ID: minio.accessKeyId,
        AWS_SECRET_ACCESS_KEY: minio.secretAccessKey,
        AWS_EC2_METADATA_DISABLED: 'true',
        SYNAPSE_BACKUP_PASSPHRASE: PASSPHRASE,
      },
      options.env,
    );
    for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
    const s3 = ['--endpoint', minio.endpoint, '--region', 'us-east-1', '--uri-style', 'path'];
    const prefix = options.prefix === undefined ? [] : ['--prefix', options.prefix];
    const argv = [BUNDLE, ...args, ...s3, '--bucket', minio.bucket, ...prefix];
    return new Promise<Run>((resolve, reject) => {
      const child = spawn(process.execPath, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let bytes = 0;
      child.stdout.on('data', (b: Buffer) => {
        out.push(b);
        bytes += b.length;
        // The reader stops, as `head -c N` does once it has N bytes.
        if (options.readBytes !== undefined && bytes >= options.readBytes) child.stdout.destroy();
      });
      child.stderr.on('data', (b: Buffer) => err.push(b));
      const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
      child.once('error', reject);
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        const stdout = Buffer.concat(out);
        const stderr = Buffer.concat(err).toString('utf8');
        expect(stdout.includes(PASSPHRASE) || stderr.includes(PASSPHRASE)).toBe(false);
        expect(stderr.includes(minio.secretAccessKey)).toBe(false);
        resolve({ code, signal, out: stdout.toString('utf8'), stderr, bytes });
      });
    });
  }

  test('prune with two servers interleaved in one prefix: each keeps its newest N, and the output names the server of each id', async () => {
    const prefix = 'two-servers';
    const tar = await buildTar([{ name: 'homeserver.yaml', content: 'x' }]);
    const ciphertext = await encrypt(tar, 'p');
    // Manifests written now share a start time: ids order them. other.org's are the 3 newest:
    // a policy over the whole prefix would have removed every example.org backup.
    const backups: [string, string][] = [
      ['20261101000000', 'example.org'],
      ['20261102000000', 'other.org'],
      ['20261103000000', 'example.org'],
      ['20261104000000', 'example.org'],
      ['20261105000000', 'other.org'],
      ['20261106000000', 'other.org'],
      ['20261107000000', 'other.org'],
    ];
    for (const [id, serverName] of backups) {
      await putBackup(minio.client, minio.bucket, prefix, id, tar, ciphertext, {
        files: 1,
        entries: 1,
        serverName,
      });
    }
    const complete = async () => {
      const listed = JSON.parse((await cli(['list', '--json'], { prefix })).out) as {
        backups: { 'backup-id': string; 'server-name'?: string; status: string }[];
      };
      return listed.backups
        .filter((b) => b.status === 'complete')
        .map((b) => `${b['server-name']} ${b['backup-id']}`);
    };

    const dry = await cli(['prune', '--dry-run', '--keep-last', '3'], { prefix });
    expect(dry.stderr).toBe('');
    expect(dry.code).toBe(0);
    expect(dry.out.split('\n')).toEqual([
      'would remove by the retention policy (keep the 3 newest of each server): example.org: none; other.org: 20261102000000',
      'would remove incomplete backups older than 24 h: none',
      'would abort unfinished uploads older than 24 h: none',
      'would remove pending markers of runs older than 24 h: none',
      'complete backups kept: 6 (example.org: 20261104000000, 20261103000000, 20261101000000; other.org: 20261107000000, 20261106000000, 20261105000000)',
      '',
    ]);
    const dryJson = await cli(['prune', '--dry-run', '--keep-last', '3', '--json'], { prefix });
    expect(JSON.parse(dryJson.out)).toMatchObject({
      'dry-run': true,
      forgotten: ['20261102000000'],
      kept: 6,
      servers: [
        {
          'server-name': 'example.org',
          kept: ['20261104000000', '20261103000000', '20261101000000'],
          forgotten: [],
        },
        {
          'server-name': 'other.org',
          kept: ['20261107000000', '20261106000000', '20261105000000'],
          forgotten: ['20261102000000'],
        },
      ],
    });
    expect(await complete()).toHaveLength(7);

    const real = await cli(['prune', '--keep-last', '2', '--json'], { prefix });
    expect(real.code).toBe(0);
    expect(JSON.parse(real.out)).toMatchObject({
      'dry-run': false,
      forgotten: ['20261101000000', '20261102000000', '20261105000000'],
      kept: 4,
      servers: [
        { 'server-name': 'example.org', forgotten: ['20261101000000'] },
        { 'server-name': 'other.org', forgotten: ['20261102000000', '20261105000000'] },
      ],
    });
    expect(await complete()).toEqual([
      'example.org 20261103000000',
      'example.org 20261104000000',
      'other.org 20261106000000',
      'other.org 20261107000000',
    ]);

    // The run from the report: --keep-last 5 removes nothing of either server now.
    const five = await cli(['prune', '--keep-last', '5'], { prefix });
    expect(five.out.split('\n')[0]).toBe(
      'removed by the retention policy (keep the 5 newest of each server): example.org: none; other.org: none',
    );
    expect(await complete()).toHaveLength(4);
  });

  test('prune with one server prints what it printed before', async () => {
    const prefix = 'one-server';
    const tar = await buildTar([{ name: 'homeserver.yaml', content: 'x' }]);
    const ciphertext = await encrypt(tar, 'p');
    for (const id of ['20261101000000', '20261102000000']) {
      await putBackup(minio.client, minio.bucket, prefix, id, tar, ciphertext, {
        files: 1,
        entries: 1,
        serverName: 'example.org',
      });
    }
    const dry = await cli(['prune', '--dry-run', '--keep-last', '1'], { prefix });
    expect(dry.out).toBe(
      [
        'would remove by the retention policy (keep the 1 newest): 20261101000000',
        'would remove incomplete backups older than 24 h: none',
        'would abort unfinished uploads older than 24 h: none',
        'would remove pending markers of runs older than 24 h: none',
        'complete backups kept: 1',
        '',
      ].join('\n'),
    );
    const json = JSON.parse((await cli(['prune', '--keep-last', '1', '--json'], { prefix })).out);
    expect(json).toMatchObject({ forgotten: ['20261101000000'], kept: 1 });
    expect(json).not.toHaveProperty('servers');
  });

  test('decrypt into a reader that stops early exits 141 and prints nothing; read to the end it exits 0', async () => {
    const prefix = 'decrypt';
    const created = await cli(['create', '--data-dir', src.path, '--id', 'd1'], { prefix });
    expect(created.code).toBe(0);
    const cut = await cli(['decrypt', '--id', 'd1'], { prefix, readBytes: 100 });
    expect(cut.stderr).toBe('');
    expect(cut.code).toBe(141);
    const whole = await cli(['decrypt', '--id', 'd1'], { prefix });
    expect(whole.code).toBe(0);
    expect(whole.bytes).toBeGreaterThan(2 * 1024 * 1024);
    expect(whole.stderr).toMatch(/^decrypted backup d1: /);
  });

  test('an unknown id names the prefix it was looked for under, and that --prefix must match create', async () => {
    await cli(['create', '--data-dir', src.path, '--id', 'p1'], { prefix: 'x' });
    const under = await cli(['verify', '--id', 'p1'], { prefix: 'y' });
    expect(under.code).toBe(2);
    expect(under.stderr).toBe(
      `synapse-backup: error: backup p1 does not exist under prefix "y/" in bucket "${minio.bucket}"; run synapse-backup list to see the ids; --prefix must be the one the backup was created with (none if it was created without one)\n`,
    );
    const top = await cli(['delete', '--id', 'p1']);
    expect(top.code).toBe(2);
    expect(top.stderr).toBe(
      `synapse-backup: error: backup p1 does not exist at the top of bucket "${minio.bucket}" (no prefix); run synapse-backup list to see the ids; --prefix must be the one the backup was created with (none if it was created without one)\n`,
    );
    // list that finds nothing says where it looked; one that finds a backup says nothing more.
    const empty = await cli(['list'], { prefix: 'y' });
    expect(empty.code).toBe(0);
    expect(empty.stderr).toBe(
      `synapse-backup: no backups under prefix "y/" in bucket "${minio.bucket}"; if they were created with another --prefix (or none), pass that one\n`,
    );
    const found = await cli(['list'], { prefix: 'x' });
    expect(found.stderr).toBe('');
    expect(found.out).toContain('p1');
  });

  test('list without credentials or with a bad key says it could not list the backups', async () => {
    const bad = await cli(['list'], { prefix: 'x', env: { AWS_SECRET_ACCESS_KEY: 'not-the-key' } });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe(
      `synapse-backup: error: cannot list backups in bucket "${minio.bucket}" under prefix "x/": access to bucket "${minio.bucket}" was denied (HTTP 403 SignatureDoesNotMatch); check the access key "${minio.accessKeyId}" and its secret key and the bucket policy\n`,
    );
    const none = await cli(['list'], {
      prefix: 'x',
      env: {
        AWS_ACCESS_KEY_ID: undefined,
        AWS_SECRET_ACCESS_KEY: undefined,
        AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/credentials',
        AWS_CONFIG_FILE: '/nonexistent/config',
      },
    });
    expect(none.code).toBe(2);
    expect(none.stderr).toBe(
      `synapse-backup: error: cannot list backups in bucket "${minio.bucket}" under prefix "x/": no S3 credentials are set; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY\n`,
    );
  });

  test('a missing data dir and an unreadable passphrase file say what to do', async () => {
    const dir = await tmpDir('new-user-missing');
    const missing = path.join(dir.path, 'nonexistent');
    const create = await cli(['create', '--data-dir', missing]);
    expect(create.code).toBe(2);
    expect(create.stderr).toBe(
      `synapse-backup: error: the data directory ${missing} does not exist; pass --data-dir the directory that holds Synapse's homeserver.yaml\n`,
    );
    const file = path.join(dir.path, 'none.txt');
    const noFile = await cli(['verify', '--id', 'p1', '--passphrase-file', file], {
      env: { SYNAPSE_BACKUP_PASSPHRASE: undefined },
    });
    expect(noFile.code).toBe(2);
    expect(noFile.stderr).toBe(
      `synapse-backup: error: cannot read the passphrase file: ENOENT: no such file or directory, open '${file}'; pass --passphrase-file a file this user can read that holds the passphrase, or set SYNAPSE_BACKUP_PASSPHRASE instead\n`,
    );
  });
});
