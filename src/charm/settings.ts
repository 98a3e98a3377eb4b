/**
 * The Synapse settings the charm owns: config options mapped onto
 * homeserver.yaml keys (and the log config's root level), validated before
 * anything is written. An unset option means the charm does not own that key:
 * the file keeps whatever the image's generate step or the operator put there.
 *
 * | option                      | key (homeserver.yaml)                     | Synapse 1.163 source          |
 * | --------------------------- | ----------------------------------------- | ----------------------------- |
 * | public-baseurl (or ingress) | public_baseurl                            | synapse/config/server.py      |
 * | enable-registration         | enable_registration (+ token, see below)  | synapse/config/registration.py|
 * | max-upload-size             | max_upload_size ("50M": K, M, G, T)       | synapse/config/repository.py  |
 * | federation-domain-whitelist | federation_domain_whitelist (a list)      | synapse/config/federation.py  |
 * | report-stats                | report_stats                              | synapse/config/metrics.py     |
 * | log-level                   | root.level in the file `log_config` names | synapse/config/logger.py      |
 *
 * Open registration: Synapse 1.163 refuses to start with `enable_registration:
 * true` unless registration is verified (a captcha, `registrations_require_3pid`,
 * `registration_requires_token`) or `enable_registration_without_verification`
 * is set (synapse/config/homeserver.py, validate_config). So enable-registration
 * =true also sets `registration_requires_token: true` unless the file already
 * has one of those: new users then need a registration token from an admin
 * (Synapse's admin API /_synapse/admin/v1/registration_tokens/new).
 */
import type { Document } from 'yaml';
import type { CharmConfig } from './config';

/** A setting that cannot be applied: `message` names the option and the fix. */
export class SettingsError extends Error {
  readonly option: string;

  constructor(option: string, message: string) {
    super(message);
    this.name = 'SettingsError';
    this.option = option;
  }
}

export const LOG_LEVELS = ['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'] as const;

/** Where public_baseurl comes from. */
export type BaseurlSource = 'public-baseurl' | 'ingress';

/** The validated settings: homeserver.yaml keys to set, and the log level. */
export interface SynapseSettings {
  /** Keys the charm owns now, with their values. */
  keys: Record<string, unknown>;
  /** public_baseurl's value and source, when the charm owns it. */
  baseurl?: { url: string; source: BaseurlSource };
  /** True when enable_registration is true: a verification method is needed (see above). */
  registration: boolean;
  /** The log config's root level, when log-level is set. */
  logLevel?: string;
}

