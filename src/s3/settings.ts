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
}

export const DEFAULT_REGION = 'us-east-1';

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
  };
}

export function normalizePrefix(prefix: string): string {
  return prefix.trim().replace(/^\/+|\/+$/g, '');
}
