/**
 * The integration scenario, written once against a Deployment (deployment.ts): an operator
 * deploys the charm, registers a user, points backups at S3, backs up, changes data through
 * the Matrix API, restores, and finds Synapse serving the backup's state; then deletes and
 * prunes backups, and gets a specific failure for each kind of bad input.
 *
 *   npm run test:integration                      the local backend (real Pebble, Synapse, MinIO)
 *   npm run test:integration -- --backend kind    a Juju controller on Kind (see README)
 *
 * Every test name contains "integration scenario". The steps share one deployment and run
 * in order: each needs what the earlier ones made.
 */
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from '../support/juju-harness';
import { MatrixClient, MatrixError, makePng, type Session } from '../support/matrix-client';
import { requirePeers } from '../support/peers';
import {
  selectedBackend,
  type ActionOutcome,
  type Deployment,
  type Params,
  type S3Target,
} from './deployment';
import { KindDeployment } from './kind-deployment';
import { LocalDeployment } from './local-deployment';

const SERVER = 'integration.test';
const PREFIX = 'synapse/integration';
const USER = 'alice';
/** The s3-integrator track whose interface (s3 v0: keys in the databag) the charm reads. */
const S3_INTEGRATOR_CHANNEL = '1/stable';
const UNKNOWN_ID = '19990101000000';

const backend = selectedBackend();
/** Every action run, as `juju run` shows it (secrets left out): for the closing note. */
const TRANSCRIPT = path.join(REPO_ROOT, 'build', `integration-transcript-${backend}.txt`);

/** Local needs the peers (a failure under CI=true); kind needs juju and kubectl on PATH. */
function ready(): boolean {
  if (backend === 'local') return requirePeers('minio', 'pebble', 'synapse');
  for (const [tool, ...args] of [
    ['juju', 'version'],
    ['kubectl', 'version', '--client'],
  ]) {
    try {
      execFileSync(tool, args, { stdio: 'ignore' });
    } catch {
      throw new Error(`the kind backend needs ${tool} on PATH (see README, "Integration tests")`);
    }
  }
  return true;
}

const scenario = ready() ? describe : describe.skip;

/** A failed action's message, or its results when it did not fail (for a clear diff). */
const failure = (r: ActionOutcome) => (r.failed ? r.message : { succeeded: r.results });
/** Asserts that an action succeeded, showing its failure message when not. */
const succeeded = (r: ActionOutcome) =>
  expect(r.failed ? r.message : 'succeeded').toBe('succeeded');

