import { ConfigError } from '../errors';

export type UriStyle = 'host' | 'path';
export type ChecksumMode = 'WHEN_REQUIRED' | 'WHEN_SUPPORTED';

/** Where backups live and how to reach the store. Credentials are optional: the SDK's default chain applies. */
export interface S3Settings {
  bucket: string;
  /** Folder inside the bucket, without leading or trailing slashes ('' for the bucket root). */
  prefix: string;
  endpoint?: string;
  region: string;
  /** `path` (https://endpoint/bucket/key) or `host` (https://bucket.endpoint/key). Default: path with an endpoint, host on AWS. */
  uriStyle: UriStyle;
  accessKeyId?: string;
  secretAccessKey?: string;
  /** Extra PEM CA certificates trusted in addition to the system roots. */
  caChain?: string;
  checksumMode: ChecksumMode;
  maxAttempts: number;
  /** Milliseconds to open a connection before the attempt fails (default {@link DEFAULT_CONNECT_TIMEOUT_MS}). */
  connectTimeoutMs?: number;
  /**
   * Milliseconds a request's connection may go without a byte sent or received, while
   * the engine is ready for one, before the request fails as stalled (default
   * {@link DEFAULT_STALL_TIMEOUT_MS}). Covers uploads, waiting for an answer and
   * reading an object's body.
   */
  stallTimeoutMs?: number;
}

export interface S3SettingsInput {
  bucket?: string;
  prefix?: string;
  endpoint?: string;
  region?: string;
  uriStyle?: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  caChain?: string;
  checksumMode?: string;
  maxAttempts?: number;
  connectTimeoutMs?: number;
  stallTimeoutMs?: number;
}

export const DEFAULT_REGION = 'us-east-1';
/** 10 s to connect. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/** 60 s without progress: S3 stopped answering. */
export const DEFAULT_STALL_TIMEOUT_MS = 60_000;

/**
 * Validates raw settings (from config, the relation or CLI flags). Each problem
 * is a ConfigError with a message of its own and, where one setting fixes it,
 * a `set` remedy naming it (front ends word it: src/charm/remedy.ts, src/cli/remedy.ts).
 */
export function parseS3Settings(input: S3SettingsInput): S3Settings {
  const bucket = input.bucket?.trim();
  if (!bucket) throw new ConfigError('no S3 bucket is set', { kind: 'set', setting: 's3-bucket' });
  const endpoint = input.endpoint?.trim() || undefined;
  const region = input.region?.trim() || undefined;
  if (!endpoint && !region) {
    throw new ConfigError('neither an S3 region nor an S3 endpoint is set', {
      kind: 'set',
      setting: 's3-endpoint',
      how: '(or the region, on AWS)',
    });
  }
  if (endpoint) {
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      throw new ConfigError(
        `the S3 endpoint "${endpoint}" is not a URL: use e.g. https://s3.example.com`,
      );
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new ConfigError(`the S3 endpoint "${endpoint}" must start with http:// or https://`);
    }
  }
  // A custom endpoint (MinIO, Ceph RGW, Garage...) is reached by its own name, and
  // virtual-host names (<bucket>.<endpoint>) need wildcard DNS it seldom has: path
  // style unless told otherwise. AWS (no endpoint) wants virtual-host addressing.
  const uriStyle = (input.uriStyle?.trim() || (endpoint ? 'path' : 'host')).toLowerCase();
  if (uriStyle !== 'host' && uriStyle !== 'path') {
    throw new ConfigError(`the S3 URI style "${input.uriStyle}" is not valid`, {
      kind: 'set',
      setting: 's3-uri-style',
      how: 'to "host" or "path"',
    });
  }
  const checksumMode = (input.checksumMode?.trim() || 'WHEN_REQUIRED').toUpperCase();
  if (checksumMode !== 'WHEN_REQUIRED' && checksumMode !== 'WHEN_SUPPORTED') {
    throw new ConfigError(
      `the S3 checksum mode "${input.checksumMode}" is not valid: use "when_required" or "when_supported"`,
    );
  }
  const maxAttempts = input.maxAttempts ?? 5;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > 20) {
    throw new ConfigError(
      `S3 max attempts must be a whole number from 1 to 20, not ${maxAttempts}`,
    );
  }
  const connectTimeoutMs = timeoutOf('connect', input.connectTimeoutMs, DEFAULT_CONNECT_TIMEOUT_MS);
  const stallTimeoutMs = timeoutOf('stall', input.stallTimeoutMs, DEFAULT_STALL_TIMEOUT_MS);
  if (Boolean(input.accessKeyId) !== Boolean(input.secretAccessKey)) {
    throw new ConfigError(
      'S3 credentials are incomplete: both an access key and a secret key are needed',
    );
  }
  return {
    bucket,
    prefix: normalizePrefix(input.prefix ?? ''),
    endpoint,
    region: region ?? DEFAULT_REGION,
    uriStyle,
    accessKeyId: input.accessKeyId || undefined,
    secretAccessKey: input.secretAccessKey || undefined,
    caChain: input.caChain?.trim() || undefined,
    checksumMode,
    maxAttempts,
    connectTimeoutMs,
    stallTimeoutMs,
  };
}

/** A timeout in whole milliseconds from 100 ms to 1 hour; `fallback` when not given. */
function timeoutOf(what: string, value: number | undefined, fallback: number): number {
  const ms = value ?? fallback;
  if (!Number.isInteger(ms) || ms < 100 || ms > 3_600_000) {
    throw new ConfigError(
      `the S3 ${what} timeout must be a whole number of milliseconds from 100 to 3600000, not ${ms}`,
    );
  }
  return ms;
}

export function normalizePrefix(prefix: string): string {
  return prefix.trim().replace(/^\/+|\/+$/g, '');
}
