/**
 * The built charm, run hook by hook through its dispatch with fake hook tools,
 * against a real Pebble and a real MinIO: the workload, the status, the S3
 * settings from config and from the s3-integrator relation.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import {
  FAKE_SYNAPSE,
  findSecretLeaks,
  JujuHarness,
  type DispatchResult,
} from '../support/juju-harness';
import {
  describeWithPeers,
  freePort,
  startMinio,
  startPebble,
  type MinioPeer,
  type PebblePeer,
} from '../support/peers';

function pebbleGet<T>(socketPath: string, urlPath: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path: urlPath }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve((JSON.parse(body) as { result: T }).result));
    });
    req.on('error', reject);
  });
}

describeWithPeers(['minio', 'pebble'])('charm hooks', () => {
  let minio: MinioPeer;
  let pebble: PebblePeer;
  const outputs: DispatchResult[] = [];
  const harnesses: JujuHarness[] = [];
  const secrets: string[] = [];

  beforeAll(async () => {
    minio = await startMinio();
    secrets.push(minio.secretAccessKey);
  });

  afterAll(async () => {
    await minio?.stop();
  });

  beforeEach(async () => {
    pebble = await startPebble();
  });

  afterEach(async () => {
    await pebble.stop();
  });

  async function harness(
    options: Parameters<typeof JujuHarness.create>[0] = {},
  ): Promise<JujuHarness> {
    const h = await JujuHarness.create({ pebbleSocket: pebble.socketPath, ...options });
    harnesses.push(h);
    return h;
  }

  async function hook(h: JujuHarness, name: string, options?: Parameters<JujuHarness['hook']>[1]) {
    const r = await h.hook(name, options);
    outputs.push(r);
    if (r.exitCode !== 0) throw new Error(`${name} exited ${r.exitCode}: ${r.stderr}`);
    return r;
  }

  /** Config pointing at MinIO with credentials and passphrase in user secrets. */
  function configureS3(h: JujuHarness, overrides: Record<string, string | null> = {}) {
    const creds = h.addSecret({
      'access-key': minio.accessKeyId,
      'secret-key': minio.secretAccessKey,
    });
    const passphrase = `pass-${Math.random().toString(36).slice(2)}-phrase`;
    secrets.push(passphrase);
    const pass = h.addSecret({ passphrase });
    h.setConfig({
      'server-name': 'example.com',
      's3-endpoint': minio.endpoint,
      's3-bucket': minio.bucket,
      's3-uri-style': 'path',
      's3-credentials': creds,
      'backup-passphrase': pass,
      ...overrides,
    });
    return { creds, pass };
  }

  function providerData(overrides: Record<string, string> = {}): Record<string, string> {
    // s3-integrator JSON-encodes some values; the charm must accept both forms.
    return {
      'access-key': minio.accessKeyId,
      'secret-key': minio.secretAccessKey,
      bucket: JSON.stringify(minio.bucket),
      endpoint: minio.endpoint,
      region: 'us-east-1',
      path: '/synapse-from-relation',
      's3-uri-style': '"path"',
      'tls-ca-chain': JSON.stringify([]),
      ...overrides,
    };
  }

  it('is blocked until server-name is set, and waits for Pebble', async () => {
    const h = await harness({ pebbleSocket: undefined });
    let r = await hook(h, 'install');
    expect(r.status).toEqual({
      status: 'blocked',
      message:
        'server-name is not set: juju config synapse server-name=<matrix domain> (it cannot be changed later)',
    });
    h.setConfig({ 'server-name': 'example.com' });
    r = await hook(h, 'config-changed');
    expect(r.status).toEqual({
      status: 'waiting',
      message: 'waiting for Pebble in the synapse container',
    });
  });

  it('generates homeserver.yaml, adds the Pebble layer and replans on pebble-ready', async () => {
    const h = await harness();
    h.setConfig({ 'server-name': 'example.com' });
    const r = await hook(h, 'synapse-pebble-ready');
    expect(r.statuses).toEqual([
      { status: 'maintenance', message: `generating ${h.dataDir}/homeserver.yaml` },
      { status: 'active', message: 'backups not configured' },
    ]);
    const config = fs.readFileSync(path.join(h.dataDir, 'homeserver.yaml'), 'utf8');
    expect(config).toContain('server_name: "example.com"');
    const services = await pebbleGet<{ name: string; current: string; startup: string }[]>(
      pebble.socketPath,
      '/v1/services?names=synapse',
    );
    expect(services).toEqual([
      expect.objectContaining({ name: 'synapse', current: 'active', startup: 'enabled' }),
    ]);
    const plan = await pebbleGet<string>(pebble.socketPath, '/v1/plan?format=yaml');
    expect(plan).toContain(`command: ${path.join(FAKE_SYNAPSE, 'start')}`);
    expect(plan).toContain('SYNAPSE_SERVER_NAME: example.com');
    expect(plan).toContain('SYNAPSE_REPORT_STATS: "no"');

    // Again: homeserver.yaml exists, so it is neither generated nor touched.
    const before = fs.statSync(path.join(h.dataDir, 'homeserver.yaml')).mtimeMs;
    const again = await hook(h, 'config-changed');
    expect(again.statuses).toEqual([{ status: 'active', message: 'backups not configured' }]);
    expect(fs.statSync(path.join(h.dataDir, 'homeserver.yaml')).mtimeMs).toBe(before);

    // Synapse cannot change its name once homeserver.yaml exists.
    h.setConfig({ 'server-name': 'other.example.com' });
    const renamed = await hook(h, 'config-changed');
    expect(renamed.status).toEqual({
      status: 'blocked',
      message: `server-name "other.example.com" differs from server_name "example.com" in ${h.dataDir}/homeserver.yaml: Synapse cannot change its name; set server-name to "example.com"`,
    });
  });

  it("is blocked with the generate step's error when it fails", async () => {
    const h = await harness({ generateCommand: [path.join(FAKE_SYNAPSE, 'fail-generate')] });
    h.setConfig({ 'server-name': 'example.com' });
    const r = await hook(h, 'synapse-pebble-ready');
    expect(r.status).toEqual({
      status: 'blocked',
      message: `generating ${h.dataDir}/homeserver.yaml failed (exit 3): Error: cannot write config: read-only file system`,
    });
  });

  it('is waiting while the synapse service does not stay up', async () => {
    const h = await harness({ serviceCommand: '/bin/false' });
    h.setConfig({ 'server-name': 'example.com' });
    const r = await hook(h, 'synapse-pebble-ready');
    expect(r.status?.status).toBe('waiting');
    expect(r.status?.message).toMatch(/^Synapse is not running yet/);
  });

  it('is active with backups configured from config and user secrets', async () => {
    const h = await harness();
    configureS3(h);
    const r = await hook(h, 'config-changed');
    expect(r.status).toEqual({
      status: 'active',
      message: `backups: s3://${minio.bucket} at ${minio.endpoint} (from config)`,
    });
    // The registration secret the charm owns (by label), then the two user secrets.
    expect(r.calls.filter((c) => c.tool === 'secret-get').map((c) => c.argv)).toEqual([
      ['--format=json', '--label', 'synapse-registration'],
      ['--format=json', expect.stringMatching(/^secret:/), '--refresh'],
      ['--format=json', expect.stringMatching(/^secret:/), '--refresh'],
    ]);
  });

  describe('active, with the backup problem and its fix in the message', () => {
    it('when the credentials secret is not granted, until it is granted', async () => {
      const h = await harness();
      const { creds } = configureS3(h);
      h.state.secrets[creds].granted = false;
      const r = await hook(h, 'config-changed');
      expect(r.status).toEqual({
        status: 'active',
        message: `backups: the secret in s3-credentials (${creds}) is not granted to synapse: juju grant-secret <secret name> synapse`,
      });
      h.grantSecret(creds);
      const after = await hook(h, 'secret-changed', { secretId: creds });
      expect(after.status?.status).toBe('active');
    });

    it('when the passphrase secret does not exist', async () => {
      const h = await harness();
      configureS3(h, { 'backup-passphrase': 'secret:d0esn0tex1st' });
      const r = await hook(h, 'config-changed');
      expect(r.status).toEqual({
        status: 'active',
        message:
          'backups: the secret in backup-passphrase (secret:d0esn0tex1st) was not found or is not granted to synapse: check juju secrets, juju grant-secret <secret name> synapse',
      });
    });

    it('when a secret lacks a key', async () => {
      const h = await harness();
      configureS3(h, { 's3-credentials': null });
      h.setConfig({ 's3-credentials': h.addSecret({ 'access-key': 'AKIAONLY' }) });
      const r = await hook(h, 'config-changed');
      expect(r.status).toEqual({
        status: 'active',
        message:
          'backups: the secret in s3-credentials has no secret-key key: juju update-secret <secret name> access-key=<...> secret-key=<...>',
      });
    });

    it('when backup-passphrase is unset', async () => {
      const h = await harness();
      configureS3(h, { 'backup-passphrase': null });
      const r = await hook(h, 'config-changed');
      expect(r.status).toEqual({
        status: 'active',
        message:
          'backups: backup-passphrase is not set: juju add-secret synapse-backup passphrase=<passphrase>, juju grant-secret synapse-backup synapse, then juju config synapse backup-passphrase=<secret URI>',
      });
    });

    it('when the bucket does not exist', async () => {
      const h = await harness();
      configureS3(h, { 's3-bucket': 'no-such-bucket' });
      const r = await hook(h, 'config-changed');
      expect(r.status).toEqual({
        status: 'active',
        message: `backups: cannot use bucket "no-such-bucket": bucket "no-such-bucket" does not exist at ${minio.endpoint}; set s3-bucket to an existing bucket, or create it`,
      });
    });

    it('when no bucket is set', async () => {
      const h = await harness();
      configureS3(h, { 's3-bucket': null });
      const r = await hook(h, 'config-changed');
      expect(r.status).toEqual({
        status: 'active',
        message: 'backups: no S3 bucket is set: juju config synapse s3-bucket=<name>',
      });
    });

    it('when the endpoint is unreachable', async () => {
      const h = await harness();
      const port = await freePort();
      configureS3(h, { 's3-endpoint': `http://127.0.0.1:${port}` });
      const r = await hook(h, 'config-changed');
      expect(r.status?.status).toBe('active');
      expect(r.status?.message).toBe(
        `backups: cannot use bucket "${minio.bucket}": the S3 endpoint http://127.0.0.1:${port} is unreachable (ECONNREFUSED); set s3-endpoint to the right URL, or fix the network`,
      );
    });

    it('when the credentials are wrong', async () => {
      const h = await harness();
      configureS3(h, { 's3-credentials': null });
      h.setConfig({
        's3-credentials': h.addSecret({
          'access-key': minio.accessKeyId,
          'secret-key': 'wrong-secret-key',
        }),
      });
      const r = await hook(h, 'config-changed');
      expect(r.status?.status).toBe('active');
      expect(r.status?.message).toMatch(
        new RegExp(
          `^backups: cannot use bucket "${minio.bucket}": access to bucket "${minio.bucket}" was denied \\(HTTP 403`,
        ),
      );
    });

    it('when the URI style is not host or path', async () => {
      const h = await harness();
      configureS3(h, { 's3-uri-style': 'sideways' });
      const r = await hook(h, 'config-changed');
      expect(r.status).toEqual({
        status: 'active',
        message:
          'backups: s3-uri-style "sideways" is not valid: juju config synapse s3-uri-style=path (or host)',
      });
    });

    it('when neither region nor endpoint is set', async () => {
      const h = await harness();
      configureS3(h, { 's3-endpoint': null });
      const r = await hook(h, 'config-changed');
      expect(r.status).toEqual({
        status: 'active',
        message:
          'backups: neither an S3 region nor an S3 endpoint is set: juju config synapse s3-region=<region> (or s3-endpoint=<url>)',
      });
    });

    it('when the endpoint is not a URL', async () => {
      const h = await harness();
      configureS3(h, { 's3-endpoint': 'minio:9000' });
      const r = await hook(h, 'config-changed');
      expect(r.status).toEqual({
        status: 'active',
        message: 'backups: the S3 endpoint "minio:9000" must start with http:// or https://',
      });
    });
  });

  describe('the s3-integrator relation', () => {
    it('the leader asks for a bucket on relation-joined; others do not', async () => {
      const h = await harness();
      h.setConfig({ 'server-name': 'example.com' });
      const rel = h.addRelation('backup', 's3-integrator');
      let r = await hook(h, 'backup-relation-joined');
      const set = r.calls.filter((c) => c.tool === 'relation-set');
      expect(set).toEqual([
        expect.objectContaining({
          argv: ['-r', String(rel.id), '--app', '--file', '-'],
          stdin: JSON.stringify({ bucket: `relation-${rel.id}` }),
        }),
      ]);
      expect(h.relation(rel.id).data.synapse).toEqual({ bucket: `relation-${rel.id}` });
      expect(r.status).toEqual({
        status: 'active',
        message:
          'backups: the backup relation has no S3 credentials yet: run juju run s3-integrator/leader sync-s3-credentials access-key=<key> secret-key=<secret>',
      });

      h.setConfig({ 's3-bucket': 'wanted-bucket' });
      r = await hook(h, 'config-changed');
      expect(h.relation(rel.id).data.synapse).toEqual({ bucket: 'wanted-bucket' });

      h.state.leader = false;
      r = await hook(h, 'backup-relation-joined');
      expect(r.calls.filter((c) => c.tool === 'relation-set')).toEqual([]);
    });

    it('wins over config, decodes JSON values, and hands back to config when broken', async () => {
      const h = await harness();
      // Config that would block (missing bucket) is ignored while the relation exists.
      configureS3(h, { 's3-bucket': 'no-such-bucket' });
      const rel = h.addRelation('backup', 's3-integrator', providerData());
      let r = await hook(h, 'backup-relation-changed');
      expect(r.status).toEqual({
        status: 'active',
        message: `backups: s3://${minio.bucket}/synapse-from-relation at ${minio.endpoint} (from the backup relation)`,
      });
      // The relation being broken no longer counts: config applies again.
      r = await hook(h, 'backup-relation-broken', { relationId: rel.id });
      expect(r.status?.message).toBe(
        `backups: cannot use bucket "no-such-bucket": bucket "no-such-bucket" does not exist at ${minio.endpoint}; set s3-bucket to an existing bucket, or create it`,
      );
      h.removeRelation(rel.id);
      h.setConfig({
        's3-bucket': null,
        's3-endpoint': null,
        's3-credentials': null,
        's3-uri-style': 'host',
      });
      r = await hook(h, 'update-status');
      expect(r.status).toEqual({ status: 'active', message: 'backups not configured' });
    });

    it.each([
      [
        'no bucket',
        { bucket: '' },
        "the backup relation's S3 settings are invalid: no S3 bucket is set; set bucket on s3-integrator: juju config s3-integrator bucket=<name>",
      ],
      [
        'neither region nor endpoint',
        { endpoint: '', region: '' },
        "the backup relation's S3 settings are invalid: neither an S3 region nor an S3 endpoint is set; set endpoint on s3-integrator (or the region, on AWS): juju config s3-integrator endpoint=<url>",
      ],
      [
        'a bad URI style',
        { 's3-uri-style': 'virtual' },
        'the backup relation\'s S3 settings are invalid: the S3 URI style "virtual" is not valid; set s3-uri-style on s3-integrator to "host" or "path": juju config s3-integrator s3-uri-style=<host|path>',
      ],
    ])('is active with the problem on %s from the provider', async (_what, data, message) => {
      const h = await harness();
      h.setConfig({
        'server-name': 'example.com',
        'backup-passphrase': h.addSecret({ passphrase: 'p4ssphrase' }),
      });
      const clean = Object.fromEntries(
        Object.entries(providerData(data)).filter(([, v]) => v !== ''),
      ) as Record<string, string>;
      h.addRelation('backup', 's3-integrator', clean);
      const r = await hook(h, 'backup-relation-changed');
      expect(r.status).toEqual({ status: 'active', message: `backups: ${message}` });
    });

    it("words an S3 error at HeadBucket in the provider's terms", async () => {
      const h = await harness();
      h.setConfig({
        'server-name': 'example.com',
        'backup-passphrase': h.addSecret({ passphrase: 'p4ssphrase' }),
      });
      h.addRelation('backup', 's3-integrator', providerData({ bucket: 'no-such-bucket' }));
      const r = await hook(h, 'backup-relation-changed');
      expect(r.status).toEqual({
        status: 'active',
        message: `backups: cannot use bucket "no-such-bucket": bucket "no-such-bucket" does not exist at ${minio.endpoint}; set bucket on s3-integrator to an existing bucket, or create it: juju config s3-integrator bucket=<name>`,
      });
    });
  });

  it('never lets a secret reach hook-tool argv, stdin, logs or output', () => {
    const calls = harnesses.flatMap((h) => h.calls);
    expect(calls.length).toBeGreaterThan(100);
    expect(calls.some((c) => c.tool === 'juju-log')).toBe(true);
    expect(findSecretLeaks(secrets, calls, outputs)).toEqual([]);
  });
});
