/**
 * The CLI's contract, through the built bundle (`node build/synapse-backup.js`, what `npm test`
 * builds first) against a real MinIO: output formats, exit codes, one-line errors, and that
 * no run ever prints the passphrase or the S3 secret key.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, promises as fsp, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import {
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
} from '@aws-sdk/client-s3';
import { buildTar, encrypt, putBackup } from './support/backups';
import {
  type MinioPeer,
  type TmpDir,
  describeWithPeers,
  startMinio,
  tmpDir,
} from './support/peers';
import { packageLayout } from './support/selection';
import {
  GENERATED_PATH_KEYS,
  inspectSqliteDb,
  makeGeneratedSynapseTree,
  makeSynapseTree,
  snapshotTree,
  withoutSkipped,
} from './support/synapse-tree';

const ROOT = path.resolve(__dirname, '..');
const BUNDLE = path.join(ROOT, 'build', 'synapse-backup.js');
const PASSPHRASE = `cli passphrase ${randomBytes(12).toString('hex')}`;
const PREFIX = 'cli';

interface CliRun {
  code: number | null;
  stdout: Buffer;
  /** stdout as text. */
  out: string;
  stderr: string;
}

interface CliOptions {
  /** Environment changes; undefined removes a variable. */
  env?: Record<string, string | undefined>;
  /** Default: the test bucket. */
  bucket?: string;
  /** Default true: add --endpoint, --region, --uri-style, --bucket and --prefix. */
  s3Flags?: boolean;
  cwd?: string;
  /** The umask the bundle runs with (through sh); default the test's own. */
  umask?: number;
}

/** Newest mtime of the files below `dir`. */
function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    const mtime = entry.isDirectory() ? newestMtime(full) : statSync(full).mtimeMs;
    newest = Math.max(newest, mtime);
  }
  return newest;
}

function requireBundle(): void {
  if (!existsSync(BUNDLE)) {
    throw new Error(
      `${path.relative(ROOT, BUNDLE)} is missing: run "npm run build" first (npm test builds before it runs jest)`,
    );
  }
  if (newestMtime(path.join(ROOT, 'src')) > statSync(BUNDLE).mtimeMs) {
    console.warn(
      `${path.relative(ROOT, BUNDLE)} is older than src/: these tests run the old bundle; run "npm run build"`,
    );
  }
}

/** The single line of a failed run's stderr. */
function errorLine(run: CliRun): string {
  const lines = run.stderr.split('\n');
  expect(lines).toHaveLength(2); // one line and its newline
  expect(lines[1]).toBe('');
  expect(lines[0]).toMatch(/^synapse-backup: error: /);
  return lines[0];
}

