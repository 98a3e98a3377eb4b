/**
 * The settings options and the ingress URL on a real Synapse (matrix-synapse 1.163 from
 * PyPI in a real Pebble, tests/support/real-synapse.ts), run by the built charm's hooks:
 * Synapse starts with what the charm wrote and reports it through its own API. Every test
 * name holds "real Synapse".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { JujuHarness } from './support/juju-harness';
import type { Session } from './support/matrix-client';
import { describeWithPeers } from './support/peers';
import { type RealSynapseUnit, SYNAPSE_URL, startRealSynapseUnit } from './support/real-synapse';

const SERVER = 'settings.test';
const MIB = 1024 * 1024;

async function getJson(
  urlPath: string,
  init: RequestInit = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${SYNAPSE_URL}${urlPath}`, {
    ...init,
    signal: AbortSignal.timeout(30_000),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describeWithPeers(['pebble', 'synapse'])('settings on a real Synapse', () => {
  let unit: RealSynapseUnit;
  let h: JujuHarness;
  let bob: Session;

  beforeAll(async () => {
    unit = await startRealSynapseUnit({
      serverName: SERVER,
      configure: (harness) =>
        harness.setConfig({
          'public-baseurl': 'https://matrix.settings.test',
          'enable-registration': true,
          'max-upload-size': '7M',
          'federation-domain-whitelist': 'settings.test,matrix.org',
          'report-stats': false,
          'log-level': 'WARNING',
        }),
    });
    h = unit.h;
  });

  afterAll(async () => {
    await unit?.stop();
  });

  const uploadLimit = async () =>
    (
      await getJson('/_matrix/client/v1/media/config', {
        headers: { authorization: `Bearer ${bob.accessToken}` },
      })
    ).body['m.upload.size'];

  // Starting (and restarting) Synapse: generate, the charm's own health wait (90 s at most in
  // this rig) and ours; a loaded CI machine needs more than jest's default for that.
  const START_TIMEOUT = 300_000;

  /**
   * Runs `hook`, failing with its output and Pebble's log (Synapse's) unless it exits 0 and,
   * with `active`, leaves the unit active.
   */
  async function hookOk(name: string, options?: Parameters<JujuHarness['hook']>[1], active = true) {
    const started = Date.now();
    const run = await h.hook(name, options);
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    if (run.exitCode !== 0 || (active && run.status?.status !== 'active')) {
      throw new Error(
        `${name} (${seconds} s): exit ${run.exitCode}, status ${JSON.stringify(run.status)}\n` +
          `${run.stderr}\nPebble's log:\n${unit.pebbleLog()}`,
      );
    }
    return run;
  }

  it(
    'real Synapse: config-changed and pebble-ready start it with the settings the charm merged',
    async () => {
      await hookOk('config-changed', {}, false);
      const ready = await hookOk('synapse-pebble-ready');
      expect(ready.status).toEqual({
        status: 'active',
        message:
          'public_baseurl https://matrix.settings.test/ (from public-baseurl); backups not configured',
      });
      await unit.waitHealthy();
    },
    START_TIMEOUT,
  );

  it('real Synapse: it reports the settings the charm merged into homeserver.yaml', async () => {
    // public_baseurl: Synapse serves it as the client's base URL.
    const wellKnown = await getJson('/.well-known/matrix/client');
    expect(wellKnown.body).toEqual({
      'm.homeserver': { base_url: 'https://matrix.settings.test/' },
    });
    // enable_registration with the registration token the charm added (Synapse refuses open
    // registration without verification): registration is on, and asks for a token.
    const register = await getJson('/_matrix/client/v3/register', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    expect(register.status).toBe(401);
    const flows = (register.body.flows as { stages: string[] }[]).map((f) => f.stages);
    expect(flows.length).toBeGreaterThan(0);
    for (const stages of flows) expect(stages).toContain('m.login.registration_token');
    // max_upload_size: the media config a client reads.
    const r = await h.action('register-user', { username: 'bob' });
    expect(r.failMessage).toBeUndefined();
    bob = await unit.client.login('bob', r.results.password as string);
    expect(await uploadLimit()).toBe(7 * MIB);
    // report_stats, the whitelist and the log level as written (Synapse accepted them: it runs).
    const config = parseYaml(
      fs.readFileSync(path.join(unit.dataDir, 'homeserver.yaml'), 'utf8'),
    ) as Record<string, unknown>;
    expect(config).toMatchObject({
      report_stats: false,
      federation_domain_whitelist: ['settings.test', 'matrix.org'],
      registration_requires_token: true,
    });
    const logConfig = parseYaml(fs.readFileSync(config.log_config as string, 'utf8')) as {
      root: { level: string };
    };
    expect(logConfig.root.level).toBe('WARNING');
  });

  it(
    'real Synapse: a changed value restarts it with the new value; a wrong one blocks and changes nothing',
    async () => {
      h.setConfig({ 'max-upload-size': '9M' });
      const changed = await hookOk('config-changed');
      expect(changed.status?.status).toBe('active');
      await unit.waitHealthy();
      expect(await uploadLimit()).toBe(9 * MIB);

      const file = path.join(unit.dataDir, 'homeserver.yaml');
      const before = fs.readFileSync(file, 'utf8');
      h.setConfig({ 'max-upload-size': '9MB' });
      const wrong = await h.hook('config-changed');
      expect(wrong.status).toEqual({
        status: 'blocked',
        message:
          'invalid settings: max-upload-size "9MB" is not a size: use a whole number with K, M, G or T (juju config synapse max-upload-size=50M)',
      });
      expect(fs.readFileSync(file, 'utf8')).toBe(before);
      expect(await uploadLimit()).toBe(9 * MIB);
      h.setConfig({ 'max-upload-size': '9M' });
      expect((await hookOk('config-changed')).status?.status).toBe('active');
    },
    START_TIMEOUT,
  );

  it(
    'real Synapse: without public-baseurl, the ingress URL is its public_baseurl',
    async () => {
      h.setConfig({ 'public-baseurl': null });
      const url = 'http://10.0.0.5/test-model-synapse';
      const rel = h.addRelation('ingress', 'traefik', { ingress: JSON.stringify({ url }) });
      const r = await hookOk('ingress-relation-changed', { relationId: rel.id });
      expect(r.status).toEqual({
        status: 'active',
        message: `public_baseurl ${url}/ (from ingress); backups not configured`,
      });
      await unit.waitHealthy();
      const wellKnown = await getJson('/.well-known/matrix/client');
      expect(wellKnown.body).toEqual({ 'm.homeserver': { base_url: `${url}/` } });
    },
    START_TIMEOUT,
  );
});