scenario(`integration scenario on the ${backend} backend`, () => {
  const d: Deployment = backend === 'kind' ? new KindDeployment() : new LocalDeployment();
  const passphrase = randomBytes(24).toString('base64');
  let s3: S3Target;
  let password: string;
  let alice: Session;
  let roomId: string;
  const before = { messages: [] as string[], media: new Map<string, Buffer>() };
  const later = { message: 'written after the backup', mxc: '' };
  let backupId: string;
  let created: ActionOutcome;
  /** The active unit's message once backups are configured. */
  let whereBackups: string;
  let passUri: string;

  const secrets = [passphrase];
  /** d.runAction, recorded in the transcript with every secret value redacted. */
  const act = async (name: string, params: Params = {}, unit = d.unit) => {
    const r = await d.runAction(name, params, unit);
    if (typeof r.results.password === 'string') secrets.push(r.results.password);
    const shown = Object.entries(params).map(([k, v]) => `${k}=${String(v)}`);
    const lines = [`$ juju run ${unit} ${name} ${shown.join(' ')}`.trimEnd()];
    for (const log of r.logs) lines.push(`  log: ${log}`);
    if (r.failed) lines.push(`Action failed: ${r.message}`);
    else lines.push(...JSON.stringify(r.results, null, 2).split('\n'));
    let text = lines.join('\n');
    for (const secret of [...secrets, s3?.secretKey].filter((x) => x)) {
      text = text.split(secret as string).join('<redacted>');
    }
    fs.appendFileSync(TRANSCRIPT, `${text}\n\n`);
    return r;
  };
  const matrix = async () => new MatrixClient(await d.synapseUrl());
  const ids = async (): Promise<string[]> => {
    const r = await act('list-backups');
    succeeded(r);
    const backups = r.results.backups as Record<string, { id?: string }> | undefined;
    return Object.entries(backups ?? {}).map(([key, b]) => b.id ?? key);
  };

  beforeAll(async () => {
    fs.mkdirSync(path.dirname(TRANSCRIPT), { recursive: true });
    fs.writeFileSync(TRANSCRIPT, '');
    s3 = await d.prepareS3();
  }, 600_000);

  afterAll(async () => {
    console.log(`integration scenario (${backend}): action transcript in ${TRANSCRIPT}`);
    await d.destroy();
  }, 120_000);

  it('integration scenario: deploy with server-name; the unit goes active and Synapse answers', async () => {
    await d.deploy({ 'server-name': SERVER });
    const status = await d.waitForStatus({ status: 'active' });
    expect(status).toEqual({ status: 'active', message: 'backups not configured' });
    const health = await fetch(`${await d.synapseUrl()}/health`);
    expect(await health.text()).toBe('OK');
    const versions = await (
      await matrix()
    ).request<{ versions: string[] }>('GET', '/_matrix/client/versions');
    expect(versions.versions).toContain('v1.11');
  }, 1_200_000);

  it('integration scenario: bad input: nothing configured; each backup action says what to configure', async () => {
    const text =
      'backups are not configured: relate an s3-integrator (juju integrate synapse:backup s3-integrator) ' +
      'or set s3-bucket, s3-region or s3-endpoint and s3-credentials (juju config synapse ...), and set backup-passphrase';
    expect(failure(await act('create-backup'))).toBe(text);
    expect(failure(await act('list-backups'))).toBe(text);
    expect(failure(await act('restore-backup', { 'backup-id': UNKNOWN_ID }))).toBe(text);
  });

  it('integration scenario: register-user; the user logs in with the password it returns', async () => {
    const r = await act('register-user', { username: USER, admin: true });
    succeeded(r);
    expect(r.results).toEqual({
      'user-id': `@${USER}:${SERVER}`,
      admin: 'true',
      password: expect.stringMatching(/^[A-Za-z0-9_-]{32}$/),
    });
    password = String(r.results.password);
    const client = await matrix();
    alice = await client.login(USER, password);
    expect(alice.userId).toBe(`@${USER}:${SERVER}`);
    await client.unlimit(alice, alice.userId);
  });

  it(`integration scenario: S3 through ${backend === 'kind' ? 's3-integrator' : 'config and secrets'}; the unit says where backups go`, async () => {
    passUri = await d.addSecret('synapse-backup', { passphrase });
    await d.grantSecret('synapse-backup');
    if (d.hasCharmhub) {
      await d.setConfig({ 'backup-passphrase': passUri });
      await d.deployCharmhub('s3-integrator', {
        channel: S3_INTEGRATOR_CHANNEL,
        config: { endpoint: s3.endpoint, bucket: s3.bucket, path: PREFIX, 's3-uri-style': 'path' },
      });
      const sync = await act(
        'sync-s3-credentials',
        { 'access-key': s3.accessKey, 'secret-key': s3.secretKey },
        's3-integrator/leader',
      );
      succeeded(sync);
      await d.integrate('backup', 's3-integrator');
      whereBackups = `backups: s3://${s3.bucket}/${PREFIX} at ${s3.endpoint} (from the backup relation)`;
    } else {
      const credsUri = await d.addSecret('synapse-s3', {
        'access-key': s3.accessKey,
        'secret-key': s3.secretKey,
      });
      await d.grantSecret('synapse-s3');
      await d.setConfig({
        's3-endpoint': s3.endpoint,
        's3-bucket': s3.bucket,
        's3-path': PREFIX,
        's3-credentials': credsUri,
        'backup-passphrase': passUri,
      });
      whereBackups = `backups: s3://${s3.bucket}/${PREFIX} at ${s3.endpoint} (from config)`;
    }
    await d.waitForStatus({ status: 'active', message: whereBackups });
    expect(await ids()).toEqual([]);
  }, 900_000);

  it('integration scenario: messages and media through the Matrix API before the backup', async () => {
    const client = await matrix();
    roomId = await client.createRoom(alice, 'integration');
    for (let i = 0; i < 5; i++) {
      const text = `before the backup ${i}`;
      await client.sendText(alice, roomId, text);
      before.messages.push(text);
    }
    for (let i = 0; i < 2; i++) {
      const png = makePng(40 + i, 30, i);
      before.media.set(await client.upload(alice, png, 'image/png', `before-${i}.png`), png);
    }
    expect(await client.messages(alice, roomId)).toEqual(before.messages);
  });

  it('integration scenario: create-backup reports a complete backup', async () => {
    created = await act('create-backup');
    succeeded(created);
    expect(created.results).toEqual(
      expect.objectContaining({
        'backup-id': expect.stringMatching(/^\d{14}$/),
        size: expect.stringMatching(/^\d+$/),
        files: expect.stringMatching(/^\d+$/),
        sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      }),
    );
    backupId = String(created.results['backup-id']);
    expect(Number(created.results.files)).toBeGreaterThan(before.media.size);
    await d.waitForStatus({ status: 'active', message: whereBackups });
  }, 900_000);

  it('integration scenario: list-backups shows it complete', async () => {
    const r = await act('list-backups');
    succeeded(r);
    const backups = r.results.backups as Record<string, Record<string, string>>;
    expect(Object.keys(backups)).toEqual([backupId]);
    expect(backups[backupId]).toEqual(
      expect.objectContaining({ status: 'complete', size: created.results.size }),
    );
    expect(String(r.results.formatted)).toMatch(new RegExp(`^${backupId}\\s.*\\scomplete$`, 'm'));
  });

  it('integration scenario: verify-backup checks every file against the manifest', async () => {
    const r = await act('verify-backup', { 'backup-id': backupId });
    succeeded(r);
    expect(r.results).toEqual(
      expect.objectContaining({
        'backup-id': backupId,
        files: created.results.files,
        sha256: created.results.sha256,
      }),
    );
  }, 900_000);

  it('integration scenario: change data through the Matrix API (a message, media)', async () => {
    const client = await matrix();
    await client.sendText(alice, roomId, later.message);
    const png = makePng(25, 25, 77);
    later.mxc = await client.upload(alice, png, 'image/png', 'later.png');
    expect(await client.download(alice, later.mxc)).toEqual(png);
    expect(await client.messages(alice, roomId)).toEqual([...before.messages, later.message]);
  });

  it('integration scenario: restore-backup brings the backup back and the unit is active again', async () => {
    const r = await act('restore-backup', { 'backup-id': backupId });
    succeeded(r);
    expect(r.results).toEqual(
      expect.objectContaining({ 'backup-id': backupId, files: created.results.files }),
    );
    await d.waitForStatus({ status: 'active', message: whereBackups });
  }, 900_000);

  it("integration scenario: Synapse serves the backup's state: the later message and media are gone, the earlier ones are there", async () => {
    const client = await matrix();
    const session = await client.login(USER, password);
    expect(await client.messages(session, roomId)).toEqual(before.messages);
    for (const [mxc, png] of before.media) expect(await client.download(session, mxc)).toEqual(png);
    const gone = await client.download(session, later.mxc).then(
      () => 200,
      (err: unknown) => (err instanceof MatrixError ? err.status : -1),
    );
    expect(gone).toBe(404);
    // In the workload: nothing of the restore left beside the data, the data Synapse's (991).
    const ls = await d.exec(['ls', '-A', d.dataDir]);
    expect(ls.exitCode).toBe(0);
    const names = ls.stdout.split('\n').filter(Boolean);
    expect(names).toEqual(
      expect.arrayContaining(['homeserver.yaml', 'homeserver.db', 'media_store']),
    );
    expect(
      names.filter((n) => /^\.(synapse-restore|pre-restore|synapse-swap|synapse-backup)/.test(n)),
    ).toEqual([]);
    const owner = await d.exec(['stat', '-c', '%u', `${d.dataDir}/homeserver.db`]);
    expect(owner.stdout.trim()).toBe('991');
  });

  it('integration scenario: delete-backup removes it; list-backups no longer shows it', async () => {
    const r = await act('delete-backup', { 'backup-id': backupId });
    succeeded(r);
    expect(r.results).toEqual(
      expect.objectContaining({ 'backup-id': backupId, 'deleted-objects': '2' }),
    );
    expect(await ids()).toEqual([]);
  });

  let kept: string;

  it('integration scenario: prune-backups applies backup-retention (dry run first) and keeps the newest', async () => {
    const first = await act('create-backup');
    succeeded(first);
    const second = await act('create-backup');
    succeeded(second);
    const [older, newer] = [first, second].map((r) => String(r.results['backup-id']));
    expect(newer > older).toBe(true);
    await d.setConfig({ 'backup-retention': 'keep-last=1' });
    const dry = await act('prune-backups', { 'dry-run': true });
    succeeded(dry);
    expect(dry.results).toEqual(expect.objectContaining({ 'dry-run': 'true', forgotten: older }));
    expect((await ids()).sort()).toEqual([older, newer]);
    const pruned = await act('prune-backups');
    succeeded(pruned);
    expect(pruned.results).toEqual(
      expect.objectContaining({ 'dry-run': 'false', forgotten: older }),
    );
    expect(await ids()).toEqual([newer]);
    kept = newer;
    await d.setConfig({ 'backup-retention': null });
  }, 1_800_000);

  if (backend === 'kind') {
    it('integration scenario: workload-exec=kubernetes after juju trust --scope=cluster backs up and verifies', async () => {
      await d.trust();
      await d.setConfig({ 'workload-exec': 'kubernetes' });
      try {
        const r = await act('create-backup');
        succeeded(r);
        const id = String(r.results['backup-id']);
        const v = await act('verify-backup', { 'backup-id': id });
        succeeded(v);
        expect(v.results.sha256).toBe(r.results.sha256);
        const del = await act('delete-backup', { 'backup-id': id });
        succeeded(del);
      } finally {
        await d.setConfig({ 'workload-exec': null });
      }
    }, 1_800_000);

    it("integration scenario: the README's command line, backup-id=<digits> unquoted, verifies", async () => {
      // juju run reads key=value as YAML: 20261126070000 is an integer there, which the
      // action's schema accepts ([string, integer]). An operator types what the README shows.
      const r = await (d as KindDeployment).runActionArgs('verify-backup', [`backup-id=${kept}`]);
      succeeded(r);
      expect(r.results['backup-id']).toBe(kept);
    }, 900_000);
  }

  it('integration scenario: bad input: a wrong passphrase fails verify and restore, and the live data stays', async () => {
    const wrong = await d.addSecret('synapse-backup-wrong', { passphrase: `${passphrase}-wrong` });
    await d.grantSecret('synapse-backup-wrong');
    await d.setConfig({ 'backup-passphrase': wrong });
    const text = `cannot decrypt backup ${kept}: the passphrase does not match the one it was encrypted with; set backup-passphrase to the passphrase in use when this backup was made`;
    try {
      expect(failure(await act('verify-backup', { 'backup-id': kept }))).toBe(text);
      expect(failure(await act('restore-backup', { 'backup-id': kept }))).toBe(text);
    } finally {
      await d.setConfig({ 'backup-passphrase': passUri });
    }
    await d.waitForStatus({ status: 'active', message: whereBackups });
    const client = await matrix();
    const session = await client.login(USER, password);
    expect(await client.messages(session, roomId)).toEqual(before.messages);
  }, 900_000);

  it('integration scenario: bad input: an unknown backup id fails verify, restore and delete, naming list-backups', async () => {
    for (const action of ['verify-backup', 'restore-backup', 'delete-backup']) {
      const r = await act(action, { 'backup-id': UNKNOWN_ID });
      expect([action, failure(r)]).toEqual([
        action,
        `backup ${UNKNOWN_ID} does not exist under prefix "${PREFIX}/" in bucket "${s3.bucket}"; run list-backups to see the ids; s3-path (or path on the s3-integrator) must be the one the backup was created with`,
      ]);
    }
    expect(await ids()).toEqual([kept]);
  }, 900_000);
});