describeWithPeers(['minio'])('synapse-backup CLI (built bundle, real MinIO)', () => {
  let minio: MinioPeer;
  let src: TmpDir;
  let runs = 0;

  beforeAll(async () => {
    requireBundle();
    minio = await startMinio();
    src = await tmpDir('cli-src');
    await makeSynapseTree(src.path, { bigFileBytes: 7 * 1024 * 1024 });
  });
  afterAll(async () => {
    await minio?.stop();
  });

  /**
   * Runs the bundle with the test's credentials and passphrase in the environment (and no
   * other AWS_ or SYNAPSE_BACKUP_ variable), and checks that neither the passphrase nor any
   * secret key it was given appears in its output.
   */
  async function cli(args: string[], options: CliOptions = {}): Promise<CliRun> {
    const env: Record<string, string | undefined> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!k.startsWith('AWS_') && !k.startsWith('SYNAPSE_BACKUP_')) env[k] = v;
    }
    Object.assign(
      env,
      {
        AWS_ACCESS_KEY_ID: minio.accessKeyId,
        AWS_SECRET_ACCESS_KEY: minio.secretAccessKey,
        SYNAPSE_BACKUP_PASSPHRASE: PASSPHRASE,
      },
      options.env,
    );
    for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
    const flags =
      options.s3Flags === false
        ? []
        : [
            ...['--endpoint', minio.endpoint, '--region', 'us-east-1', '--uri-style', 'path'],
            ...['--bucket', options.bucket ?? minio.bucket, '--prefix', PREFIX],
          ];
    const argv = [BUNDLE, ...args, ...flags];
    const [command, commandArgs] =
      options.umask === undefined
        ? [process.execPath, argv]
        : [
            '/bin/sh',
            [
              '-c',
              `umask ${options.umask.toString(8)} && exec "$@"`,
              'sh',
              process.execPath,
              ...argv,
            ],
          ];
    const run = await new Promise<CliRun>((resolve, reject) => {
      const child = spawn(command, commandArgs, {
        env,
        cwd: options.cwd ?? ROOT,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
      child.once('error', reject);
      child.once('close', (code) => {
        clearTimeout(timer);
        const stdout = Buffer.concat(out);
        resolve({
          code,
          stdout,
          out: stdout.toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
        });
      });
    });
    runs += 1;
    const secrets = [
      PASSPHRASE,
      minio.secretAccessKey,
      env.AWS_SECRET_ACCESS_KEY,
      env.SYNAPSE_BACKUP_PASSPHRASE,
    ];
    for (const secret of secrets) {
      if (!secret) continue;
      const leaked = run.stdout.includes(secret) || run.stderr.includes(secret);
      expect({ args, leaked }).toEqual({ args, leaked: false });
    }
    return run;
  }

  let created: { 'backup-id': string; size: number; files: number; sha256: string };

  test('create --json prints exactly one JSON object with backup-id, size, files and sha256', async () => {
    const run = await cli(['create', '--data-dir', src.path, '--id', 'cli-1', '--json']);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.out.endsWith('\n')).toBe(true);
    expect(run.out.trimEnd().split('\n')).toHaveLength(1);
    created = JSON.parse(run.out);
    expect(created).toEqual(
      expect.objectContaining({
        'backup-id': 'cli-1',
        size: expect.any(Number),
        files: 28,
        sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      }),
    );
    expect(created.size).toBeGreaterThan(7 * 1024 * 1024);
  });

  test('create without --json prints one human line; an existing id is refused', async () => {
    const run = await cli(['create', '--data-dir', src.path, '--id', 'cli-2', '--part-size', '5']);
    expect(run.code).toBe(0);
    expect(run.stderr).toBe('');
    expect(run.out).toMatch(/^created backup cli-2: 28 files, .* sha256 [0-9a-f]{64}, .* s\n$/);

    const again = await cli(['create', '--data-dir', src.path, '--id', 'cli-2']);
    expect(again.code).toBe(1);
    expect(again.out).toBe('');
    expect(errorLine(again)).toContain('backup cli-2 already exists');
  });

  test('create on a PostgreSQL homeserver: --json says not-included, and stderr warns, in both outputs', async () => {
    const dir = await tmpDir('cli-postgres');
    await fsp.writeFile(
      path.join(dir.path, 'homeserver.yaml'),
      'server_name: "example.org"\ndatabase:\n  name: psycopg2\n',
    );
    await fsp.writeFile(path.join(dir.path, 'example.org.signing.key'), 'ed25519 a_pg c2VlZA\n');
    const said = 'the master database (PostgreSQL) is not in this backup: back it up with pg_dump';
    const s3 = [
      ...['--endpoint', minio.endpoint, '--region', 'us-east-1', '--uri-style', 'path'],
      ...['--bucket', minio.bucket, '--prefix', `${PREFIX}-postgres`],
    ];
    const json = await cli(['create', '--data-dir', dir.path, '--id', 'pg-1', '--json', ...s3], {
      s3Flags: false,
    });
    expect(json.code).toBe(0);
    expect(json.stderr).toBe(`synapse-backup: warning: ${said}\n`);
    expect(JSON.parse(json.out)).toMatchObject({ 'backup-id': 'pg-1', 'not-included': [said] });
    const human = await cli(['create', '--data-dir', dir.path, '--id', 'pg-2', ...s3], {
      s3Flags: false,
    });
    expect(human.code).toBe(0);
    expect(human.stderr).toBe(`synapse-backup: warning: ${said}\n`);
    expect(human.out).toMatch(/^created backup pg-2: 2 files, /);
    // Restoring it over the live database without --force: bad input (exit 2), nothing changed.
    const before = await fsp.readFile(path.join(dir.path, 'example.org.signing.key'), 'utf8');
    const refused = await cli(['restore', '--data-dir', dir.path, '--id', 'pg-1', ...s3], {
      s3Flags: false,
    });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(
      `backup pg-1 does not hold everything Synapse needs (${said})`,
    );
    expect(await fsp.readFile(path.join(dir.path, 'example.org.signing.key'), 'utf8')).toBe(before);
  });

  test('--config-root /data: a volume the official image wrote, mounted elsewhere, backs up its /data/... paths as data-dir items; without it the error names --config-root', async () => {
    const dir = await tmpDir('cli-config-root');
    const server = 'cfgroot.example.org';
    await fsp.writeFile(
      path.join(dir.path, 'homeserver.yaml'),
      [
        `server_name: "${server}"`,
        'media_store_path: /data/media_store',
        `signing_key_path: "/data/${server}.signing.key"`,
        `log_config: "/data/${server}.log.config"`,
        'pid_file: /data/homeserver.pid',
        '',
      ].join('\n'),
    );
    await fsp.writeFile(path.join(dir.path, `${server}.signing.key`), 'ed25519 a_cr c2VlZA\n');
    await fsp.writeFile(path.join(dir.path, `${server}.log.config`), 'version: 1\n');
    await fsp.mkdir(path.join(dir.path, 'media_store/local_content/ab/cd'), { recursive: true });
    await fsp.writeFile(path.join(dir.path, 'media_store/local_content/ab/cd/m1'), 'media');
    const s3 = [
      ...['--endpoint', minio.endpoint, '--region', 'us-east-1', '--uri-style', 'path'],
      ...['--bucket', minio.bucket, '--prefix', `${PREFIX}-config-root`],
    ];

    const without = await cli(['create', '--data-dir', dir.path, '--id', 'cr-0', ...s3], {
      s3Flags: false,
    });
    // invalid-config: a configuration error, exit 2 like the other bad input.
    expect(without.code).toBe(2);
    expect(errorLine(without)).toContain(
      `homeserver.yaml's signing_key_path /data/${server}.signing.key does not exist`,
    );
    expect(errorLine(without)).toContain('pass --config-root /data');

    const run = await cli(
      ['create', '--data-dir', dir.path, '--config-root', '/data', '--id', 'cr-1', '--json', ...s3],
      { s3Flags: false },
    );
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(JSON.parse(run.out)).toMatchObject({ 'backup-id': 'cr-1', files: 4 });

    const plain = await cli(['decrypt', '--id', 'cr-1', ...s3], { s3Flags: false });
    expect(plain.code).toBe(0);
    const tarFile = path.join(dir.path, '..', 'cli-config-root.tar');
    await fsp.writeFile(tarFile, plain.stdout);
    const listing = spawnSync('tar', ['-tf', tarFile], { encoding: 'utf8' });
    expect(listing.status).toBe(0);
    const names = listing.stdout.split('\n').filter(Boolean);
    expect(names).toEqual(
      expect.arrayContaining([
        'homeserver.yaml',
        `${server}.signing.key`,
        `${server}.log.config`,
        'media_store/local_content/ab/cd/m1',
      ]),
    );
    expect(names.filter((n) => n.includes('external') || n.startsWith('@'))).toEqual([]);
  });

  test('create of a dir with media_store but no homeserver.yaml: complete, with a warning naming --data-dir (stderr, --json no-homeserver-yaml); list says it names no server; with homeserver.yaml none of it', async () => {
    const dir = await tmpDir('cli-no-config');
    for (const f of ['local_content/ab/cd/m1', 'local_thumbnails/ab/cd/t1']) {
      await fsp.mkdir(path.dirname(path.join(dir.path, 'media_store', f)), { recursive: true });
      await fsp.writeFile(path.join(dir.path, 'media_store', f), f);
    }
    const s3 = [
      ...['--endpoint', minio.endpoint, '--region', 'us-east-1', '--uri-style', 'path'],
      ...['--bucket', minio.bucket, '--prefix', `${PREFIX}-no-config`],
    ];
    const said = `no homeserver.yaml in ${dir.path}: backed up media_store alone, with Synapse's default paths; the backup names no server; if Synapse's config lives elsewhere, pass --data-dir the directory that holds its homeserver.yaml`;
    const json = await cli(['create', '--data-dir', dir.path, '--id', 'nc-1', '--json', ...s3], {
      s3Flags: false,
    });
    expect(json.code).toBe(0);
    expect(json.stderr).toBe(`synapse-backup: warning: ${said}\n`);
    expect(JSON.parse(json.out)).toMatchObject({
      'backup-id': 'nc-1',
      files: 2,
      'no-homeserver-yaml': said,
    });
    const human = await cli(['create', '--data-dir', dir.path, '--id', 'nc-2', ...s3], {
      s3Flags: false,
    });
    expect(human.code).toBe(0);
    expect(human.stderr).toBe(`synapse-backup: warning: ${said}\n`);
    expect(human.out).toMatch(/^created backup nc-2: 2 files, [^\n]*\n$/);

    // The normal case: a data dir with its homeserver.yaml.
    const named = await cli(['create', '--data-dir', src.path, '--id', 'nc-3', '--json', ...s3], {
      s3Flags: false,
    });
    expect(named.code).toBe(0);
    expect(named.stderr).toBe('');
    expect(JSON.parse(named.out)).not.toHaveProperty('no-homeserver-yaml');

    const list = await cli(['list', ...s3], { s3Flags: false });
    expect(list.code).toBe(0);
    const noServer = (id: string) =>
      `backup ${id} names no server: its homeserver.yaml had no server_name, or there was none (Synapse's default paths)`;
    expect(list.out.trimEnd().split('\n').slice(-2)).toEqual([noServer('nc-1'), noServer('nc-2')]);
    expect(list.out).not.toContain('nc-3 names');
  });

  test("restore into another data dir than the backup's, of a generated homeserver.yaml (absolute paths): a warning naming the keys, old and new dirs and the fix (--json stale-config-paths), homeserver.yaml as it was; into the backup's own dir none", async () => {
    const old = await tmpDir('cli-generated');
    await makeGeneratedSynapseTree(old.path);
    const s3 = [
      ...['--endpoint', minio.endpoint, '--region', 'us-east-1', '--uri-style', 'path'],
      ...['--bucket', minio.bucket, '--prefix', `${PREFIX}-generated`],
    ];
    const opts = { s3Flags: false };
    const created = await cli(['create', '--data-dir', old.path, '--id', 'gen-1', ...s3], opts);
    expect(created.code).toBe(0);
    expect(created.stderr).toBe('');

    const dst = await tmpDir('cli-generated-new');
    const json = await cli(
      ['restore', '--id', 'gen-1', '--data-dir', dst.path, '--json', ...s3],
      opts,
    );
    expect(json.code).toBe(0);
    const stale = (JSON.parse(json.out) as Record<string, unknown>)['stale-config-paths'] as {
      warning: string;
    };
    const named = ['media_store', 'homeserver.db', 'example.org.signing.key'];
    named.push('example.org.log.config', 'homeserver.pid');
    expect(stale).toEqual({
      'old-data-dir': old.path,
      'data-dir': dst.path,
      keys: GENERATED_PATH_KEYS.map((key, i) => ({
        key,
        path: `${old.path}/${named[i]}`,
        'new-path': `${dst.path}/${named[i]}`,
      })),
      warning: expect.any(String),
    });
    expect(json.stderr).toBe(`synapse-backup: warning: ${stale.warning}\n`);
    expect(stale.warning).toBe(
      `homeserver.yaml in ${dst.path} still names paths under ${old.path}, not ${dst.path} where backup gen-1 put their files: ` +
        GENERATED_PATH_KEYS.map((key, i) => `${key} ${old.path}/${named[i]}`).join(', ') +
        `; so a Synapse started on ${dst.path} would use the files under ${old.path}, and the next create would back them up as @external/...: ` +
        `edit ${GENERATED_PATH_KEYS.join(', ')} in ${dst.path}/homeserver.yaml to name ${dst.path} instead of ${old.path}, or restore into ${old.path} (--data-dir ${old.path}); ` +
        `if Synapse runs in a container that mounts ${dst.path} as ${old.path}, nothing is wrong (--config-root ${old.path} says so)`,
    );
    // Restored where the restore was told, and homeserver.yaml not rewritten.
    expect(
      await fsp.readFile(path.join(dst.path, 'media_store/local_content/ab/cd/m1'), 'utf8'),
    ).toBe('media one');
    expect(await fsp.readFile(path.join(dst.path, 'homeserver.yaml'), 'utf8')).toBe(
      await fsp.readFile(path.join(old.path, 'homeserver.yaml'), 'utf8'),
    );
    const human = await cli(['restore', '--id', 'gen-1', '--data-dir', dst.path, ...s3], opts);
    expect(human.code).toBe(0);
    expect(human.stderr).toBe(`synapse-backup: warning: ${stale.warning}\n`);
    expect(human.out).toMatch(new RegExp(`^restored backup gen-1 into ${dst.path}: 5 files, `));

    // The normal case: back into the dir it was made of.
    const home = await cli(
      ['restore', '--id', 'gen-1', '--data-dir', old.path, '--json', ...s3],
      opts,
    );
    expect(home.code).toBe(0);
    expect(home.stderr).toBe('');
    expect(JSON.parse(home.out)).not.toHaveProperty('stale-config-paths');
  });

  test('list --json: every backup with its status and size; list: a table', async () => {
    const run = await cli(['list', '--json']);
    expect(run.code).toBe(0);
    expect(run.stderr).toBe('');
    expect(run.out.trimEnd().split('\n')).toHaveLength(1);
    const listed = JSON.parse(run.out) as { backups: unknown[]; uploads: unknown[] };
    expect(listed.backups).toEqual([
      expect.objectContaining({
        'backup-id': 'cli-1',
        status: 'complete',
        size: created.size,
        files: created.files,
      }),
      expect.objectContaining({ 'backup-id': 'cli-2', status: 'complete' }),
    ]);
    expect(listed.uploads).toEqual([]);

    const table = await cli(['list']);
    expect(table.code).toBe(0);
    const lines = table.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^backup-id +created +size +status/);
    expect(lines[1]).toMatch(/^cli-1 +\S+ +[\d.]+ MiB +complete$/);
  });

  test('list and delete need no passphrase', async () => {
    const run = await cli(['list', '--json'], { env: { SYNAPSE_BACKUP_PASSPHRASE: undefined } });
    expect(run.code).toBe(0);
  });

  test('verify checks the backup against its manifest', async () => {
    const run = await cli(['verify', '--id', 'cli-1']);
    expect(run.code).toBe(0);
    expect(run.stderr).toBe('');
    expect(run.out).toMatch(
      new RegExp(`^backup cli-1 is good: 28 files, [\\d.]+ MiB, sha256 ${created.sha256}\n$`),
    );

    const json = await cli(['verify', '--id', 'cli-1', '--json']);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.out)).toMatchObject({
      'backup-id': 'cli-1',
      ok: true,
      files: created.files,
      sha256: created.sha256,
    });
  });

  test('restore into an empty directory gives identical files', async () => {
    const dst = await tmpDir('cli-dst');
    const run = await cli(['restore', '--id', 'cli-1', '--data-dir', dst.path, '--json']);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(JSON.parse(run.out)).toMatchObject({
      'backup-id': 'cli-1',
      files: created.files,
      'one-time-keys-removed': 5,
    });
    // Nothing outside the data dir: no such key.
    expect(JSON.parse(run.out)).not.toHaveProperty('replaced-outside');

    const expected = withoutSkipped(await snapshotTree(src.path));
    const actual = await snapshotTree(dst.path);
    expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
    // homeserver.db is a snapshot (SQLite's backup API) with the one-time keys removed: its
    // bytes and mtime are its own, its permissions and rows are the source's.
    expect(actual.get('homeserver.db')?.mode).toBe(expected.get('homeserver.db')?.mode);
    expected.delete('homeserver.db');
    for (const [key, entry] of expected) expect([key, actual.get(key)]).toEqual([key, entry]);
    expect(inspectSqliteDb(path.join(dst.path, 'homeserver.db'))).toEqual({
      events: 300,
      oneTimeKeys: 0,
      integrity: 'ok',
    });
  });

  test('restore makes a missing directory, and takes a relative path from the current one; an unknown id exits 2', async () => {
    const parent = await tmpDir('cli-rel');
    const run = await cli(['restore', '--id', 'cli-1', '--data-dir', 'new/data'], {
      cwd: parent.path,
    });
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const dir = path.join(parent.path, 'new/data');
    expect(run.out).toMatch(new RegExp(`^restored backup cli-1 into ${dir}: 28 files, `));
    expect((await fsp.readFile(path.join(dir, 'homeserver.yaml'), 'utf8')).length).toBeGreaterThan(
      0,
    );

    // A restore that fails before writing leaves no directory behind.
    const failed = await cli(['restore', '--id', 'no-such-backup', '--data-dir', 'other/data'], {
      cwd: parent.path,
    });
    expect(failed.code).toBe(2);
    expect(errorLine(failed)).toContain('backup no-such-backup does not exist');
    expect(errorLine(failed)).toContain('; run synapse-backup list to see the ids');
    expect(existsSync(path.join(parent.path, 'other'))).toBe(false);
  });

  test("restore over another server's data needs --force (exit 2 without it); --keep-previous keeps the old files", async () => {
    const dst = await tmpDir('cli-other');
    await fsp.writeFile(path.join(dst.path, 'homeserver.yaml'), 'server_name: "other.org"\n');
    const refused = await cli(['restore', '--id', 'cli-1', '--data-dir', dst.path]);
    expect(refused.code).toBe(2);
    expect(refused.out).toBe('');
    expect(errorLine(refused)).toContain(
      'backup cli-1 is of server "example.org" but this Synapse is "other.org"',
    );
    expect(errorLine(refused)).toContain('; if that is what you want, run again with --force');
    expect(await fsp.readdir(dst.path)).toEqual(['homeserver.yaml']);

    const run = await cli([
      'restore',
      ...['--id', 'cli-1', '--data-dir', dst.path],
      ...['--force', '--keep-previous'],
    ]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const kept = run.out.match(/; previous files kept in (\S+)\n$/)?.[1];
    expect(run.out).toMatch(/: 28 files, .*; 5 one-time keys removed; previous files kept in /);
    expect(kept).toBeDefined();
    expect(await fsp.readFile(path.join(kept!, 'homeserver.yaml'), 'utf8')).toBe(
      'server_name: "other.org"\n',
    );
    expect(await fsp.readFile(path.join(dst.path, 'homeserver.yaml'), 'utf8')).toContain(
      'server_name: "example.org"',
    );
  });

  test("restore into a compose file's folder or a media store (none of Synapse's files there): exit 2, one line naming what is there and the fix, the dir as it was; --force restores", async () => {
    const deploy = await tmpDir('cli-restore-compose');
    await fsp.chmod(deploy.path, 0o755);
    await fsp.writeFile(path.join(deploy.path, 'docker-compose.yml'), 'services: {}\n');
    await fsp.writeFile(path.join(deploy.path, '.env'), 'POSTGRES_PASSWORD=x\n');
    await fsp.mkdir(path.join(deploy.path, 'data'));
    const stateOf = async (dir: string) => {
      const st = statSync(dir);
      return [st.uid, st.gid, st.mode & 0o7777, [...(await snapshotTree(dir))]];
    };
    const before = await stateOf(deploy.path);
    const fix =
      "pass --data-dir the directory that holds Synapse's homeserver.yaml, or a new or empty directory; if Synapse's files really belong there beside those, run again with --force";
    const refused = await cli(['restore', '--id', 'cli-1', '--data-dir', deploy.path]);
    expect(refused.code).toBe(2);
    expect(refused.out).toBe('');
    expect(errorLine(refused)).toBe(
      `synapse-backup: error: the data dir ${deploy.path} holds none of Synapse's files (no homeserver.yaml, signing key, SQLite database or media store), only .env, data, docker-compose.yml: restoring backup cli-1 there would put Synapse's files among them and give ${deploy.path} the backed-up data dir's owner and mode; nothing was restored; ${fix}`,
    );
    expect(await stateOf(deploy.path)).toEqual(before);

    const media = path.join(deploy.path, 'data', 'media_store');
    for (const folder of ['local_content', 'local_thumbnails', 'remote_content']) {
      await fsp.mkdir(path.join(media, folder), { recursive: true });
    }
    const mediaBefore = await stateOf(media);
    const wrong = await cli(['restore', '--id', 'cli-1', '--data-dir', media]);
    expect(wrong.code).toBe(2);
    expect(errorLine(wrong)).toBe(
      `synapse-backup: error: the data dir ${media} holds none of Synapse's files (no homeserver.yaml, signing key, SQLite database or media store), only local_content, local_thumbnails, remote_content (a media store's folders: Synapse's data dir is likely ${path.dirname(media)}): restoring backup cli-1 there would put Synapse's files among them and give ${media} the backed-up data dir's owner and mode; nothing was restored; ${fix}`,
    );
    expect(await stateOf(media)).toEqual(mediaBefore);

    const forced = await cli(['restore', '--id', 'cli-1', '--data-dir', deploy.path, '--force']);
    expect(forced.stderr).toBe('');
    expect(forced.code).toBe(0);
    expect((await fsp.readdir(deploy.path)).sort()).toEqual(
      [
        '.env',
        'data',
        'docker-compose.yml',
        'example.org.log.config',
        'example.org.signing.key',
        'homeserver.db',
        'homeserver.yaml',
        'media_store',
      ].sort(),
    );
  });

  test('restore of a backup with paths outside the data dir names them: a human clause, --json replaced-outside (and external-previous-paths with --keep-previous)', async () => {
    const { dataDir, etc, media, db } = await packageLayout();
    const created = await cli(['create', '--data-dir', dataDir, '--id', 'cli-pkg']);
    expect(created.code).toBe(0);
    const key = path.join(etc, 'example.org.signing.key');
    await fsp.writeFile(key, 'ed25519 a_new c2VlZA\n');
    const outside = [
      key,
      `${etc}/log.config`,
      `${etc}/bridge.yaml`,
      `${media}/local_content`,
      `${media}/local_thumbnails`,
      db,
    ];

    // The create said what it archived outside the data dir, which this restore replaces.
    const said = created.out.split('\n')[1] ?? '';
    expect(said).toMatch(
      /^also archived, outside the data dir \(homeserver.yaml names them; a restore replaces them there\): /,
    );
    for (const p of outside) expect(said).toContain(p);
    const createdJson = await cli([
      'create',
      '--data-dir',
      dataDir,
      '--id',
      'cli-pkg-json',
      '--json',
    ]);
    expect(createdJson.code).toBe(0);
    const archived = (JSON.parse(createdJson.out) as Record<string, string[]>)['archived-outside'];
    expect([...archived!].sort()).toEqual([...outside].sort());

    const run = await cli(['restore', '--id', 'cli-pkg', '--data-dir', dataDir]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.out).toMatch(
      new RegExp(
        `^restored backup cli-pkg into ${dataDir}: \\d+ files, [^;]+; also restored ${outside.join(', ')}; 5 one-time keys removed\n$`,
      ),
    );
    expect(await fsp.readFile(key, 'utf8')).toBe('ed25519 a_pkg c2VlZA\n');

    await fsp.writeFile(key, 'ed25519 a_new c2VlZA\n');
    const json = await cli([
      'restore',
      ...['--id', 'cli-pkg', '--data-dir', dataDir, '--keep-previous', '--json'],
    ]);
    expect(json.code).toBe(0);
    const r = JSON.parse(json.out) as Record<string, unknown>;
    expect(r['replaced-outside']).toEqual(outside);
    const stamp = path.basename(String(r['previous-path']));
    expect(r['external-previous-paths']).toContain(`${etc}/${stamp}-example.org.signing.key~`);
    expect(await fsp.readFile(`${etc}/${stamp}-example.org.signing.key~`, 'utf8')).toBe(
      'ed25519 a_new c2VlZA\n',
    );
  });

  test('decrypt --id writes the plain tar to stdout: GNU tar lists it, its SHA-256 is the manifest one', async () => {
    const run = await cli(['decrypt', '--id', 'cli-1']);
    expect(run.code).toBe(0);
    expect(run.stderr).toMatch(/^decrypted backup cli-1: .*, sha256 [0-9a-f]{64}\n$/);
    expect(createHash('sha256').update(run.stdout).digest('hex')).toBe(created.sha256);

    const dir = await tmpDir('cli-tar');
    const tarFile = path.join(dir.path, 'cli-1.tar');
    await fsp.writeFile(tarFile, run.stdout);
    const listing = spawnSync('tar', ['-tf', tarFile], { encoding: 'utf8' });
    expect(listing.stderr).toBe('');
    expect(listing.status).toBe(0);
    const names = listing.stdout.split('\n').filter(Boolean);
    expect(names).toEqual(
      expect.arrayContaining([
        'homeserver.yaml',
        'example.org.signing.key',
        'homeserver.db',
        'media_store/local_content/ab/cd/file0',
        'media_store/local_content/big/blob',
      ]),
    );
    expect(names.filter((n) => /remote_|url_cache/.test(n))).toEqual([]);
  });

  test('--passphrase-file works without the environment variable; a wrong one exits 2', async () => {
    const dir = await tmpDir('cli-pass');
    const file = path.join(dir.path, 'passphrase');
    await fsp.writeFile(file, `${PASSPHRASE}\n`, { mode: 0o600 });
    const noEnv = { SYNAPSE_BACKUP_PASSPHRASE: undefined };
    const run = await cli(['verify', '--id', 'cli-1', '--passphrase-file', file], { env: noEnv });
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.out).toContain('backup cli-1 is good');

    const wrongFile = path.join(dir.path, 'wrong');
    await fsp.writeFile(wrongFile, 'not the passphrase\n');
    const wrong = await cli(['verify', '--id', 'cli-1', '--passphrase-file', wrongFile], {
      env: noEnv,
    });
    expect(wrong.code).toBe(2);
    expect(errorLine(wrong)).toBe(
      'synapse-backup: error: cannot decrypt backup cli-1: the passphrase does not match the one it was encrypted with; set SYNAPSE_BACKUP_PASSPHRASE or --passphrase-file to the passphrase in use when this backup was made',
    );
  });

  test.each([
    ['create', ['create', '--data-dir', '<src>', '--id', 'nopass']],
    ['verify', ['verify', '--id', 'cli-1']],
    ['restore', ['restore', '--id', 'cli-1', '--data-dir', '<dst>']],
    ['decrypt', ['decrypt', '--id', 'cli-1']],
  ])('%s without a passphrase: non-zero exit, one error line, nothing done', async (_, args) => {
    const dst = await tmpDir('cli-nopass');
    const target = path.join(dst.path, 'restore-here');
    const argv = args.map((a) => (a === '<src>' ? src.path : a === '<dst>' ? target : a));
    const run = await cli(argv, { env: { SYNAPSE_BACKUP_PASSPHRASE: undefined } });
    expect(run.code).not.toBe(0);
    expect(run.out).toBe('');
    expect(errorLine(run)).toBe(
      'synapse-backup: error: no passphrase: set SYNAPSE_BACKUP_PASSPHRASE or pass --passphrase-file',
    );
    expect(existsSync(target)).toBe(false);
  });

  test.each([
    ['list', ['list']],
    ['create', ['create', '--data-dir', '<src>']],
    ['verify', ['verify', '--id', 'cli-1']],
    ['restore', ['restore', '--id', 'cli-1', '--data-dir', '<dst>']],
    ['delete', ['delete', '--id', 'cli-1']],
  ])(
    '%s on a missing bucket: exit 2, one error line naming the bucket and saying to create it',
    async (_, args) => {
      const dst = await tmpDir('cli-nobucket');
      const argv = args.map((a) => (a === '<src>' ? src.path : a === '<dst>' ? dst.path : a));
      const run = await cli(argv, { bucket: 'no-such-bucket-here' });
      expect(run.code).toBe(2);
      expect(run.out).toBe('');
      const line = errorLine(run);
      expect(line).toContain('bucket "no-such-bucket-here" does not exist');
      expect(line).toContain(minio.endpoint);
      expect(line).toContain('; pass --bucket to an existing bucket, or create it');
    },
  );

  test('an endpoint whose TLS certificate is not trusted: the error says --ca-file; with it, list works', async () => {
    const tls = await startMinio({ tls: true });
    const dir = await tmpDir('cli-ca');
    try {
      const flags = ['--endpoint', tls.endpoint, '--uri-style', 'path', '--bucket', tls.bucket];
      const env = {
        AWS_ACCESS_KEY_ID: tls.accessKeyId,
        AWS_SECRET_ACCESS_KEY: tls.secretAccessKey,
      };
      const untrusted = await cli(['list', ...flags], { s3Flags: false, env });
      expect(untrusted.code).toBe(1);
      const line = errorLine(untrusted);
      expect(line).toMatch(
        /the TLS certificate of https:\/\/\S+ is not trusted \(.+\); pass --ca-file to the CA that signed it$/,
      );
      expect(line).not.toContain('s3-ca-chain');

      const caFile = path.join(dir.path, 'ca.pem');
      await fsp.writeFile(caFile, tls.caCert!);
      const trusted = await cli(['list', ...flags, '--ca-file', caFile], { s3Flags: false, env });
      // The bucket is empty: list says where it looked, no error.
      expect(trusted.stderr).toBe(
        `synapse-backup: no backups at the top of bucket "${tls.bucket}" (no --prefix); if they were created with --prefix, pass the same one\n`,
      );
      expect(trusted.code).toBe(0);
    } finally {
      await dir.cleanup();
      await tls.stop();
    }
  });

  test('a wrong S3 secret key is an access error that does not echo the key', async () => {
    const wrongSecret = `${minio.secretAccessKey.slice(0, -4)}beef`;
    const run = await cli(['list'], { env: { AWS_SECRET_ACCESS_KEY: wrongSecret } });
    expect(run.code).toBe(1);
    expect(errorLine(run)).toContain(`access to bucket "${minio.bucket}" was denied`);
  });

  test('usage errors exit 2 with one error line', async () => {
    const unknown = await cli(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.out).toBe('');
    expect(errorLine(unknown)).toBe(
      'synapse-backup: error: unknown command "frobnicate"; see synapse-backup --help',
    );

    const option = await cli(['list', '--frobnicate']);
    expect(option.code).toBe(2);
    expect(errorLine(option)).toContain("Unknown option '--frobnicate'");

    // The passphrase as a flag: refused without repeating its value, naming what to use.
    for (const args of [['--passphrase', 'hunter2-flag'], ['--passphrase=hunter2-flag']]) {
      const flag = await cli(['list', ...args]);
      expect(flag.code).toBe(2);
      expect(flag.out).toBe('');
      expect(errorLine(flag)).toBe(
        'synapse-backup: error: the passphrase is never a flag (the process list would show it): set SYNAPSE_BACKUP_PASSPHRASE or pass --passphrase-file',
      );
    }

    const missing = await cli(['verify']);
    expect(missing.code).toBe(2);
    expect(errorLine(missing)).toBe(
      'synapse-backup: error: verify needs --id; pass --id ID (synapse-backup list shows the ids)',
    );

    const bare = await cli([], { s3Flags: false });
    expect(bare.code).toBe(2);
    expect(bare.out).toBe('');
    expect(bare.stderr).toMatch(/^usage:\n/);

    const help = await cli(['--help'], { s3Flags: false });
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/^usage:\n/);
    expect(help.stderr).toBe('');
  });

  test('restore --allow-no-manifest restores a backup that has no manifest', async () => {
    const tar = await buildTar([
      { name: 'homeserver.yaml', content: 'server_name: "legacy.example.org"\n' },
      { name: 'media_store/', type: 'directory' },
      { name: 'media_store/local_content/', type: 'directory' },
      { name: 'media_store/local_content/old', content: 'media from the Python charm' },
    ]);
    await putBackup(
      minio.client,
      minio.bucket,
      PREFIX,
      'legacy',
      tar,
      await encrypt(tar, PASSPHRASE),
      {
        files: 2,
        entries: 4,
        withManifest: false,
      },
    );
    const listed = JSON.parse((await cli(['list', '--json'])).out) as {
      backups: { 'backup-id': string; status: string }[];
    };
    expect(listed.backups).toContainEqual(
      expect.objectContaining({ 'backup-id': 'legacy', status: 'incomplete' }),
    );

    const dst = await tmpDir('cli-legacy');
    const refused = await cli(['restore', '--id', 'legacy', '--data-dir', dst.path]);
    expect(refused.code).toBe(1);
    expect(errorLine(refused)).toContain('backup legacy is incomplete: it has no manifest');
    expect(errorLine(refused)).toContain(
      "; if it is an old charm's backup, run again with --allow-no-manifest",
    );
    expect(await fsp.readdir(dst.path)).toEqual([]);

    const run = await cli([
      'restore',
      '--id',
      'legacy',
      '--data-dir',
      dst.path,
      '--allow-no-manifest',
    ]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.out).toMatch(/^restored backup legacy into .*: 2 files, /);
    expect(await fsp.readFile(path.join(dst.path, 'homeserver.yaml'), 'utf8')).toBe(
      'server_name: "legacy.example.org"\n',
    );
    expect(await fsp.readFile(path.join(dst.path, 'media_store/local_content/old'), 'utf8')).toBe(
      'media from the Python charm',
    );
  });

  test("a restore makes a missing data dir 0700 and its parents 0755 whatever the umask; the swap then gives it the archive's ./ mode", async () => {
    const noRoot = await buildTar([
      { name: 'homeserver.yaml', content: 'server_name: "mode.example.org"\n' },
    ]);
    const withRoot = await buildTar([
      { name: './', type: 'directory' }, // mode 0755 (buildTar's for directories)
      { name: 'homeserver.yaml', content: 'server_name: "mode.example.org"\n' },
    ]);
    const put = async (id: string, tar: Buffer, entries: number) =>
      putBackup(minio.client, minio.bucket, PREFIX, id, tar, await encrypt(tar, PASSPHRASE), {
        files: 1,
        entries,
        serverName: 'mode.example.org',
      });
    await put('mode-noroot', noRoot, 1);
    await put('mode-root', withRoot, 2);
    const root = await tmpDir('cli-mode');
    const modeOf = (p: string) => statSync(p).mode & 0o7777;

    // umask 0: mkdir's own default would be 0777 for both.
    const data = path.join(root.path, 'new/data');
    const run = await cli(['restore', '--id', 'mode-noroot', '--data-dir', data], { umask: 0 });
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(modeOf(data).toString(8)).toBe('700');
    expect(modeOf(path.dirname(data)).toString(8)).toBe('755');
    expect(await fsp.readdir(data)).toEqual(['homeserver.yaml']);

    // umask 077 (mkdir -p would make 0700 parents, closed to Synapse's user): the same modes.
    const tight = path.join(root.path, 'tight/deeper/data');
    const tightRun = await cli(['restore', '--id', 'mode-noroot', '--data-dir', tight], {
      umask: 0o077,
    });
    expect(tightRun.code).toBe(0);
    expect(modeOf(tight).toString(8)).toBe('700');
    expect(modeOf(path.dirname(tight)).toString(8)).toBe('755');
    expect(modeOf(path.join(root.path, 'tight')).toString(8)).toBe('755');
    // A parent that was there keeps its mode.
    expect(modeOf(root.path).toString(8)).toBe('700');

    // A backup with ./ (every create's): the data dir takes the backed-up one's mode, as an
    // existing data dir does.
    const fromArchive = path.join(root.path, 'archived/data');
    const archived = await cli(['restore', '--id', 'mode-root', '--data-dir', fromArchive], {
      umask: 0o077,
    });
    expect(archived.stderr).toBe('');
    expect(archived.code).toBe(0);
    expect(modeOf(fromArchive).toString(8)).toBe('755');
    for (const id of ['mode-noroot', 'mode-root']) {
      expect((await cli(['delete', '--id', id])).code).toBe(0);
    }
  });

  test('a damaged object (one byte changed inside a frame) exits 1, not 2: it is no bad input', async () => {
    const tar = await buildTar([
      { name: 'homeserver.yaml', content: 'server_name: "damaged.example.org"\n' },
    ]);
    const ciphertext = await encrypt(tar, PASSPHRASE);
    ciphertext[ciphertext.length - 40] ^= 1; // inside the final frame's content
    await putBackup(minio.client, minio.bucket, PREFIX, 'damaged', tar, ciphertext, {
      files: 1,
      entries: 1,
    });
    const run = await cli(['verify', '--id', 'damaged']);
    expect(run.code).toBe(1);
    expect(errorLine(run)).toMatch(
      /^synapse-backup: error: backup damaged is damaged: its authentication check failed /,
    );
    expect((await cli(['delete', '--id', 'damaged'])).code).toBe(0);
  });

  test('one file is "1 file" in the human lines of create, verify and restore; --json keeps files: 1', async () => {
    const one = await tmpDir('cli-one');
    await fsp.writeFile(path.join(one.path, 'homeserver.yaml'), 'server_name: "one.example.org"\n');
    const created = await cli(['create', '--data-dir', one.path, '--id', 'cli-one']);
    expect(created.stderr).toBe('');
    expect(created.code).toBe(0);
    expect(created.out).toMatch(/^created backup cli-one: 1 file, .* archived, /);
    const verified = await cli(['verify', '--id', 'cli-one']);
    expect(verified.out).toMatch(/^backup cli-one is good: 1 file, /);
    const dst = await tmpDir('cli-one-dst');
    const restored = await cli(['restore', '--id', 'cli-one', '--data-dir', dst.path]);
    expect(restored.code).toBe(0);
    expect(restored.out).toMatch(new RegExp(`^restored backup cli-one into ${dst.path}: 1 file, `));
    const json = await cli(['verify', '--id', 'cli-one', '--json']);
    expect(JSON.parse(json.out)).toMatchObject({ 'backup-id': 'cli-one', files: 1, ok: true });
    expect((await cli(['delete', '--id', 'cli-one'])).code).toBe(0);
  });

  test('restore --allow-no-manifest of a backup with paths outside the data dir: exit 1, one line saying why and what to do; nothing changed', async () => {
    const root = await tmpDir('cli-f2');
    const data = path.join(root.path, 'data');
    const key = path.join(root.path, 'etc/example.org.signing.key');
    await fsp.mkdir(path.dirname(key), { recursive: true });
    await fsp.mkdir(data);
    await fsp.writeFile(
      path.join(data, 'homeserver.yaml'),
      `server_name: "example.org"\nsigning_key_path: ${key}\n`,
    );
    await fsp.writeFile(key, 'ed25519 a_f2 c2VlZA\n');
    const created = await cli(['create', '--data-dir', data, '--id', 'cli-f2']);
    expect(created.code).toBe(0);
    // A manifest lost (deleted by hand, a bucket tool): only the object is left.
    await minio.client.send(
      new DeleteObjectCommand({ Bucket: minio.bucket, Key: `${PREFIX}/cli-f2.manifest.json` }),
    );
    await fsp.writeFile(key, 'ed25519 a_new c2VlZA\n');
    const run = await cli(['restore', '--id', 'cli-f2', '--data-dir', data, '--allow-no-manifest']);
    expect(run.code).toBe(1);
    expect(run.out).toBe('');
    expect(errorLine(run)).toBe(
      `synapse-backup: error: backup cli-f2 has no manifest and holds a path outside the data dir (${key}): --allow-no-manifest restores a backup of the data dir only (the original charm's), and only the manifest this engine writes says which outside paths a restore may replace; nothing was restored; synapse-backup decrypt --id cli-f2 --allow-no-manifest > cli-f2.tar writes its plain tar (outside paths as @external/<absolute path>) to put back by hand; or restore another backup (synapse-backup list)`,
    );
    expect(await fsp.readFile(key, 'utf8')).toBe('ed25519 a_new c2VlZA\n');
    expect(await fsp.readdir(data)).toEqual(['homeserver.yaml']);
    expect(await fsp.readdir(path.dirname(key))).toEqual(['example.org.signing.key']);
    // What the remedy says works: the plain tar holds the outside path.
    const tar = await cli(['decrypt', '--id', 'cli-f2', '--allow-no-manifest']);
    expect(tar.code).toBe(0);
    const listed = spawnSync('tar', ['-t', '-f', '-'], { input: tar.stdout });
    expect(listed.stdout.toString()).toContain(`@external${key}\n`);
    await minio.client.send(
      new DeleteObjectCommand({ Bucket: minio.bucket, Key: `${PREFIX}/cli-f2.tar.enc` }),
    );
  });

  test('delete removes a backup; list no longer shows it', async () => {
    const run = await cli(['delete', '--id', 'cli-2'], {
      env: { SYNAPSE_BACKUP_PASSPHRASE: undefined },
    });
    expect(run.code).toBe(0);
    expect(run.out).toBe(
      `deleted backup cli-2 (${PREFIX}/cli-2.manifest.json, ${PREFIX}/cli-2.tar.enc)\n`,
    );
    const listed = JSON.parse((await cli(['list', '--json'])).out) as {
      backups: { 'backup-id': string }[];
    };
    expect(listed.backups.map((b) => b['backup-id'])).not.toContain('cli-2');
  });

  test("prune previews with --dry-run, applies retention, and keeps the old charm's manifest-less backup", async () => {
    const dry = await cli(['prune', '--dry-run', '--stale-hours', '0', '--json'], {
      env: { SYNAPSE_BACKUP_PASSPHRASE: undefined },
    });
    expect(dry.code).toBe(0);
    const preview = JSON.parse(dry.out) as Record<string, unknown>;
    expect(preview).toMatchObject({ 'dry-run': true, forgotten: [] });
    // An object without a manifest or pending marker may be the Python charm's backup: kept.
    expect(preview['incomplete-removed']).not.toContain('legacy');

    const real = await cli(['prune', '--keep-last', '1', '--stale-hours', '0']);
    expect(real.code).toBe(0);
    expect(real.out).not.toMatch(/^removed incomplete backups older than 0 h: .*legacy/m);
    const listed = JSON.parse((await cli(['list', '--json'])).out) as {
      backups: { 'backup-id': string; status: string }[];
    };
    expect(listed.backups.filter((b) => b.status === 'complete')).toHaveLength(1);
    expect(listed.backups.find((b) => b['backup-id'] === 'legacy')).toMatchObject({
      status: 'incomplete',
    });
    // Without --data-dir the workload is left alone.
    expect(real.out).not.toMatch(/interrupted runs/);

    const data = await tmpDir('cli-prune-data');
    await fsp.writeFile(path.join(data.path, 'homeserver.yaml'), 'server_name: "example.org"\n');
    await fsp.writeFile(path.join(data.path, '.synapse-backup-snapshot.db'), 'half a snapshot');
    await fsp.mkdir(path.join(data.path, '.synapse-restore-20260101T000000000Z'));
    const cleaned = await cli(['prune', '--keep-last', '1', '--data-dir', data.path]);
    expect(cleaned.code).toBe(0);
    expect(cleaned.out).toContain(
      `removed what interrupted runs left in ${data.path}, if anything`,
    );
    expect(await fsp.readdir(data.path)).toEqual(['homeserver.yaml']);

    const bad = await cli(['prune', '--keep-last', 'many']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe(
      'synapse-backup: error: --keep-last takes a whole number of at least 1, not "many"\n',
    );
  });

  test('addressing: a custom endpoint is path style by default; host style names the cause and the flag', async () => {
    const localhost = minio.endpoint.replace('127.0.0.1', 'localhost');
    const base = ['--endpoint', localhost, '--bucket', minio.bucket, '--prefix', PREFIX];
    const listed = await cli(['list', ...base], { s3Flags: false });
    expect(listed.stderr).toBe('');
    expect(listed.code).toBe(0);
    const host = await cli(['list', ...base, '--uri-style', 'host'], { s3Flags: false });
    expect(host.code).toBe(1);
    // list reads objects and in-progress uploads at once: either may fail first.
    expect(errorLine(host)).toMatch(/^synapse-backup: error: cannot list [^:]+: /);
    expect(errorLine(host).replace(/^.*?: cannot list [^:]+: /, '')).toBe(
      `${minio.bucket}.localhost, the bucket's virtual-host name under ${localhost}, does not resolve: the store is addressed in host style, which needs a DNS name for every bucket; pass --uri-style path`,
    );
  });

  test('create leaves out a FIFO and a socket, naming them in --json `skipped` and in a human line; verify accepts the backup', async () => {
    const dir = await tmpDir('cli-left-out');
    await makeSynapseTree(dir.path, { mediaFiles: 2 });
    const ab = path.join(dir.path, 'media_store/local_content/ab');
    expect(spawnSync('mkfifo', [path.join(ab, 'p')]).status).toBe(0);
    const socket = spawnSync('python3', [
      '-c',
      'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
      path.join(ab, 's'),
    ]);
    expect(socket.status).toBe(0);
    const json = await cli(['create', '--data-dir', dir.path, '--id', 'cli-left-out', '--json']);
    expect(json.stderr).toBe('');
    expect(json.code).toBe(0);
    const r = JSON.parse(json.out) as Record<string, unknown>;
    expect(r).toMatchObject({
      skipped: [
        { path: 'media_store/local_content/ab/p', kind: 'fifo' },
        { path: 'media_store/local_content/ab/s', kind: 'socket' },
      ],
      'skipped-count': 2,
      warnings: [],
      'warnings-count': 0,
    });
    const human = await cli(['create', '--data-dir', dir.path, '--id', 'cli-left-out-2']);
    expect(human.code).toBe(0);
    expect(human.out.split('\n')[1]).toBe(
      'left out 2 entries a restore refuses (they hold no data): media_store/local_content/ab/p (fifo), media_store/local_content/ab/s (socket)',
    );
    const verified = await cli(['verify', '--id', 'cli-left-out']);
    expect(verified.code).toBe(0);
  });

  test('create with a symlink to /etc/passwd in the media: exit 2, one line naming it and the fix; nothing stored', async () => {
    const dir = await tmpDir('cli-symlink');
    await makeSynapseTree(dir.path, { mediaFiles: 2 });
    await fsp.symlink('/etc/passwd', path.join(dir.path, 'media_store/local_content/ab/pw'));
    const run = await cli(['create', '--data-dir', dir.path, '--id', 'cli-symlink']);
    expect(run.code).toBe(2);
    expect(run.out).toBe('');
    expect(errorLine(run)).toBe(
      'synapse-backup: error: cannot back up: symlink "media_store/local_content/ab/pw" points to the absolute path "/etc/passwd"; a restore refuses such an entry, so no backup was stored; replace the symlink with a copy of what it points to (or a relative link that stays inside the data directory), or remove it, then create the backup again',
    );
    const listed = JSON.parse((await cli(['list', '--json'])).out) as {
      backups: { backupId?: string; 'backup-id'?: string }[];
      uploads: { key: string }[];
    };
    expect(listed.backups.filter((b) => b['backup-id'] === 'cli-symlink')).toEqual([]);
    expect(listed.uploads.filter((u) => u.key.includes('cli-symlink'))).toEqual([]);
  });

  test('create with a homeserver.yaml that is not YAML: invalid-config, exit 2, one line that quotes none of it', async () => {
    const dir = await tmpDir('cli-not-yaml');
    await makeSynapseTree(dir.path, { mediaFiles: 1 });
    await fsp.writeFile(
      path.join(dir.path, 'homeserver.yaml'),
      'server_name: "x"\nregistration_shared_secret: SECRETREG: bad\n',
    );
    const run = await cli(['create', '--data-dir', dir.path, '--id', 'cli-not-yaml']);
    expect(run.code).toBe(2);
    expect(run.out).toBe('');
    expect(errorLine(run)).toMatch(
      /^synapse-backup: error: \S+\/homeserver\.yaml is not valid YAML \(.+ at line 2, column \d+\): fix it; Synapse cannot start with it either$/,
    );
    expect(run.stderr).not.toContain('SECRETREG');
  });

  test('create of a data dir with only empty media folders: empty-selection, exit 2, one line', async () => {
    const dir = await tmpDir('cli-empty');
    await fsp.mkdir(path.join(dir.path, 'media_store/local_content'), { recursive: true });
    const run = await cli(['create', '--data-dir', dir.path, '--id', 'cli-empty']);
    expect(run.code).toBe(2);
    expect(run.out).toBe('');
    expect(errorLine(run)).toBe(
      `synapse-backup: error: nothing to back up in ${dir.path}: no regular file in what this run selected (no homeserver.yaml in ${dir.path}, so Synapse's default paths; the media store ${dir.path}/media_store (local_content: no regular file, local_thumbnails: missing); the SQLite database ${dir.path}/homeserver.db (missing); no *.key, *.yaml, *.yml or *.log.config file in ${dir.path}); pass --data-dir the directory that holds Synapse's homeserver.yaml`,
    );
  });

  test("create of a compose file's folder (Synapse's data dir is below it): empty-selection, exit 2, nothing stored", async () => {
    const dir = await tmpDir('cli-compose');
    await fsp.writeFile(path.join(dir.path, 'docker-compose.yml'), 'services: {}\n');
    await fsp.mkdir(path.join(dir.path, 'data'));
    await fsp.writeFile(path.join(dir.path, 'data', 'homeserver.yaml'), 'server_name: x\n');
    const before = (await cli(['list', '--json'])).out;
    const run = await cli(['create', '--data-dir', dir.path, '--id', 'cli-compose']);
    expect(run.code).toBe(2);
    expect(run.out).toBe('');
    expect(errorLine(run)).toBe(
      `synapse-backup: error: nothing of Synapse's to back up in ${dir.path}: no homeserver.yaml, signing key, SQLite database or media store there, only docker-compose.yml; pass --data-dir the directory that holds Synapse's homeserver.yaml`,
    );
    expect((await cli(['list', '--json'])).out).toBe(before);
  });

  test('no credentials anywhere: a configuration error naming the variables, exit 2', async () => {
    const run = await cli(['list'], {
      env: {
        AWS_ACCESS_KEY_ID: undefined,
        AWS_SECRET_ACCESS_KEY: undefined,
        // The SDK's chain would otherwise ask the EC2 instance metadata service.
        AWS_EC2_METADATA_DISABLED: 'true',
        AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/credentials',
        AWS_CONFIG_FILE: '/nonexistent/config',
      },
    });
    expect(run.code).toBe(2);
    expect(errorLine(run)).toMatch(
      /^synapse-backup: error: cannot [^:]+: no S3 credentials are set; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY$/,
    );
  });

  test('prune --keep-last 0 and -1, --keep-days 0: exit 2, one line saying it takes a whole number of at least 1, nothing deleted', async () => {
    const before = JSON.parse((await cli(['list', '--json'])).out) as unknown;
    const zero = await cli(['prune', '--keep-last', '0']);
    expect(zero.code).toBe(2);
    expect(zero.out).toBe('');
    expect(errorLine(zero)).toBe(
      'synapse-backup: error: --keep-last takes a whole number of at least 1, not "0": prune always keeps the newest complete backup, so --keep-last 1 keeps only that one; synapse-backup delete --id ID deletes it too',
    );
    // parseArgs alone calls a value that starts with a dash "ambiguous".
    for (const args of [['--keep-last', '-1'], ['--keep-last=-1']]) {
      const negative = await cli(['prune', ...args]);
      expect(negative.code).toBe(2);
      expect(errorLine(negative)).toBe(
        'synapse-backup: error: --keep-last takes a whole number of at least 1, not "-1"',
      );
    }
    // keep-days 0 as the charm's backup-retention: refused, not read as "keep none".
    const days = await cli(['prune', '--keep-days', '0']);
    expect(days.code).toBe(2);
    expect(errorLine(days)).toBe(
      'synapse-backup: error: --keep-days takes a whole number of at least 1, not "0": --keep-days 1 keeps the backups younger than a day (prune always keeps the newest complete backup)',
    );
    const hours = await cli(['prune', '--stale-hours', '-2']);
    expect(hours.code).toBe(2);
    expect(errorLine(hours)).toBe(
      'synapse-backup: error: --stale-hours takes a number of hours >= 0 (0.5 is half an hour), not "-2"',
    );
    expect(JSON.parse((await cli(['list', '--json'])).out)).toEqual(before);
  });

  test('flags that do not apply to the subcommand: exit 2, one line naming the flag and the subcommand', async () => {
    const cases: [string[], string][] = [
      [['list', '--keep-last', '3'], '--keep-last does not apply to list'],
      [
        ['restore', '--id', 'cli-1', '--data-dir', '/tmp/x', '--dry-run'],
        '--dry-run does not apply to restore',
      ],
      [
        ['verify', '--id', 'cli-1', '--pebble-socket', '/tmp/p.socket'],
        '--pebble-socket does not apply to verify',
      ],
      [['delete', '--id', 'cli-1', '--force'], '--force does not apply to delete'],
      [
        ['create', '--data-dir', '/tmp/x', '--service', 'synapse'],
        '--service does not apply to create',
      ],
    ];
    for (const [args, said] of cases) {
      const run = await cli(args);
      expect({ args, code: run.code, out: run.out }).toEqual({ args, code: 2, out: '' });
      const command = args[0];
      expect(errorLine(run)).toBe(
        `synapse-backup: error: ${said}; see synapse-backup --help for what ${command} takes`,
      );
    }
    const service = await cli([
      'restore',
      '--id',
      'cli-1',
      '--data-dir',
      '/tmp/x',
      '--service',
      'synapse',
    ]);
    expect(service.code).toBe(2);
    expect(errorLine(service)).toBe(
      'synapse-backup: error: --service needs --pebble-socket: on this host the CLI manages no services; stop Synapse yourself',
    );
  });

  test("an interrupted create's pending marker: create names delete once; delete refuses it while fresh, removes it and its upload once stale", async () => {
    const noPass = { SYNAPSE_BACKUP_PASSPHRASE: undefined };
    const marker = {
      format: 'synapse-backup-pending',
      id: 'abandoned',
      object: `${PREFIX}/abandoned.tar.enc`,
      startedAt: '2026-01-02T03:04:05.000Z',
      host: 'gone-host',
      pid: 4242,
    };
    await minio.client.send(
      new PutObjectCommand({
        Bucket: minio.bucket,
        Key: `${PREFIX}/abandoned.pending`,
        Body: JSON.stringify(marker),
      }),
    );
    const upload = await minio.client.send(
      new CreateMultipartUploadCommand({
        Bucket: minio.bucket,
        Key: `${PREFIX}/abandoned.tar.enc`,
      }),
    );
    const uploadsOf = async () =>
      (
        await minio.client.send(
          new ListMultipartUploadsCommand({
            Bucket: minio.bucket,
            Prefix: `${PREFIX}/abandoned.tar.enc`,
          }),
        )
      ).Uploads ?? [];
    expect((await uploadsOf()).map((u) => u.UploadId)).toEqual([upload.UploadId]);

    const create = await cli(['create', '--data-dir', src.path, '--id', 'abandoned']);
    expect(create.code).toBe(1);
    expect(errorLine(create)).toBe(
      `synapse-backup: error: backup abandoned is being created by the run of gone-host pid 4242 started 2026-01-02T03:04:05.000Z (its pending marker ${PREFIX}/abandoned.pending is there); run synapse-backup delete to remove the marker if that run was interrupted (once it is older than the stale age, 24 h unless told otherwise), or choose another id`,
    );

    const fresh = await cli(['delete', '--id', 'abandoned'], { env: noPass });
    expect(fresh.code).toBe(1);
    expect(errorLine(fresh)).toMatch(
      new RegExp(
        `^synapse-backup: error: backup abandoned is being created: its pending marker ${PREFIX}/abandoned\\.pending was written \\d+ s ago \\(S3's time\\), and a create may still be running; nothing was deleted; if you know that create died, run synapse-backup delete --id abandoned --stale-hours 0 now; otherwise run synapse-backup delete --id abandoned again once the marker is 24 h old if that create was interrupted \\(it then removes the marker and the upload\\); else wait for it to finish$`,
      ),
    );
    expect(await uploadsOf()).toHaveLength(1);

    // --stale-hours 0: the marker is taken as an interrupted run's at once.
    const stale = await cli(['delete', '--id', 'abandoned', '--stale-hours', '0'], { env: noPass });
    expect(stale.stderr).toBe('');
    expect(stale.code).toBe(0);
    expect(stale.out).toMatch(
      new RegExp(
        `^deleted backup abandoned \\(${PREFIX}/abandoned\\.pending\\); it was an interrupted create's, whose pending marker dates from \\S+Z: its marker and any upload it left are gone\n$`,
      ),
    );
    expect(await uploadsOf()).toEqual([]);
    const listed = JSON.parse((await cli(['list', '--json'])).out) as {
      backups: { 'backup-id': string }[];
    };
    expect(listed.backups.map((b) => b['backup-id'])).not.toContain('abandoned');
    const gone = await cli(['delete', '--id', 'abandoned'], { env: noPass });
    expect(errorLine(gone)).toContain('backup abandoned does not exist');
  });

  test('no run printed the passphrase or a secret key', () => {
    // Each run is checked as it ends (see cli()); this guards against the check being skipped.
    expect(runs).toBeGreaterThanOrEqual(30);
  });
});
