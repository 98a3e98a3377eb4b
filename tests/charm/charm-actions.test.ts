/**
 * The backup actions, run through the built dispatch with fake hook tools
 * against a real Pebble (the workload) and a real MinIO. Every action's
 * output, as `juju run` would show it, goes to build/charm-actions-transcript.txt.
 */
import { execFileSync } from 'node:child_process';
import { DeleteObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { minioEngine } from '../support/engines';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import {
  describeAction,
  findSecretLeaks,
  JujuHarness,
  REPO_ROOT,
  type ActionResult,
  type DispatchResult,
} from '../support/juju-harness';
import {
  describeWithPeers,
  startMinio,
  startPebble,
  tmpDir,
  type MinioPeer,
  type PebblePeer,
} from '../support/peers';
import { packageLayout } from '../support/selection';
import {
  GENERATED_PATH_KEYS,
  inspectSqliteDb,
  makeGeneratedSynapseTree,
  makeSynapseTree,
  snapshotTree,
  withoutSkipped,
} from '../support/synapse-tree';

const TRANSCRIPT = path.join(REPO_ROOT, 'build', 'charm-actions-transcript.txt');

describeWithPeers(['minio', 'pebble'])('charm actions', () => {
  let minio: MinioPeer;
  let pebble: PebblePeer;
  let h: JujuHarness;
  const passphrase = 'correct horse battery staple 42';
  const outputs: DispatchResult[] = [];
  let passUri: string;

  async function action(
    name: string,
    params: Record<string, unknown> = {},
    env: Record<string, string> = {},
  ): Promise<ActionResult> {
    const r = await h.action(name, params, env);
    outputs.push(r);
    const args = Object.entries(params)
      .map(([k, v]) => ` ${k}=${String(v)}`)
      .join('');
    fs.appendFileSync(TRANSCRIPT, `${describeAction(`${name}${args}`, r)}\n\n`);
    expect(r.exitCode).toBe(0);
    return r;
  }

  beforeAll(async () => {
    fs.mkdirSync(path.dirname(TRANSCRIPT), { recursive: true });
    fs.writeFileSync(TRANSCRIPT, '');
    minio = await startMinio();
    pebble = await startPebble();
    h = await JujuHarness.create({ pebbleSocket: pebble.socketPath });
    await makeSynapseTree(h.dataDir, { mediaFiles: 30 });
    const creds = h.addSecret({
      'access-key': minio.accessKeyId,
      'secret-key': minio.secretAccessKey,
    });
    passUri = h.addSecret({ passphrase });
    h.setConfig({
      'server-name': 'example.org',
      's3-endpoint': minio.endpoint,
      's3-bucket': minio.bucket,
      's3-path': 'synapse/prod',
      's3-uri-style': 'path',
      's3-credentials': creds,
      'backup-passphrase': passUri,
    });
    const ready = await h.hook('synapse-pebble-ready');
    outputs.push(ready);
    expect(ready.status?.status).toBe('active');
  });

  afterAll(async () => {
    await pebble?.stop();
    await minio?.stop();
  });

  it('fail with what to configure when backups are not configured', async () => {
    const bare = await JujuHarness.create({ pebbleSocket: pebble.socketPath });
    bare.setConfig({ 'server-name': 'example.org' });
    const r = await bare.action('create-backup');
    outputs.push(r);
    fs.appendFileSync(TRANSCRIPT, `${describeAction('create-backup (nothing configured)', r)}\n\n`);
    expect(r.failed).toBe(true);
    expect(r.failMessage).toBe(
      'backups are not configured: relate an s3-integrator (juju integrate synapse:backup s3-integrator) or set s3-bucket, s3-region or s3-endpoint and s3-credentials (juju config synapse ...), and set backup-passphrase',
    );
    for (const name of ['list-backups', 'restore-backup', 'verify-backup', 'delete-backup']) {
      const other = await bare.action(
        name,
        name === 'list-backups' ? {} : { 'backup-id': '20250101000000' },
      );
      expect(other.failMessage).toBe(r.failMessage);
    }
  });

  let backupId: string;
  let before: Awaited<ReturnType<typeof snapshotTree>>;

  it('create-backup', async () => {
    before = withoutSkipped(await snapshotTree(h.dataDir));
    const r = await action('create-backup');
    expect(r.failed).toBe(false);
    expect(Object.keys(r.results).sort()).toEqual(
      ['backup-id', 'duration-seconds', 'files', 'sha256', 'size'].sort(),
    );
    backupId = r.results['backup-id'] as string;
    expect(backupId).toMatch(/^\d{14}$/);
    expect(r.results.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(Number(r.results.size)).toBeGreaterThan(1000);
    expect(Number(r.results.files)).toBeGreaterThan(30);
    expect(r.results['duration-seconds']).toMatch(/^\d+\.\d$/);
    expect(r.logs[0]).toBe(
      `creating a backup of ${h.dataDir} in s3://${minio.bucket}/synapse/prod at ${minio.endpoint} (from config)`,
    );
    expect(r.logs.at(-1)).toMatch(new RegExp(`^backup ${backupId} complete: \\d+ files, `));
    // No two action-log calls more than 5 s apart while the action ran.
    const times = r.calls.filter((c) => c.tool === 'action-log').map((c) => c.t);
    for (let i = 1; i < times.length; i++)
      expect(times[i] - times[i - 1]).toBeLessThanOrEqual(5000);
    // The unit says a backup runs, then is back to its normal status.
    expect(r.statuses).toEqual([
      { status: 'maintenance', message: 'creating backup ...' },
      {
        status: 'active',
        message: `backups: s3://${minio.bucket}/synapse/prod at ${minio.endpoint} (from config)`,
      },
    ]);
  });

  it('list-backups', async () => {
    // A second backup with an id that is not a valid action-set key.
    const engine = minioEngine(minio, 'synapse/prod', { passphrase, dataDir: h.dataDir });
    await engine.create({ id: 'Weekly_2025.01' });
    engine.close();

    const r = await action('list-backups');
    expect(r.failed).toBe(false);
    const backups = r.results.backups as Record<string, Record<string, string>>;
    expect(backups[backupId]).toEqual({
      created: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      size: expect.stringMatching(/^\d+$/),
      status: 'complete',
    });
    const odd = Object.entries(backups).find(([k]) => k.startsWith('weekly-2025-01-'));
    expect(odd?.[1]).toMatchObject({ id: 'Weekly_2025.01', status: 'complete' });
    const lines = (r.results.formatted as string).split('\n');
    expect(lines[0]).toMatch(/^backup-id\s+created\s+size\s+status$/);
    expect(lines.some((l) => l.startsWith(backupId) && l.endsWith('complete'))).toBe(true);
    expect(lines.some((l) => l.startsWith('Weekly_2025.01'))).toBe(true);
    // Columns are aligned: every row has "created" at the same offset.
    const col = lines[0].indexOf('created');
    for (const l of lines.slice(1)) expect(l.slice(col, col + 4)).toMatch(/^\d{4}$/);
  });

  it('verify-backup', async () => {
    const r = await action('verify-backup', { 'backup-id': backupId });
    expect(r.failed).toBe(false);
    expect(r.results).toEqual({
      'backup-id': backupId,
      files: expect.stringMatching(/^\d+$/),
      'plaintext-bytes': expect.stringMatching(/^\d+$/),
      sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      'duration-seconds': expect.stringMatching(/^\d+\.\d$/),
    });
  });

  it('verify-backup with an all-digit id as juju run passes it: a YAML integer', async () => {
    expect(backupId).toMatch(/^[1-9]\d{13}$/);
    const r = await action('verify-backup', { 'backup-id': Number(backupId) });
    expect(r.failed).toBe(false);
    expect(r.results['backup-id']).toBe(backupId);
    const schema = parseYaml(
      fs.readFileSync(path.join(REPO_ROOT, 'actions.yaml'), 'utf8'),
    ) as Record<string, { params?: Record<string, { type?: unknown }> }>;
    for (const name of ['restore-backup', 'verify-backup', 'delete-backup']) {
      expect(schema[name].params?.['backup-id'].type).toEqual(['string', 'integer']);
    }
    const lossy = await action('verify-backup', { 'backup-id': 2 ** 70 });
    expect(lossy.failed).toBe(true);
    expect(lossy.failMessage).toBe(
      `backup-id 1.1805916207174113e+21 was read as a number (juju run reads key=value as YAML): quote it, e.g. juju run synapse/0 verify-backup backup-id="'<id>'", or pass --string-args`,
    );
  });

  it('restore-backup', async () => {
    fs.rmSync(path.join(h.dataDir, 'media_store/local_content/ab/cd/file3'));
    fs.writeFileSync(
      path.join(h.dataDir, 'homeserver.yaml'),
      'server_name: "example.org"\n# broken\n',
    );
    fs.writeFileSync(
      path.join(h.dataDir, 'media_store/local_content/ab/cd/stray'),
      'not in the backup',
    );
    const r = await action('restore-backup', { 'backup-id': backupId });
    expect(r.failed).toBe(false);
    expect(r.results).toEqual({
      'backup-id': backupId,
      files: expect.stringMatching(/^\d+$/),
      'plaintext-bytes': expect.stringMatching(/^\d+$/),
      'duration-seconds': expect.stringMatching(/^\d+\.\d$/),
      'one-time-keys-removed': '5',
    });
    expect(r.logs[0]).toContain('(Synapse stops only while the files are swapped in)');
    // While the files are swapped the unit says Synapse is stopped; then active again.
    expect(r.statuses).toEqual([
      {
        status: 'maintenance',
        message: `restoring backup ${backupId}: staging it (Synapse still serves)`,
      },
      { status: 'maintenance', message: `restoring backup ${backupId}: Synapse stopped` },
      {
        status: 'active',
        message: `backups: s3://${minio.bucket}/synapse/prod at ${minio.endpoint} (from config)`,
      },
    ]);
    const after = withoutSkipped(await snapshotTree(h.dataDir));
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
    // The database is a consistent snapshot with one-time keys removed: compare its content.
    for (const [rel, entry] of before) {
      if (rel !== 'homeserver.db') expect([rel, after.get(rel)]).toEqual([rel, entry]);
    }
    expect(inspectSqliteDb(path.join(h.dataDir, 'homeserver.db'))).toEqual({
      events: 300,
      oneTimeKeys: 0,
      integrity: 'ok',
    });
    // Synapse runs again and the charm is still happy.
    const status = await h.hook('update-status');
    outputs.push(status);
    expect(status.status?.status).toBe('active');
  });

  it.each(['restore-backup', 'verify-backup', 'delete-backup'])(
    '%s needs a backup-id',
    async (name) => {
      const r = await action(name);
      expect(r.failed).toBe(true);
      expect(r.failMessage).toBe(
        `backup-id is required: juju run synapse/0 ${name} backup-id=<id> (list-backups shows the ids)`,
      );
    },
  );

  it('verify-backup fails, saying what to do, for a backup that does not exist', async () => {
    const r = await action('verify-backup', { 'backup-id': '19990101000000' });
    expect(r.failed).toBe(true);
    expect(r.failMessage).toMatch(/19990101000000/);
    expect(r.failMessage).toMatch(/list-backups/);
  });

  it('verify-backup fails with a wrong passphrase', async () => {
    h.state.secrets[passUri].content = { passphrase: 'not the passphrase' };
    try {
      const r = await action('verify-backup', { 'backup-id': backupId });
      expect(r.failed).toBe(true);
      expect(r.failMessage).toMatch(/passphrase/);
    } finally {
      h.state.secrets[passUri].content = { passphrase };
    }
  });

  it('delete-backup', async () => {
    const r = await action('delete-backup', { 'backup-id': backupId });
    expect(r.failed).toBe(false);
    expect(r.results['backup-id']).toBe(backupId);
    expect(r.results['deleted-objects']).toBe('2');
    const list = await action('list-backups');
    expect(Object.keys(list.results.backups as object).some((k) => k === backupId)).toBe(false);
    const again = await action('delete-backup', { 'backup-id': backupId });
    expect(again.failed).toBe(true);
    expect(again.failMessage).toMatch(/does not exist/);
  });

  it('delete-backup of an id whose create left only a fresh pending marker: refused, in charm terms, nothing deleted', async () => {
    const key = 'synapse/prod/20260101000000.pending';
    await minio.client.send(new PutObjectCommand({ Bucket: minio.bucket, Key: key, Body: '{}' }));
    const r = await action('delete-backup', { 'backup-id': '20260101000000' });
    expect(r.failed).toBe(true);
    expect(r.failMessage).toMatch(
      new RegExp(
        `^backup 20260101000000 is being created: its pending marker ${key} was written \\d+ s ago \\(S3's time\\), and a create may still be running; nothing was deleted; run delete-backup again once the marker is 24 h old if that create was interrupted \\(it then removes the marker and the upload\\); else wait for it to finish$`,
      ),
    );
    const head = await minio.client.send(new HeadObjectCommand({ Bucket: minio.bucket, Key: key }));
    expect(head.ContentLength).toBe(2);
    await minio.client.send(new DeleteObjectCommand({ Bucket: minio.bucket, Key: key }));
  });

  it("restore-backup refuses another server's backup unless forced", async () => {
    const other = await tmpDir('other-server');
    await makeSynapseTree(other.path, { mediaFiles: 2 });
    fs.writeFileSync(path.join(other.path, 'homeserver.yaml'), 'server_name: "other.org"\n');
    const engine = minioEngine(minio, 'synapse/prod', { passphrase, dataDir: other.path });
    await engine.create({ id: 'other-org-1' });
    engine.close();

    const refused = await action('restore-backup', { 'backup-id': 'other-org-1' });
    expect(refused.failed).toBe(true);
    expect(refused.failMessage).toBe(
      'backup other-org-1 is of server "other.org" but this Synapse is "example.org": restoring it would replace this server\'s identity; if that is what you want, run again with force=true',
    );
    const forced = await action('restore-backup', {
      'backup-id': 'other-org-1',
      force: true,
      'keep-previous': true,
    });
    expect(forced.failed).toBe(false);
    expect(forced.results['previous-path']).toMatch(new RegExp(`^${h.dataDir}/\\.`));
    // The action's own status refresh already says what to do about the server name.
    expect(forced.statuses.at(-1)).toEqual({
      status: 'blocked',
      message: `server-name "example.org" differs from server_name "other.org" in ${h.dataDir}/homeserver.yaml: Synapse cannot change its name; set server-name to "other.org"`,
    });
    // The charm now says what to do about the server name.
    const status = await h.hook('update-status');
    outputs.push(status);
    expect(status.status).toEqual({
      status: 'blocked',
      message: `server-name "example.org" differs from server_name "other.org" in ${h.dataDir}/homeserver.yaml: Synapse cannot change its name; set server-name to "other.org"`,
    });
  });

  it("restore-backup on a fresh unit (no server-name yet, only the volume's lost+found) restores; into a data dir holding none of Synapse's files it fails, naming them, and changes nothing; force=true restores", async () => {
    const source = await tmpDir('charm-fresh-src');
    await makeSynapseTree(source.path, { mediaFiles: 2 });
    const engine = minioEngine(minio, 'synapse/fresh', { passphrase, dataDir: source.path });
    await engine.create({ id: 'fresh-1' });
    engine.close();
    const unitFor = async (dir: string) => {
      const unit = await JujuHarness.create({ pebbleSocket: pebble.socketPath, dataDir: dir });
      unit.setConfig({
        's3-endpoint': minio.endpoint,
        's3-bucket': minio.bucket,
        's3-path': 'synapse/fresh',
        's3-uri-style': 'path',
        's3-credentials': unit.addSecret({
          'access-key': minio.accessKeyId,
          'secret-key': minio.secretAccessKey,
        }),
        'backup-passphrase': unit.addSecret({ passphrase }),
      });
      return unit;
    };

    const fresh = await tmpDir('charm-fresh');
    fs.mkdirSync(path.join(fresh.path, 'lost+found'));
    const restored = await (
      await unitFor(fresh.path)
    ).action('restore-backup', {
      'backup-id': 'fresh-1',
    });
    outputs.push(restored);
    expect(restored.failMessage).toBeUndefined();
    expect(restored.results['backup-id']).toBe('fresh-1');
    expect(fs.readFileSync(path.join(fresh.path, 'homeserver.yaml'), 'utf8')).toBe(
      fs.readFileSync(path.join(source.path, 'homeserver.yaml'), 'utf8'),
    );

    const other = await tmpDir('charm-foreign');
    fs.writeFileSync(path.join(other.path, 'notes.txt'), 'not Synapse\n');
    fs.mkdirSync(path.join(other.path, 'backup.d'));
    const before = await snapshotTree(other.path);
    const beforeMode = fs.statSync(other.path).mode;
    const unit = await unitFor(other.path);
    const refused = await unit.action('restore-backup', { 'backup-id': 'fresh-1' });
    outputs.push(refused);
    expect(refused.failed).toBe(true);
    expect(refused.failMessage).toBe(
      `the data dir ${other.path} holds none of Synapse's files (no homeserver.yaml, signing key, SQLite database or media store), only backup.d, notes.txt: restoring backup fresh-1 there would put Synapse's files among them and give ${other.path} the backed-up data dir's owner and mode; nothing was restored; see what they are with \`juju ssh --container synapse synapse/0 ls -la ${other.path}\` and move them off the data volume; if Synapse's files really belong there beside them, run again with force=true`,
    );
    expect(await snapshotTree(other.path)).toEqual(before);
    expect(fs.statSync(other.path).mode).toBe(beforeMode);
    const forced = await unit.action('restore-backup', { 'backup-id': 'fresh-1', force: true });
    outputs.push(forced);
    expect(forced.failMessage).toBeUndefined();
    expect(fs.readdirSync(other.path)).toEqual(
      expect.arrayContaining(['homeserver.yaml', 'notes.txt', 'backup.d', 'media_store']),
    );
  });

  it('create-backup follows homeserver.yaml outside the data dir, restore-backup puts it back there; a PostgreSQL database is named as not included', async () => {
    const layout = await packageLayout();
    const pkg = await JujuHarness.create({
      pebbleSocket: pebble.socketPath,
      dataDir: layout.dataDir,
    });
    pkg.setConfig({
      'server-name': 'example.org',
      's3-endpoint': minio.endpoint,
      's3-bucket': minio.bucket,
      's3-path': 'synapse/package',
      's3-uri-style': 'path',
      's3-credentials': pkg.addSecret({
        'access-key': minio.accessKeyId,
        'secret-key': minio.secretAccessKey,
      }),
      'backup-passphrase': pkg.addSecret({ passphrase }),
    });
    // Twelve app service files: 17 paths outside the data dir, more than a result lists.
    const bridges = Array.from({ length: 12 }, (_, i) => `${layout.etc}/bridge-${i}.yaml`);
    for (const b of bridges) fs.writeFileSync(b, 'id: bridge\n');
    const yamlPath = path.join(layout.dataDir, 'homeserver.yaml');
    fs.writeFileSync(
      yamlPath,
      fs
        .readFileSync(yamlPath, 'utf8')
        .replace(/^app_service_config_files: .*$/m, `app_service_config_files: [${bridges}]`),
    );
    const created = await pkg.action('create-backup');
    outputs.push(created);
    expect(created.failMessage).toBeUndefined();
    expect(created.results['not-included']).toBeUndefined();
    const id = String(created.results['backup-id']);
    const keyPath = path.join(layout.etc, 'example.org.signing.key');
    fs.writeFileSync(keyPath, 'ed25519 a_other c2VlZA\n');
    fs.rmSync(path.join(layout.media, 'local_content'), { recursive: true });
    const restored = await pkg.action('restore-backup', { 'backup-id': id, 'keep-previous': true });
    outputs.push(restored);
    expect(restored.failMessage).toBeUndefined();
    expect(fs.readFileSync(keyPath, 'utf8')).toBe('ed25519 a_pkg c2VlZA\n');
    expect(fs.readFileSync(path.join(layout.media, 'local_content/ab/cd/m1'), 'utf8')).toBe(
      'media one',
    );
    const stamp = path.basename(String(restored.results['previous-path']));
    expect(String(restored.results['previous-external']).split(', ')).toContain(
      `${layout.etc}/${stamp}-example.org.signing.key~`,
    );
    // What it replaced outside the data dir: the first 10 and a count in the results, all in the log.
    const outside = [
      keyPath,
      `${layout.etc}/log.config`,
      ...bridges,
      `${layout.media}/local_content`,
      `${layout.media}/local_thumbnails`,
      layout.db,
    ];
    expect(restored.results['replaced-outside-count']).toBe('17');
    expect(restored.results['previous-external-count']).toBe('17');
    for (const key of ['replaced-outside', 'previous-external']) {
      const listed = String(restored.results[key]);
      expect([key, listed]).toEqual([key, expect.stringMatching(/ \(7 more\)$/)]);
      expect(listed.replace(/ \(7 more\)$/, '').split(', ')).toHaveLength(10);
    }
    expect(outside).toEqual(
      expect.arrayContaining(
        String(restored.results['replaced-outside'])
          .replace(/ \(7 more\)$/, '')
          .split(', '),
      ),
    );
    const logged = restored.logs.find((l) => l.includes('; also restored '));
    expect(logged).toBeDefined();
    expect(logged!.split('; also restored ')[1]!.split(', ').sort()).toEqual([...outside].sort());

    fs.writeFileSync(
      path.join(layout.dataDir, 'homeserver.yaml'),
      'server_name: "example.org"\ndatabase:\n  name: psycopg2\n  args: {host: db}\n',
    );
    fs.writeFileSync(path.join(layout.dataDir, 'example.org.signing.key'), 'ed25519 a_pg c2VlZA\n');
    const pg = await pkg.action('create-backup');
    outputs.push(pg);
    const said = 'the master database (PostgreSQL) is not in this backup: back it up with pg_dump';
    expect(pg.failMessage).toBeUndefined();
    expect(pg.results['not-included']).toBe(said);
    expect(pg.logs).toContain(`warning: ${said}`);
  });

  it("create-backup without homeserver.yaml warns (no-homeserver-yaml); restore-backup of a host's backup whose generated homeserver.yaml names that host's dir warns (stale-config-paths) and rewrites nothing", async () => {
    // The charm restores into its own data dir only: a backup of another dir (the
    // CLI's, of a host being migrated) is the one way it meets this.
    const dir = await tmpDir('charm-migrate');
    const mig = await JujuHarness.create({ pebbleSocket: pebble.socketPath, dataDir: dir.path });
    mig.setConfig({
      'server-name': 'example.org',
      's3-endpoint': minio.endpoint,
      's3-bucket': minio.bucket,
      's3-path': 'synapse/migrate',
      's3-uri-style': 'path',
      's3-credentials': mig.addSecret({
        'access-key': minio.accessKeyId,
        'secret-key': minio.secretAccessKey,
      }),
      'backup-passphrase': mig.addSecret({ passphrase }),
    });
    fs.mkdirSync(path.join(dir.path, 'media_store/local_content/ab'), { recursive: true });
    fs.writeFileSync(path.join(dir.path, 'media_store/local_content/ab/m0'), 'media zero');
    const bare = await mig.action('create-backup');
    outputs.push(bare);
    expect(bare.failMessage).toBeUndefined();
    const said = `no homeserver.yaml in ${dir.path}: backed up media_store alone, with Synapse's default paths; the backup names no server; the charm generates ${dir.path}/homeserver.yaml once server-name is set`;
    expect(bare.results['no-homeserver-yaml']).toBe(said);
    expect(bare.logs).toContain(`warning: ${said}`);
    const listed = await mig.action('list-backups');
    outputs.push(listed);
    expect(String(listed.results.formatted).split('\n').at(-1)).toBe(
      `backup ${String(bare.results['backup-id'])} names no server: its homeserver.yaml had no server_name, or there was none (Synapse's default paths)`,
    );

    const host = await tmpDir('charm-migrate-host');
    await makeGeneratedSynapseTree(host.path);
    const engine = minioEngine(minio, 'synapse/migrate', { passphrase, dataDir: host.path });
    await engine.create({ id: 'host-1' });
    engine.close();
    const restored = await mig.action('restore-backup', { 'backup-id': 'host-1' });
    outputs.push(restored);
    expect(restored.failMessage).toBeUndefined();
    const keys = GENERATED_PATH_KEYS.join(', ');
    expect(restored.results['stale-config-keys']).toBe(keys);
    const stale = String(restored.results['stale-config-paths']);
    expect(stale).toMatch(
      new RegExp(
        `^homeserver\\.yaml in ${dir.path} still names paths under ${host.path}, not ${dir.path} where backup host-1 put their files: media_store_path ${host.path}/media_store, `,
      ),
    );
    expect(
      stale.endsWith(
        `: edit ${keys} in ${dir.path}/homeserver.yaml (in the synapse container) to name ${dir.path} instead of ${host.path}, then restart Synapse`,
      ),
    ).toBe(true);
    expect(restored.logs).toContain(`warning: ${stale}`);
    expect(fs.readFileSync(path.join(dir.path, 'media_store/local_content/ab/cd/m1'), 'utf8')).toBe(
      'media one',
    );
    // The charm's reconcile adds its own settings; the paths are as the host's.
    const paths = (file: string) => {
      const c = parseYaml(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
      return ['pid_file', 'database', 'log_config', 'media_store_path', 'signing_key_path'].map(
        (k) => c[k],
      );
    };
    expect(paths(path.join(dir.path, 'homeserver.yaml'))).toEqual(
      paths(path.join(host.path, 'homeserver.yaml')),
    );
  });

  it('prune-backups and backup-retention', async () => {
    // Earlier tests may have restored another server's data: follow its name so that
    // the only problem left is the retention setting.
    const yaml = fs.readFileSync(path.join(h.dataDir, 'homeserver.yaml'), 'utf8');
    const serverName = /server_name:\s*"?([^"\n]+)"?/.exec(yaml)![1];
    h.setConfig({ 'server-name': serverName, 'backup-retention': 'keep-weekly=2' });
    const status = await h.hook('config-changed');
    outputs.push(status);
    expect(status.status?.status).toBe('active');
    expect(status.status?.message).toContain(
      'backups: backup-retention "keep-weekly=2" is not valid: use keep-last=N and/or keep-days=N',
    );

    // The prefix holds other servers' backups too (other-org-1 of the forced restore's test,
    // example.org's of the first ones): retention applies to each server's on its own.
    const complete = async () => {
      const engine = minioEngine(minio, 'synapse/prod');
      const { backups } = await engine.list().finally(() => engine.close());
      return backups.filter((b) => b.status === 'complete');
    };
    const before = await complete();
    const servers = [...new Set(before.map((b) => b.serverName ?? '-'))].sort();
    expect(servers).toEqual(expect.arrayContaining(['example.org', 'other.org']));
    const others = servers.filter((s) => s !== serverName);
    const othersNewest = (backups: typeof before) =>
      others.map((s) => backups.filter((b) => (b.serverName ?? '-') === s).at(-1)?.backupId);

    h.setConfig({ 'backup-retention': 'keep-last=1' });
    const dry = await action('prune-backups', { 'dry-run': true });
    expect(dry.failed).toBe(false);
    expect(dry.results['dry-run']).toBe('true');
    expect(dry.results.kept).toBe(String(servers.length));
    for (const s of servers) expect(dry.results['kept-by-server']).toContain(`${s}: `);
    const listedBefore = await action('list-backups');
    expect(Object.keys(listedBefore.results.backups as object).length).toBeGreaterThanOrEqual(
      servers.length,
    );

    // create-backup applies the policy once its own backup is complete.
    const created = await action('create-backup');
    expect(created.failed).toBe(false);
    const newest = created.results['backup-id'] as string;
    expect(created.results.pruned).not.toBe('');
    for (const s of others) expect(created.results['pruned-by-server']).toContain(`${s}: none`);
    // Each server kept its newest alone: this one's is the new backup, the others' are as before.
    const left = await complete();
    expect([...left.map((b) => b.serverName ?? '-')].sort()).toEqual(servers);
    expect(left.find((b) => b.serverName === serverName)?.backupId).toBe(newest);
    expect(othersNewest(left)).toEqual(othersNewest(before));

    // A socket left by a charm killed between opening it and tar connecting.
    const stale = '.synapse-backup-00000000000000cc.sock';
    execFileSync('python3', [
      '-c',
      'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
      path.join(h.containersDir, 'synapse', stale),
    ]);
    const again = await action('prune-backups', { 'stale-hours': 0 });
    expect(again.logs).toContain(`removed stale sockets: ${stale}`);
    expect(again.results).toMatchObject({
      'dry-run': 'false',
      forgotten: 'none',
      kept: String(servers.length),
    });
    expect(again.results['kept-by-server']).toContain(`${serverName}: ${newest}`);
    h.setConfig({ 'backup-retention': null });
  });

  it('workload-exec picks the transport, with a clear message when it cannot work', async () => {
    h.setConfig({ 'workload-exec': 'ssh' });
    const bad = await action('list-backups');
    expect(bad.failMessage).toBe(
      'workload-exec "ssh" is not valid: use "pebble", "pebble-relay" or "kubernetes" (juju config synapse workload-exec=pebble)',
    );
    const socketsLeft = () =>
      fs
        .readdirSync(path.join(h.containersDir, 'synapse'))
        .filter((n) => n.startsWith('.synapse-backup-'));
    const fellBack = (r: ActionResult) =>
      r.logs.filter((l) => l.includes("the archive comes through Pebble's websocket"));

    // The default: the archive over a unix socket beside Pebble's; the rest through Pebble.
    h.setConfig({ 'workload-exec': null });
    const direct = await action('create-backup');
    expect(direct.failMessage).toBeUndefined();
    expect(fellBack(direct)).toEqual([]);
    const directId = direct.results['backup-id'] as string;
    const verified = await action('verify-backup', { 'backup-id': directId });
    expect(verified.results).toMatchObject({ 'backup-id': directId, files: direct.results.files });
    expect(socketsLeft()).toEqual([]);
    await action('delete-backup', { 'backup-id': directId });

    // The workload cannot reach the socket (here: a wrong path on its side): the
    // backup still happens, through Pebble's websocket, and the log says why.
    const wrongDir = { SYNAPSE_CHARM_WORKLOAD_SHARED_DIR: '/nonexistent/charm/container' };
    const relayed = await action('create-backup', {}, wrongDir);
    expect(relayed.failMessage).toBeUndefined();
    expect(fellBack(relayed)).toEqual([
      expect.stringMatching(
        /because the direct socket could not be used: cannot connect to \/nonexistent\/charm\/container\/\.synapse-backup-[0-9a-f]+\.sock in the workload: \[Errno 2\] No such file or directory; set workload-exec=pebble-relay to skip the attempt$/,
      ),
    ]);
    expect(relayed.results.files).toBe(direct.results.files);
    expect(socketsLeft()).toEqual([]);
    await action('delete-backup', { 'backup-id': relayed.results['backup-id'] as string });

    // pebble-relay makes no attempt; pebble-direct (the old opt-in) is the default's name.
    h.setConfig({ 'workload-exec': 'pebble-relay' });
    const relayOnly = await action('create-backup', {}, wrongDir);
    expect(relayOnly.failMessage).toBeUndefined();
    expect(fellBack(relayOnly)).toEqual([]);
    await action('delete-backup', { 'backup-id': relayOnly.results['backup-id'] as string });
    h.setConfig({ 'workload-exec': 'pebble-direct' });
    const named = await action('create-backup');
    expect(named.failMessage).toBeUndefined();
    expect(fellBack(named)).toEqual([]);
    await action('delete-backup', { 'backup-id': named.results['backup-id'] as string });

    // Outside a pod the Kubernetes transport says so instead of failing obscurely.
    h.setConfig({ 'workload-exec': 'kubernetes' });
    const outside = await action('create-backup');
    expect(outside.failMessage).toBe(
      'cannot reach the Kubernetes API: KUBERNETES_SERVICE_HOST/PORT are not set (is the charm running in a pod?)',
    );
    h.setConfig({ 'workload-exec': null });
  });

  it('never lets a secret reach hook-tool argv, stdin, logs or output', () => {
    expect(h.calls.some((c) => c.tool === 'action-set')).toBe(true);
    const leaks = findSecretLeaks(
      [passphrase, 'not the passphrase', minio.secretAccessKey],
      h.calls,
      outputs,
    );
    expect(leaks).toEqual([]);
  });
});
