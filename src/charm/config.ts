/** The charm's config options (config.yaml), read with config-get. */
import type { WorkloadMode } from '../workload/factory';

/**
 * The transports `workload-exec` may name (config.yaml), in the order its
 * message lists them; `pebble-direct` is an alias of `pebble`, and `local`
 * is the CLI's (see workload/factory.ts, which validates the name).
 */
export const WORKLOAD_EXEC_MODES: readonly WorkloadMode[] = [
  'pebble',
  'pebble-relay',
  'kubernetes',
];

export interface CharmConfig {
  serverName?: string;
  s3Endpoint?: string;
  s3Bucket?: string;
  s3Region?: string;
  s3Path?: string;
  s3UriStyle?: string;
  /** URI of a user secret with keys access-key and secret-key. */
  s3Credentials?: string;
  s3CaChain?: string;
  /** URI of a user secret with key passphrase. */
  backupPassphrase?: string;
  /** e.g. keep-last=7,keep-days=30; unset keeps every backup. */
  backupRetention?: string;
  /** How backups reach the container: a WORKLOAD_EXEC_MODES name or an alias; unset is pebble. */
  workloadExec?: string;
  /** Synapse settings (settings.ts); unset: the charm leaves the key in homeserver.yaml alone. */
  publicBaseurl?: string;
  enableRegistration?: boolean;
  maxUploadSize?: string;
  federationDomainWhitelist?: string;
  reportStats?: boolean;
  logLevel?: string;
}

/** A boolean option: Juju gives JSON booleans; unset is undefined. */
function bool(raw: Record<string, unknown>, key: string): boolean | undefined {
  const value = raw[key];
  if (value === true || value === 'true') return true;
  if (value === false || value === 'false') return false;
  return undefined;
}

function str(raw: Record<string, unknown>, key: string): string | undefined {
  const value = raw[key];
  if (value === undefined || value === null) return undefined;
  const text = String(value).trim();
  return text === '' ? undefined : text;
}

export function parseCharmConfig(raw: Record<string, unknown>): CharmConfig {
  return {
    serverName: str(raw, 'server-name'),
    s3Endpoint: str(raw, 's3-endpoint'),
    s3Bucket: str(raw, 's3-bucket'),
    s3Region: str(raw, 's3-region'),
    s3Path: str(raw, 's3-path'),
    s3UriStyle: str(raw, 's3-uri-style'),
    s3Credentials: str(raw, 's3-credentials'),
    s3CaChain: str(raw, 's3-ca-chain'),
    backupPassphrase: str(raw, 'backup-passphrase'),
    backupRetention: str(raw, 'backup-retention'),
    workloadExec: str(raw, 'workload-exec'),
    publicBaseurl: str(raw, 'public-baseurl'),
    enableRegistration: bool(raw, 'enable-registration'),
    maxUploadSize: str(raw, 'max-upload-size'),
    federationDomainWhitelist: str(raw, 'federation-domain-whitelist'),
    reportStats: bool(raw, 'report-stats'),
    logLevel: str(raw, 'log-level'),
  };
}

/** True when any S3 option that says where backups go is set (s3-uri-style alone does not count). */
export function hasS3Config(config: CharmConfig): boolean {
  return Boolean(
    config.s3Endpoint ||
    config.s3Bucket ||
    config.s3Region ||
    config.s3Path ||
    config.s3Credentials ||
    config.s3CaChain,
  );
}
