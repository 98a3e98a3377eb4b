/**
 * Issue #16's remainder through the built charm's dispatch with fake hook
 * tools and a real Pebble (the fake Synapse of tests/support/fake-synapse):
 * the settings options merged into homeserver.yaml and the log config, the
 * ingress v2 requirer, and the application status the leader sets.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import { hostname } from 'node:os';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { JujuHarness, type DispatchResult } from '../support/juju-harness';
import { describeWithPeers, startPebble, type PebblePeer } from '../support/peers';

const SINGLE_UNIT =
  'Synapse runs as a single unit: scale back to 1 (juju scale-application synapse 1)';

const LOG_CONFIG = `version: 1
# written by the image's generate step
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(levelname)s - %(message)s'
handlers:
  console:
    class: logging.StreamHandler
    formatter: precise
root:
  level: INFO
  handlers: [console]
disable_existing_loggers: false
`;

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

/** The juju-log messages of a dispatch. */
function logs(r: DispatchResult): string[] {
  return r.calls.filter((c) => c.tool === 'juju-log').map((c) => c.argv[c.argv.length - 1]);
}

const restarted = (r: DispatchResult) => logs(r).some((l) => l.startsWith('restarting Synapse'));

describeWithPeers(['pebble'])('operable: settings, ingress, application status', () => {
  let pebble: PebblePeer;
  let h: JujuHarness;
  let configPath: string;
  let logConfigPath: string;

  beforeEach(async () => {
    pebble = await startPebble();
    h = await JujuHarness.create({ pebbleSocket: pebble.socketPath });
    h.setConfig({ 'server-name': 'example.com' });
    await hook('synapse-pebble-ready');
    configPath = path.join(h.dataDir, 'homeserver.yaml');
    // As the image generates it: a log config that homeserver.yaml names.
    logConfigPath = path.join(h.dataDir, 'example.com.log.config');
    fs.writeFileSync(logConfigPath, LOG_CONFIG);
    fs.appendFileSync(
      configPath,
      `# where logging is configured\nlog_config: "${logConfigPath}"\n`,
    );
  });

  afterEach(async () => {
    await pebble.stop();
  });

  async function hook(name: string, options: Parameters<JujuHarness['hook']>[1] = {}) {
    const r = await h.hook(name, options);
    if (r.exitCode !== 0) throw new Error(`${name} exited ${r.exitCode}: ${r.stderr}`);
    return r;
  }

  const serviceCurrent = async () =>
    (await pebbleGet<{ current: string }[]>(pebble.socketPath, '/v1/services?names=synapse'))[0]
      ?.current;

  it('settings: merged into homeserver.yaml and the log config, comments kept, Synapse restarted only when a file changed', async () => {
    h.setConfig({
      'public-baseurl': 'https://matrix.example.com',
      'enable-registration': true,
      'max-upload-size': '7M',
      'federation-domain-whitelist': 'matrix.org, example.com',
      'report-stats': true,
      'log-level': 'warning',
    });
    const r = await hook('config-changed');
    expect(r.status).toEqual({
      status: 'active',
      message:
        'public_baseurl https://matrix.example.com/ (from public-baseurl); backups not configured',
    });
    expect(restarted(r)).toBe(true);
    const text = fs.readFileSync(configPath, 'utf8');
    expect(text).toContain('# where logging is configured');
    expect(parseYaml(text)).toMatchObject({
      server_name: 'example.com',
      pid_file: `${h.dataDir}/homeserver.pid`,
      public_baseurl: 'https://matrix.example.com/',
      enable_registration: true,
      // Synapse refuses open registration without verification: a token is required.
      registration_requires_token: true,
      max_upload_size: '7M',
      federation_domain_whitelist: ['matrix.org', 'example.com'],
      report_stats: true,
      log_config: logConfigPath,
    });
    const logText = fs.readFileSync(logConfigPath, 'utf8');
    expect(logText).toContain("# written by the image's generate step");
    expect(parseYaml(logText)).toEqual({
      ...(parseYaml(LOG_CONFIG) as object),
      root: { level: 'WARNING', handlers: ['console'] },
    });
    expect(await serviceCurrent()).toBe('active');

    // Nothing changed: nothing written, no restart.
    const mtime = fs.statSync(configPath).mtimeMs;
    const again = await hook('config-changed');
    expect(restarted(again)).toBe(false);
    expect(fs.statSync(configPath).mtimeMs).toBe(mtime);

    // An option unset: the charm no longer owns the key, the file keeps it.
    h.setConfig({ 'max-upload-size': null, 'public-baseurl': null });
    const unset = await hook('config-changed');
    expect(restarted(unset)).toBe(false);
    expect(parseYaml(fs.readFileSync(configPath, 'utf8'))).toMatchObject({
      max_upload_size: '7M',
      public_baseurl: 'https://matrix.example.com/',
    });
    expect(unset.status).toEqual({ status: 'active', message: 'backups not configured' });

    // A new value: written, one restart.
    h.setConfig({ 'max-upload-size': '9M' });
    const changed = await hook('config-changed');
    expect(restarted(changed)).toBe(true);
    expect(logs(changed)).toContain('settings changed: max_upload_size');
  });

  it('settings: wrong values block the unit naming each option and its fix; nothing is written and Synapse keeps running', async () => {
    h.setConfig({ 'max-upload-size': '7M' });
    await hook('config-changed');
    const before = fs.readFileSync(configPath, 'utf8');
    h.setConfig({
      'max-upload-size': '50MB',
      'log-level': 'LOUD',
      'public-baseurl': 'ftp://matrix.example.com',
      'federation-domain-whitelist': 'matrix.org,bad domain',
    });
    const r = await hook('config-changed');
    expect(r.status).toEqual({
      status: 'blocked',
      message:
        'invalid settings: public-baseurl "ftp://matrix.example.com" is not an http or https URL (juju config synapse public-baseurl=https://matrix.example.com/); ' +
        'max-upload-size "50MB" is not a size: use a whole number with K, M, G or T (juju config synapse max-upload-size=50M); ' +
        'federation-domain-whitelist has "bad domain", not a server name: use a comma-separated list of server names (juju config synapse federation-domain-whitelist=matrix.org,example.com); ' +
        'log-level "LOUD" is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL (juju config synapse log-level=INFO)',
    });
    expect(restarted(r)).toBe(false);
    expect(fs.readFileSync(configPath, 'utf8')).toBe(before);
    expect(fs.readFileSync(logConfigPath, 'utf8')).toBe(LOG_CONFIG);
    expect(await serviceCurrent()).toBe('active');
    // update-status keeps saying so.
    expect((await hook('update-status')).status?.status).toBe('blocked');

    h.setConfig({
      'max-upload-size': '8M',
      'log-level': null,
      'public-baseurl': null,
      'federation-domain-whitelist': null,
    });
    const fixed = await hook('config-changed');
    expect(fixed.status).toEqual({ status: 'active', message: 'backups not configured' });
    expect(parseYaml(fs.readFileSync(configPath, 'utf8'))).toMatchObject({
      max_upload_size: '8M',
    });
  });

  it('settings: enable-registration keeps the verification the file has; log-level without a log_config blocks', async () => {
    fs.appendFileSync(configPath, 'enable_registration_captcha: true\n');
    h.setConfig({ 'enable-registration': true });
    await hook('config-changed');
    const config = parseYaml(fs.readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    expect(config.enable_registration).toBe(true);
    expect(config.registration_requires_token).toBeUndefined();

    const text = fs.readFileSync(configPath, 'utf8').replace(/^log_config:.*$/m, '');
    fs.writeFileSync(configPath, text);
    h.setConfig({ 'log-level': 'DEBUG' });
    const r = await hook('config-changed');
    expect(r.status).toEqual({
      status: 'blocked',
      message: `log-level needs the log config file that homeserver.yaml's log_config names, and ${configPath} names none; add log_config to it, or unset log-level`,
    });
    expect(fs.readFileSync(configPath, 'utf8')).toBe(text);
  });

  it('settings: a homeserver.yaml that is not YAML blocks the unit without quoting its lines (a secret stays out of juju status and the log)', async () => {
    fs.appendFileSync(configPath, 'registration_shared_secret: SECRETREG: bad\n');
    const r = await h.hook('config-changed');
    expect(r.status?.status).toBe('blocked');
    expect(r.status?.message).toMatch(
      new RegExp(
        `^${configPath.replace(/[.]/g, '\\.')} is not valid YAML: .* at line \\d+, column \\d+`,
      ),
    );
    expect(JSON.stringify(r.calls)).not.toContain('SECRETREG');
    expect(r.stdout + r.stderr).not.toContain('SECRETREG');
  });

  it('settings: homeserver.yaml and the log config are replaced by a rename (never truncated in place), keeping their mode; no temp file stays', async () => {
    fs.chmodSync(configPath, 0o640);
    fs.chmodSync(logConfigPath, 0o604);
    // A temp file a killed hook left behind.
    const stale = path.join(h.dataDir, '.homeserver.yaml.tmp-999999');
    fs.writeFileSync(stale, 'half written');
    const inode = fs.statSync(configPath).ino;
    const logInode = fs.statSync(logConfigPath).ino;
    h.setConfig({ 'max-upload-size': '7M', 'log-level': 'ERROR' });
    const r = await hook('config-changed');
    expect(restarted(r)).toBe(true);
    // A new file renamed over the old one: a writer killed midway leaves the old one whole.
    expect(fs.statSync(configPath).ino).not.toBe(inode);
    expect(fs.statSync(logConfigPath).ino).not.toBe(logInode);
    expect(fs.statSync(configPath).mode & 0o777).toBe(0o640);
    expect(fs.statSync(logConfigPath).mode & 0o777).toBe(0o604);
    const text = fs.readFileSync(configPath, 'utf8');
    expect(text).toContain('# where logging is configured');
    expect(parseYaml(text)).toMatchObject({ server_name: 'example.com', max_upload_size: '7M' });
    expect((parseYaml(fs.readFileSync(logConfigPath, 'utf8')) as { root: unknown }).root).toEqual({
      level: 'ERROR',
      handlers: ['console'],
    });
    expect(fs.readdirSync(h.dataDir).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  it('ingress v2: app and unit data as the library writes them; the URL is public_baseurl unless public-baseurl is set; removed with the relation', async () => {
    const rel = h.addRelation('ingress', 'traefik');
    const joined = await hook('ingress-relation-joined');
    const ours = h.relation(rel.id).data;
    expect(ours.synapse).toEqual({
      model: '"test-model"',
      name: '"synapse"',
      port: '8008',
      'strip-prefix': 'true',
    });
    expect(JSON.parse(ours['synapse/0'].host)).toMatch(new RegExp(`^${hostname()}(\\.|$)`));
    expect(ours['synapse/0'].ip).toBe('"10.1.2.3"');
    expect(joined.status).toEqual({
      status: 'active',
      message: 'ingress: waiting for a URL from traefik; backups not configured',
    });

    const url = 'http://10.0.0.5/test-model-synapse';
    h.relation(rel.id).data.traefik = { ingress: JSON.stringify({ url }) };
    const changed = await hook('ingress-relation-changed');
    expect(changed.status).toEqual({
      status: 'active',
      message: `public_baseurl ${url}/ (from ingress); backups not configured`,
    });
    expect(restarted(changed)).toBe(true);
    expect(parseYaml(fs.readFileSync(configPath, 'utf8'))).toMatchObject({
      public_baseurl: `${url}/`,
    });

    // The option wins over the ingress URL; unset again, the ingress URL is back.
    h.setConfig({ 'public-baseurl': 'https://matrix.example.com/' });
    const option = await hook('config-changed');
    expect(option.status?.message).toBe(
      'public_baseurl https://matrix.example.com/ (from public-baseurl); backups not configured',
    );
    h.setConfig({ 'public-baseurl': null });
    await hook('config-changed');
    expect(parseYaml(fs.readFileSync(configPath, 'utf8'))).toMatchObject({
      public_baseurl: `${url}/`,
    });

    // Data that is not the v2 schema: said, and nothing of it written.
    h.relation(rel.id).data.traefik = { ingress: '{"link": "x"}' };
    const odd = await hook('ingress-relation-changed');
    expect(odd.status?.message).toBe(
      `ingress: traefik's data is not usable (its "ingress" value has no http(s) url: {"link": "x"}); backups not configured`,
    );
    // A URL Synapse cannot take as public_baseurl blocks, naming the option that overrides it.
    h.relation(rel.id).data.traefik = { ingress: JSON.stringify({ url: `${url}?x=1` }) };
    const query = await hook('ingress-relation-changed');
    expect(query.status).toEqual({
      status: 'blocked',
      message: `invalid settings: public-baseurl is unset and the ingress URL cannot be public_baseurl: "${url}?x=1" must not have a query, fragment or user; set it (juju config synapse public-baseurl=https://matrix.example.com/)`,
    });
    h.relation(rel.id).data.traefik = { ingress: JSON.stringify({ url }) };
    expect((await hook('ingress-relation-changed')).status?.status).toBe('active');

    // relation-broken: the relation is still listed, but gone; the key the charm wrote goes.
    const broken = await hook('ingress-relation-broken', { relationId: rel.id });
    expect(broken.status).toEqual({ status: 'active', message: 'backups not configured' });
    expect(restarted(broken)).toBe(true);
    const after = parseYaml(fs.readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    expect(after.public_baseurl).toBeUndefined();
    expect(after.server_name).toBe('example.com');
  });

  it('2 units: the leader sets the application status blocked; a non-leader clears its ingress unit data', async () => {
    const peers = h.addRelation('synapse-peers', 'synapse');
    peers.remoteUnits = ['synapse/1'];
    const r = await hook('synapse-peers-relation-joined');
    expect(r.status).toEqual({ status: 'active', message: 'backups not configured' });
    expect(h.state.status.app).toEqual({ status: 'blocked', message: `2 units: ${SINGLE_UNIT}` });
    h.relation(peers.id).remoteUnits = [];
    await hook('synapse-peers-relation-departed', { relationId: peers.id });
    expect(h.state.status.app).toEqual({ status: 'active', message: 'backups not configured' });

    const other = await JujuHarness.create({ pebbleSocket: pebble.socketPath, unit: 'synapse/1' });
    other.state.leader = false;
    other.setConfig({ 'server-name': 'example.com' });
    const rel = other.addRelation('ingress', 'traefik');
    rel.data['synapse/1'] = { host: '"stale"', ip: '"10.9.9.9"' };
    const joined = await other.hook('ingress-relation-joined');
    expect(joined.status).toEqual({ status: 'blocked', message: SINGLE_UNIT });
    expect(other.relation(rel.id).data['synapse/1']).toEqual({});
    expect(other.relation(rel.id).data.synapse).toBeUndefined();
  });
});
