/**
 * Where backups go, from one of two sources:
 *  - the `backup` relation to s3-integrator (its application databag), which
 *    wins whenever the relation exists;
 *  - otherwise the s3-* config options, with credentials from the
 *    `s3-credentials` user secret.
 * The encryption passphrase always comes from the `backup-passphrase` secret.
 * Each problem yields its own operator-readable message (never secret values).
 */
import { type RetentionPolicy, parseRetention } from '../backup/retention';
import { ConfigError } from '../errors';
import { describeForCharm, type SettingsSource } from './remedy';
import type { JujuContext } from '../juju/context';
import { parseRelationId } from '../juju/context';
import { HookToolError, type HookTools } from '../juju/hook-tools';
import { parseS3Settings, type S3Settings, type S3SettingsInput } from '../s3/settings';
import { hasS3Config, type CharmConfig } from './config';

export const BACKUP_ENDPOINT = 'backup';

export type BackupSource = 'relation' | 'config';

export type BackupSetup =
  | { state: 'none' }
  | { state: 'invalid'; source: BackupSource; message: string }
  | {
      state: 'ready';
      source: BackupSource;
      s3: S3Settings;
      /** How to word remedies for `s3`: the s3-* options, or the provider's config. */
      settingsSource: SettingsSource;
      passphrase: string;
      /** e.g. `s3://bucket/prefix at https://minio:9000 (from the backup relation)` */
      description: string;
      /** backup-retention, applied after each successful create-backup. */
      retention: RetentionPolicy;
    };

/** What the operator should do when backups are not configured at all. */
export function notConfiguredMessage(app: string): string {
  return (
    `backups are not configured: relate an s3-integrator (juju integrate ${app}:backup s3-integrator) ` +
    `or set s3-bucket, s3-region or s3-endpoint and s3-credentials (juju config ${app} ...), ` +
    `and set backup-passphrase`
  );
}

class SetupError extends Error {}

export interface BackupRelation {
  id: number;
  remoteApp?: string;
  /** Decoded provider application databag. */
  data: Record<string, unknown>;
}

/** The live backup relation, if any (a relation being broken no longer counts). */
export async function findBackupRelation(
  ctx: JujuContext,
  tools: HookTools,
): Promise<{ id: number; remoteApp?: string } | undefined> {
  const ids = (await tools.relationIds(BACKUP_ENDPOINT)).map(parseRelationId);
  const broken = ctx.hookName === `${BACKUP_ENDPOINT}-relation-broken` ? ctx.relationId : undefined;
  const id = ids.find((i) => i !== broken);
  if (id === undefined) return undefined;
  let remoteApp = ctx.relationId === id ? ctx.remoteApp : undefined;
  if (!remoteApp) remoteApp = await tools.relationRemoteApp(id);
  return { id, remoteApp };
}

/** Provider values may be JSON-encoded: try JSON, fall back to the raw string. */
export function decodeRelationValue(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

function asText(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) {
    const parts = value.filter((v) => v !== null && v !== undefined).map((v) => String(v).trim());
    return parts.length ? parts.join('\n') : undefined;
  }
  const text = (typeof value === 'object' ? JSON.stringify(value) : String(value)).trim();
  return text === '' ? undefined : text;
}

/** The bucket our leader asks the provider for on relation-joined (the provider's own setting wins). */
export function requestedBucket(config: CharmConfig, relationId: number): string {
  return config.s3Bucket ?? `relation-${relationId}`;
}

export async function resolveBackupSetup(
  ctx: JujuContext,
  tools: HookTools,
  config: CharmConfig,
): Promise<BackupSetup> {
  const relation = await findBackupRelation(ctx, tools);
  const source: BackupSource = relation ? 'relation' : 'config';
  if (!relation && !hasS3Config(config)) return { state: 'none' };
  try {
    let s3: S3Settings;
    let description: string;
    let settingsSource: SettingsSource = { kind: 'config' };
    if (relation) {
      if (hasS3Config(config)) {
        await tools.jujuLog(
          'DEBUG',
          'the backup relation is present: its S3 settings are used and the s3-* options are ignored',
        );
      }
      const provider = relation.remoteApp ?? 's3-integrator';
      s3 = await settingsFromRelation(tools, relation.id, provider, relation.remoteApp);
      settingsSource = { kind: 'relation', provider };
      description = `${where(s3)} (from the backup relation)`;
    } else {
      s3 = await settingsFromConfig(ctx, tools, config);
      description = `${where(s3)} (from config)`;
    }
    const passphrase = await readPassphrase(ctx, tools, config);
    const retention = parseRetention(config.backupRetention);
    return { state: 'ready', source, s3, settingsSource, passphrase, description, retention };
  } catch (err) {
    if (err instanceof SetupError || err instanceof ConfigError) {
      return { state: 'invalid', source, message: tools.redact(describeForCharm(err)) };
    }
    throw err;
  }
}

function where(s3: S3Settings): string {
  const url = `s3://${s3.bucket}${s3.prefix ? `/${s3.prefix}` : ''}`;
  return s3.endpoint ? `${url} at ${s3.endpoint}` : `${url} in ${s3.region}`;
}

/**
 * The provider's databag as S3 settings. parseS3Settings validates them; its
 * errors come back worded for the relation (`juju config <provider> <key>=...`).
 */
