/**
 * Issue #16, "a Synapse an operator can actually run", through the built
 * charm's dispatch with fake hook tools and a real Pebble: the unit is active
 * only when Synapse answers /health (the fake Synapse's HTTP face,
 * tests/support/fake-synapse/http.mjs), Pebble's alive check and the
 * check-failed/-recovered hooks, the workload version, open-port, HeadBucket
 * only when the S3 settings change, and one homeserver per application.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import type { AddressInfo } from 'node:net';
import { parse as parseYaml } from 'yaml';
import { JujuHarness, type DispatchResult } from '../support/juju-harness';
import { describeWithPeers, freePort, startPebble, type PebblePeer } from '../support/peers';

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

const SINGLE_UNIT =
  'Synapse runs as a single unit: scale back to 1 (juju scale-application synapse 1)';

describeWithPeers(['pebble'])('operating Synapse', () => {
  let pebble: PebblePeer;

  beforeEach(async () => {
    pebble = await startPebble();
  });

  afterEach(async () => {
    await pebble.stop();
  });

  async function hook(h: JujuHarness, name: string, env?: Record<string, string>) {
    const r: DispatchResult = await h.hook(name, { env });
    if (r.exitCode !== 0) throw new Error(`${name} exited ${r.exitCode}: ${r.stderr}`);
    return r;
  }

  it('fresh deploy: active once /health answers, version set, 8008/tcp open, alive check with restart', async () => {
    const h = await JujuHarness.create({ pebbleSocket: pebble.socketPath });
    h.setConfig({ 'server-name': 'example.com' });
    const r = await hook(h, 'synapse-pebble-ready');
    expect(r.status).toEqual({ status: 'active', message: 'backups not configured' });
    expect(h.state.version).toBe('1.163.2-fake');
    expect(h.state.openPorts).toEqual(['8008/tcp']);
    const plan = await pebbleGet<string>(pebble.socketPath, '/v1/plan?format=yaml');
    expect(plan).toMatch(/on-check-failure:\s+synapse-health: restart/);
    expect(plan).toMatch(/synapse-health:\s+override: replace\s+level: alive/);
    expect(plan).toMatch(/http:\s+url: http:\/\/127\.0\.0\.1:\d+\/health/);

    // The registration shared secret: a Juju app secret the leader creates (content
    // through a file, not argv), merged into homeserver.yaml with every other key kept.
    const owned = Object.values(h.state.secrets).filter((x) => x.label === 'synapse-registration');
    expect(owned).toHaveLength(1);
    expect(owned[0].owner).toBe('application');
    const shared = owned[0].content['registration-shared-secret'];
    expect(shared).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const config = parseYaml(fs.readFileSync(path.join(h.dataDir, 'homeserver.yaml'), 'utf8'));
    expect(config).toMatchObject({
      server_name: 'example.com',
      report_stats: false,
      registration_shared_secret: shared,
    });
    const add = r.calls.find((c) => c.tool === 'secret-add')!;
    expect(add.argv).toEqual([
      '--owner',
      'application',
      '--label',
      'synapse-registration',
      '--file',
      expect.stringMatching(/content\.json$/),
    ]);
    const again = await hook(h, 'config-changed');
    expect(again.calls.filter((c) => c.tool === 'secret-add')).toEqual([]);
    expect(JSON.stringify([...r.calls, ...again.calls])).not.toContain(shared);
  });

  it('waits while /health fails, reports a failed Pebble check, and is active after it recovers', async () => {
    const h = await JujuHarness.create({ pebbleSocket: pebble.socketPath });
    h.setConfig({ 'server-name': 'example.com' });
    await hook(h, 'synapse-pebble-ready');
    const sick = path.join(h.dataDir, 'fake-unhealthy');
    fs.writeFileSync(sick, '');
    const reason = expect.stringMatching(
      /^Synapse runs but does not answer yet \(http:\/\/127\.0\.0\.1:\d+\/health: HTTP 503\)$/,
    );
    let r = await hook(h, 'update-status');
    expect(r.status).toEqual({ status: 'waiting', message: reason });
    r = await hook(h, 'synapse-pebble-check-failed', {
      JUJU_WORKLOAD_NAME: 'synapse',
      JUJU_PEBBLE_CHECK_NAME: 'synapse-health',
    });
    expect(r.status?.status).toBe('waiting');
    expect(r.status?.message).toMatch(
      /^Synapse failed its Pebble check synapse-health and Pebble restarts it: Synapse runs but does not answer yet \(.*HTTP 503\)$/,
    );
    fs.rmSync(sick);
    r = await hook(h, 'synapse-pebble-check-recovered', {
      JUJU_WORKLOAD_NAME: 'synapse',
      JUJU_PEBBLE_CHECK_NAME: 'synapse-health',
    });
    expect(r.status).toEqual({ status: 'active', message: 'backups not configured' });
  });

  it('a process that runs but never serves is not active', async () => {
    const port = await freePort();
    const h = await JujuHarness.create({
      pebbleSocket: pebble.socketPath,
      synapseUrl: `http://127.0.0.1:${port}`,
      env: { SYNAPSE_CHARM_HEALTH_WAIT_MS: '1500' },
    });
    h.setConfig({ 'server-name': 'example.com' });
    const r = await hook(h, 'synapse-pebble-ready');
    expect(r.status).toEqual({
      status: 'waiting',
      message: `Synapse runs but does not answer yet (http://127.0.0.1:${port}/health: connection refused)`,
    });
    expect(h.state.version).toBeUndefined();
  });

  it('HeadBucket runs only when the S3 settings change, never in update-status; S3 down stays active', async () => {
    let heads = 0;
    let down = false;
    const s3 = http.createServer((req, res) => {
      if (req.method === 'HEAD') heads++;
      if (down) return req.socket.destroy();
      res.writeHead(200);
      res.end();
    });
    await new Promise<void>((r) => s3.listen(0, '127.0.0.1', r));
    const endpoint = `http://127.0.0.1:${(s3.address() as AddressInfo).port}`;
    try {
      const h = await JujuHarness.create({ pebbleSocket: pebble.socketPath });
      h.setConfig({
        'server-name': 'example.com',
        's3-endpoint': endpoint,
        's3-bucket': 'media',
        's3-uri-style': 'path',
        's3-credentials': h.addSecret({ 'access-key': 'AKIATEST', 'secret-key': 'sekrit-key-1' }),
        'backup-passphrase': h.addSecret({ passphrase: 'a long passphrase' }),
      });
      const ok = { status: 'active', message: `backups: s3://media at ${endpoint} (from config)` };
      expect((await hook(h, 'config-changed')).status).toEqual(ok);
      expect(heads).toBe(1);
      expect((await hook(h, 'update-status')).status).toEqual(ok);
      expect((await hook(h, 'config-changed')).status).toEqual(ok);
      expect(heads).toBe(1);
      // S3 goes down: the unit stays active and does not ask S3 again.
      down = true;
      expect((await hook(h, 'update-status')).status).toEqual(ok);
      expect(heads).toBe(1);
      // New settings are checked: the problem is in the active status.
      h.setConfig({ 's3-bucket': 'media2' });
      const r = await hook(h, 'config-changed');
      expect(r.status?.status).toBe('active');
      expect(r.status?.message).toMatch(/^backups: cannot use bucket "media2": /);
      expect(heads).toBeGreaterThan(1);
      const afterCheck = heads;
      const again = await hook(h, 'update-status');
      expect(again.status?.message).toMatch(
        /^backups: cannot use bucket "media2": .*\(checked \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; list-backups checks again\)$/,
      );
      expect(heads).toBe(afterCheck);
      expect(JSON.stringify(h.calls)).not.toContain('sekrit-key-1');
    } finally {
      s3.close();
    }
  });

  it('2 units: the non-leader is blocked, does not start Synapse, and refuses backup actions', async () => {
    const h = await JujuHarness.create({ pebbleSocket: pebble.socketPath, unit: 'synapse/1' });
    h.state.leader = false;
    h.setConfig({ 'server-name': 'example.com' });
    const r = await hook(h, 'synapse-pebble-ready');
    expect(r.statuses).toEqual([{ status: 'blocked', message: SINGLE_UNIT }]);
    expect(fs.existsSync(path.join(h.dataDir, 'homeserver.yaml'))).toBe(false);
    const services = await pebbleGet<unknown[]>(pebble.socketPath, '/v1/services?names=synapse');
    expect(services).toEqual([]);
    expect(h.state.openPorts).toBeUndefined();
    const a = await h.action('create-backup');
    expect(a.failed).toBe(true);
    expect(a.failMessage).toBe(SINGLE_UNIT);
    expect(a.statuses).toEqual([]);
  });
});