/** An http(s) URL with a trailing slash (Synapse appends one anyway); throws a plain Error. */
export function normaliseBaseurl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`"${raw}" is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`"${raw}" is not an http or https URL`);
  }
  if (url.search || url.hash || url.username || url.password) {
    throw new Error(`"${raw}" must not have a query, fragment or user`);
  }
  const text = url.toString();
  return text.endsWith('/') ? text : `${text}/`;
}

/** A server name as Synapse compares them: a DNS name or IP literal, with an optional port. */
const SERVER_NAME =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/** Synapse's parse_size: digits with an optional K, M, G or T suffix (binary units). */
const SIZE = /^\d+[KMGT]?$/;

/**
 * Validates the settings options of `config` (pure: no file is read).
 * `ingressUrl` is the URL the ingress provider gave, if any. Throws
 * SettingsError naming every invalid option and its fix (`app` words the
 * juju config command).
 */
export function resolveSettings(
  config: CharmConfig,
  app: string,
  ingressUrl?: string,
): SynapseSettings {
  const problems: string[] = [];
  let first = '';
  const bad = (option: string, why: string, example: string) => {
    first ||= option;
    problems.push(`${option} ${why} (juju config ${app} ${option}=${example})`);
  };
  const keys: Record<string, unknown> = {};
  let baseurl: SynapseSettings['baseurl'];
  if (config.publicBaseurl !== undefined) {
    try {
      baseurl = { url: normaliseBaseurl(config.publicBaseurl), source: 'public-baseurl' };
    } catch (err) {
      bad('public-baseurl', `${(err as Error).message}`, 'https://matrix.example.com/');
    }
  } else if (ingressUrl) {
    try {
      baseurl = { url: normaliseBaseurl(ingressUrl), source: 'ingress' };
    } catch (err) {
      bad(
        'public-baseurl',
        `is unset and the ingress URL cannot be public_baseurl: ${(err as Error).message}; set it`,
        'https://matrix.example.com/',
      );
    }
  }
  if (baseurl) keys.public_baseurl = baseurl.url;
  if (config.enableRegistration !== undefined) {
    keys.enable_registration = config.enableRegistration;
  }
  if (config.maxUploadSize !== undefined) {
    if (SIZE.test(config.maxUploadSize)) keys.max_upload_size = config.maxUploadSize;
    else {
      bad(
        'max-upload-size',
        `"${config.maxUploadSize}" is not a size: use a whole number with K, M, G or T`,
        '50M',
      );
    }
  }
  if (config.federationDomainWhitelist !== undefined) {
    const domains = config.federationDomainWhitelist
      .split(',')
      .map((d) => d.trim())
      .filter(Boolean);
    const wrong = domains.filter((d) => !SERVER_NAME.test(d));
    if (wrong.length || !domains.length) {
      bad(
        'federation-domain-whitelist',
        `has ${wrong.length ? `"${wrong.join('", "')}", not a server name` : 'no server name'}: use a comma-separated list of server names`,
        'matrix.org,example.com',
      );
    } else keys.federation_domain_whitelist = domains;
  }
  if (config.reportStats !== undefined) keys.report_stats = config.reportStats;
  let logLevel: string | undefined;
  if (config.logLevel !== undefined) {
    logLevel = config.logLevel.toUpperCase();
    if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
      bad('log-level', `"${config.logLevel}" is not one of ${LOG_LEVELS.join(', ')}`, 'INFO');
      logLevel = undefined;
    }
  }
  if (problems.length) {
    throw new SettingsError(first, `invalid settings: ${problems.join('; ')}`);
  }
  return { keys, baseurl, registration: keys.enable_registration === true, logLevel };
}

/** A top-level key's plain value (`undefined` when absent). */
function plain(doc: Document, key: string): unknown {
  const js: unknown = doc.toJS();
  return js && typeof js === 'object' ? (js as Record<string, unknown>)[key] : undefined;
}

/** True when homeserver.yaml verifies registrations the way Synapse's validate_config accepts. */
export function registrationVerified(doc: Document): boolean {
  const truthy = (key: string) => {
    const v = plain(doc, key);
    return v === true || (typeof v === 'string' && /^(true|yes|on|1)$/i.test(v));
  };
  const threepid = plain(doc, 'registrations_require_3pid');
  return (
    truthy('enable_registration_captcha') ||
    truthy('registration_requires_token') ||
    truthy('enable_registration_without_verification') ||
    (Array.isArray(threepid) && threepid.length > 0)
  );
}

/**
 * Sets `settings.keys` in homeserver.yaml's document (other keys and comments
 * stay), adds `registration_requires_token: true` when registration would be
 * open without verification, and removes each key of `removeIfEqual` whose
 * value is still the one given (what the charm wrote before, e.g. an ingress
 * URL since gone). Returns the keys it changed.
 */
export function applyToHomeserver(
  doc: Document,
  settings: SynapseSettings,
  removeIfEqual: Record<string, unknown> = {},
): string[] {
  const changed: string[] = [];
  for (const [key, value] of Object.entries(settings.keys)) {
    if (JSON.stringify(plain(doc, key)) === JSON.stringify(value)) continue;
    doc.set(key, doc.createNode(value));
    changed.push(key);
  }
  if (settings.registration && !registrationVerified(doc)) {
    doc.set('registration_requires_token', true);
    changed.push('registration_requires_token');
  }
  for (const [key, value] of Object.entries(removeIfEqual)) {
    if (key in settings.keys || JSON.stringify(plain(doc, key)) !== JSON.stringify(value)) continue;
    doc.delete(key);
    changed.push(key);
  }
  return changed;
}

/** Sets the root logger's level in a log config (Python logging dictConfig); true when it changed. */
export function applyLogLevel(doc: Document, level: string): boolean {
  if (doc.getIn(['root', 'level']) === level) return false;
  if (!doc.has('root')) doc.set('root', doc.createNode({ level }));
  else doc.setIn(['root', 'level'], level);
  return true;
}
