/**
 * Issue #16's "Done means": the unit and application status an operator sees
 * (`juju status`) for a fresh deploy, after ingress, during a backup, during a
 * restore, with S3 down and with 2 units, through the built charm's dispatch
 * with fake hook tools, a real Pebble (the fake Synapse) and a real MinIO.
 * Each case is asserted; the table goes to build/status-evidence.txt.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { JujuHarness, REPO_ROOT, type StatusValue } from '../support/juju-harness';
import {
  describeWithPeers,
  startMinio,
  startPebble,
  type MinioPeer,
  type PebblePeer,
} from '../support/peers';

const EVIDENCE = path.join(REPO_ROOT, 'build', 'status-evidence.txt');
const SINGLE_UNIT =
  'Synapse runs as a single unit: scale back to 1 (juju scale-application synapse 1)';

interface Step {
  unit: StatusValue[];
  app: StatusValue[];
}

describeWithPeers(['minio', 'pebble'])('status evidence', () => {
  let minio: MinioPeer;
  let pebble: PebblePeer;
  let h: JujuHarness;
  const table: string[] = [];

  beforeAll(async () => {
    minio = await startMinio();
    pebble = await startPebble();
    h = await JujuHarness.create({ pebbleSocket: pebble.socketPath });
  });

  afterAll(async () => {
    fs.mkdirSync(path.dirname(EVIDENCE), { recursive: true });
    fs.writeFileSync(EVIDENCE, `${table.join('\n')}\n`);
    console.log(table.join('\n'));
    await pebble?.stop();
    await minio?.stop().catch(() => undefined);
  });

  /** Runs `fn` and returns every unit and application status it set, in order. */
  async function statuses(fn: () => Promise<{ exitCode: number | null }>): Promise<Step> {
    const before = h.state.statusHistory?.length ?? 0;
    const r = await fn();
    expect(r.exitCode).toBe(0);
    const seen = (h.state.statusHistory ?? []).slice(before);
    const pick = (which: string) =>
      seen.filter((s) => s.which === which).map(({ status, message }) => ({ status, message }));
    return { unit: pick('unit'), app: pick('app') };
  }

  function record(name: string, step: Step): void {
    const line = (s: StatusValue) => `${s.status.padEnd(11)} ${s.message}`;
    table.push(`## ${name}`);
    for (const s of step.unit) table.push(`  unit synapse/0  ${line(s)}`);
    for (const s of step.app) table.push(`  app  synapse    ${line(s)}`);
  }

  const backups = () => `backups: s3://${minio.bucket}/synapse at ${minio.endpoint} (from config)`;
  let backupId = '';

  it('fresh deploy', async () => {
    h.setConfig({
      'server-name': 'example.com',
      's3-endpoint': minio.endpoint,
      's3-bucket': minio.bucket,
      's3-path': 'synapse',
      's3-uri-style': 'path',
      's3-credentials': h.addSecret({
        'access-key': minio.accessKeyId,
        'secret-key': minio.secretAccessKey,
      }),
      'backup-passphrase': h.addSecret({ passphrase: 'evidence passphrase 16' }),
    });
    await statuses(() => h.hook('install'));
    const step = await statuses(() => h.hook('synapse-pebble-ready'));
    record('fresh deploy (install, synapse-pebble-ready)', step);
    const active = { status: 'active', message: backups() };
    expect(step.unit.at(-1)).toEqual(active);
    expect(step.app.at(-1)).toEqual(active);
  });

  it('after ingress', async () => {
    const rel = h.addRelation('ingress', 'traefik');
    const joined = await statuses(() => h.hook('ingress-relation-joined'));
    record('ingress related, no URL yet (ingress-relation-joined)', joined);
    expect(joined.unit.at(-1)).toEqual({
      status: 'active',
      message: `ingress: waiting for a URL from traefik; ${backups()}`,
    });
    h.relation(rel.id).data.traefik = {
      ingress: JSON.stringify({ url: 'https://matrix.example.com/test-model-synapse' }),
    };
    const step = await statuses(() => h.hook('ingress-relation-changed'));
    record('after ingress (ingress-relation-changed with the URL)', step);
    const active = {
      status: 'active',
      message: `public_baseurl https://matrix.example.com/test-model-synapse/ (from ingress); ${backups()}`,
    };
    expect(step.unit.at(-1)).toEqual(active);
    expect(step.app.at(-1)).toEqual(active);
  });

  it('during a backup', async () => {
    let results: Record<string, unknown> = {};
    const step = await statuses(async () => {
      const r = await h.action('create-backup');
      results = r.results;
      expect(r.failed).toBe(false);
      return r;
    });
    backupId = String(results['backup-id']);
    record('during a backup (create-backup), then after it', step);
    const during = { status: 'maintenance', message: 'creating backup ...' };
    expect(step.unit[0]).toEqual(during);
    expect(step.app[0]).toEqual(during);
    expect(step.unit.at(-1)?.status).toBe('active');
    expect(step.app.at(-1)?.status).toBe('active');
  });

  it('during a restore', async () => {
    const step = await statuses(async () => {
      const r = await h.action('restore-backup', { 'backup-id': backupId });
      expect(r.failMessage).toBeUndefined();
      return r;
    });
    record(`during a restore (restore-backup backup-id=${backupId}), then after it`, step);
    const during = [
      {
        status: 'maintenance',
        message: `restoring backup ${backupId}: staging it (Synapse still serves)`,
      },
      { status: 'maintenance', message: `restoring backup ${backupId}: Synapse stopped` },
    ];
    expect(step.unit.slice(0, 2)).toEqual(during);
    expect(step.app.slice(0, 2)).toEqual(during);
    expect(step.unit.at(-1)?.status).toBe('active');
    expect(step.app.at(-1)?.status).toBe('active');
  });

  it('with S3 down', async () => {
    await minio.stop();
    const hookStep = await statuses(() => h.hook('update-status'));
    record('S3 down, update-status (no S3 request in hooks)', hookStep);
    expect(hookStep.unit.at(-1)?.status).toBe('active');
    expect(hookStep.unit.at(-1)?.message).toContain(backups());
    let failed = '';
    const step = await statuses(async () => {
      const r = await h.action('list-backups');
      failed = r.failMessage ?? '';
      return r;
    });
    record(`S3 down, after list-backups failed ("${failed}")`, step);
    expect(failed).toMatch(/^cannot list/);
    for (const s of [step.unit.at(-1), step.app.at(-1)]) {
      expect(s?.status).toBe('active');
      expect(s?.message).toMatch(
        /^public_baseurl \S+ \(from ingress\); backups: .*\(checked \d{4}-\d\d-\d\dT[\d:]+Z; list-backups checks again\)$/,
      );
    }
  });

  it('with 2 units', async () => {
    const peers = h.addRelation('synapse-peers', 'synapse');
    h.relation(peers.id).remoteUnits = ['synapse/1'];
    const step = await statuses(() => h.hook('synapse-peers-relation-joined'));
    record('2 units: the leader synapse/0 (synapse-peers-relation-joined)', step);
    expect(step.unit.at(-1)?.status).toBe('active');
    expect(step.app.at(-1)).toEqual({ status: 'blocked', message: `2 units: ${SINGLE_UNIT}` });

    const other = await JujuHarness.create({ pebbleSocket: pebble.socketPath, unit: 'synapse/1' });
    other.state.leader = false;
    other.setConfig({ 'server-name': 'example.com' });
    const r = await other.hook('synapse-pebble-ready');
    table.push('## 2 units: synapse/1 (not the leader; synapse-pebble-ready)');
    for (const s of r.statuses) table.push(`  unit synapse/1  ${s.status.padEnd(11)} ${s.message}`);
    expect(r.statuses).toEqual([{ status: 'blocked', message: SINGLE_UNIT }]);
    expect(other.state.statusHistory?.some((s) => s.which === 'app')).toBe(false);
  });
});