async function settingsFromRelation(
  tools: HookTools,
  relationId: number,
  provider: string,
  remoteApp: string | undefined,
): Promise<S3Settings> {
  const raw = remoteApp ? await tools.relationGet(relationId, remoteApp, { app: true }) : {};
  const data: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(raw)) data[key] = decodeRelationValue(value);
  const accessKey = asText(data['access-key']);
  const secretKey = asText(data['secret-key']);
  tools.addSecret(secretKey);
  if (!accessKey || !secretKey) {
    throw new SetupError(
      `the backup relation has no S3 credentials yet: run juju run ${provider}/leader sync-s3-credentials access-key=<key> secret-key=<secret>`,
    );
  }
  const input: S3SettingsInput = {
    bucket: asText(data.bucket),
    prefix: asText(data.path),
    endpoint: asText(data.endpoint),
    region: asText(data.region),
    uriStyle: asText(data['s3-uri-style']),
    accessKeyId: accessKey,
    secretAccessKey: secretKey,
    caChain: asText(data['tls-ca-chain']),
  };
  try {
    return parseS3Settings(input);
  } catch (err) {
    // Its remedy names the provider's own config key (src/charm/remedy.ts).
    const problem = describeForCharm(err, { kind: 'relation', provider });
    throw new SetupError(`the backup relation's S3 settings are invalid: ${problem}`);
  }
}

async function settingsFromConfig(
  ctx: JujuContext,
  tools: HookTools,
  config: CharmConfig,
): Promise<S3Settings> {
  const app = ctx.appName;
  if (!config.s3Bucket) {
    throw new SetupError(`no S3 bucket is set: juju config ${app} s3-bucket=<name>`);
  }
  if (!config.s3Endpoint && !config.s3Region) {
    throw new SetupError(
      `neither an S3 region nor an S3 endpoint is set: juju config ${app} s3-region=<region> (or s3-endpoint=<url>)`,
    );
  }
  if (config.s3UriStyle && !['host', 'path'].includes(config.s3UriStyle.toLowerCase())) {
    throw new SetupError(
      `s3-uri-style "${config.s3UriStyle}" is not valid: juju config ${app} s3-uri-style=path (or host)`,
    );
  }
  let accessKeyId: string | undefined;
  let secretAccessKey: string | undefined;
  if (config.s3Credentials) {
    const content = await readSecret(tools, app, 's3-credentials', config.s3Credentials, [
      'access-key',
      'secret-key',
    ]);
    accessKeyId = content['access-key'];
    secretAccessKey = content['secret-key'];
  }
  return parseS3Settings({
    bucket: config.s3Bucket,
    prefix: config.s3Path,
    endpoint: config.s3Endpoint,
    region: config.s3Region,
    uriStyle: config.s3UriStyle,
    accessKeyId,
    secretAccessKey,
    caChain: decodeCaChain(config.s3CaChain),
  });
}

/** PEM text, or its base64 encoding (easier to pass on a command line). */
export function decodeCaChain(value: string | undefined): string | undefined {
  if (!value) return undefined;
  if (value.includes('-----BEGIN')) return value;
  const decoded = Buffer.from(value, 'base64').toString('utf8');
  if (decoded.includes('-----BEGIN')) return decoded;
  throw new SetupError(
    's3-ca-chain is not a PEM certificate: set it to the PEM text of the CA (or its base64)',
  );
}

async function readPassphrase(
  ctx: JujuContext,
  tools: HookTools,
  config: CharmConfig,
): Promise<string> {
  const app = ctx.appName;
  if (!config.backupPassphrase) {
    throw new SetupError(
      `backup-passphrase is not set: juju add-secret ${app}-backup passphrase=<passphrase>, ` +
        `juju grant-secret ${app}-backup ${app}, then juju config ${app} backup-passphrase=<secret URI>`,
    );
  }
  const content = await readSecret(tools, app, 'backup-passphrase', config.backupPassphrase, [
    'passphrase',
  ]);
  return content.passphrase;
}

async function readSecret(
  tools: HookTools,
  app: string,
  option: string,
  uri: string,
  keys: string[],
): Promise<Record<string, string>> {
  if (!uri.startsWith('secret:')) {
    throw new SetupError(
      `${option} must be a secret URI (secret:...), not a value: juju add-secret, juju grant-secret, then juju config ${app} ${option}=<secret URI>`,
    );
  }
  let content: Record<string, string>;
  try {
    content = await tools.secretGet(uri, { refresh: true });
  } catch (err) {
    if (!(err instanceof HookToolError)) throw err;
    const stderr = err.stderr.toLowerCase();
    if (/permission denied|not granted|unauthori[sz]ed|forbidden/.test(stderr)) {
      throw new SetupError(
        `the secret in ${option} (${uri}) is not granted to ${app}: juju grant-secret <secret name> ${app}`,
      );
    }
    if (/not found/.test(stderr)) {
      throw new SetupError(
        `the secret in ${option} (${uri}) was not found or is not granted to ${app}: check juju secrets, juju grant-secret <secret name> ${app}`,
      );
    }
    throw new SetupError(`cannot read the secret in ${option} (${uri}): ${err.message}`);
  }
  const missing = keys.filter((k) => !content[k]);
  if (missing.length) {
    throw new SetupError(
      `the secret in ${option} has no ${missing.join(' or ')} key: juju update-secret <secret name> ${keys
        .map((k) => `${k}=<...>`)
        .join(' ')}`,
    );
  }
  return content;
}
