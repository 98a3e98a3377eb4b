/**
 * S3 SDK errors in the operator's terms: each becomes a BackupError whose
 * message says what went wrong (never a secret key) and whose typed remedy
 * says which setting fixes it, worded by each front end (src/charm/remedy.ts,
 * src/cli/remedy.ts).
 */
import { BackupError, ConfigError } from '../errors';
import type { S3Settings } from './settings';

/** What this module reads of an SDK error (or of a Node network error it wraps). */
export interface SdkErrorShape {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'TimeoutError',
]);

/** The same, for errors that reach us without their code. */
const NETWORK_TEXTS =
  /ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ECONNRESET|EHOSTUNREACH|ENETUNREACH|socket hang up|timed? ?out/i;
const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/;
/** Node's texts for the same, for errors that reach us without their code. */
const TLS_TEXTS = /certificate|unable to verify|unable to get (local )?issuer/i;
/** OpenSSL's complaints when the other end does not speak TLS at all. */
const NOT_TLS = /EPROTO|wrong version number|packet length too long|SSL routines/i;

/** The HTTP status of an SDK error's response, undefined when there was none. */
export function httpStatusOf(err: unknown): number | undefined {
  return (err as SdkErrorShape | undefined)?.$metadata?.httpStatusCode;
}

/** The endpoint, or the AWS region when no endpoint is set: where requests go. */
function whereOf(settings: S3Settings): string {
  return settings.endpoint ?? `AWS S3 region ${settings.region}`;
}

/**
 * The code of a network error, else its message. Errors created in another
 * realm (as under jest) reach us through the SDK's wrapper, without a code.
 */
function networkDetail(e: SdkErrorShape): string {
  if (e.code) return e.code;
  const text = (e.message ?? '').replace(/^AWS SDK error wrapper for (Error: )?/, '').trim();
  return text.length > 200 ? `${text.slice(0, 200)}…` : text || (e.name ?? 'unknown error');
}

/**
 * Classifies an S3 SDK error (`err`, met while `doing` something, e.g.
 * `upload backups/x.tar.enc`) into a BackupError: code `s3-unreachable` (TLS,
 * network), `s3-auth` (HTTP 403), `s3-bucket` (no such bucket, wrong region) or
 * `s3`; a BackupError passes unchanged. The message names the endpoint, the
 * bucket and the access key id, never the secret key.
 */
export function describeS3Error(err: unknown, settings: S3Settings, doing: string): BackupError {
  if (err instanceof BackupError) return err;
  const e = (err ?? {}) as SdkErrorShape;
  // The SDK's default chain found no credentials (@smithy/property-provider's
  // CredentialsProviderError): a configuration problem, not S3's answer.
  if (e.name === 'CredentialsProviderError') {
    return new ConfigError(`cannot ${doing}: no S3 credentials are set`, {
      kind: 'set',
      setting: 's3-credentials',
    });
  }
  return transportError(e, settings, doing, err) ?? responseError(e, settings, doing, err);
}

/** TLS and network failures: the request got no HTTP answer. */
function transportError(
  e: SdkErrorShape,
  settings: S3Settings,
  doing: string,
  cause: unknown,
): BackupError | undefined {
  const status = e.$metadata?.httpStatusCode;
  const where = whereOf(settings);
  const code = e.code ?? e.name ?? '';
  const text = e.message ?? '';
  if (
    TLS_CODES.test(code) ||
    TLS_CODES.test(text) ||
    (status === undefined && TLS_TEXTS.test(text))
  ) {
    return new BackupError(
      's3-unreachable',
      `cannot ${doing}: the TLS certificate of ${where} is not trusted (${networkDetail(e)})`,
      { cause, remedy: { kind: 'set', setting: 's3-ca-chain', how: 'to the CA that signed it' } },
    );
  }
  if (status !== undefined) return undefined;
  const stalled = stallOf(text);
  if (stalled) {
    return new BackupError('s3-unreachable', `cannot ${doing}: S3 at ${where} ${stalled}`, {
      cause,
      remedy: {
        kind: 'advice',
        text: 'check that the S3 service is up and that the network to it is not dropping packets, then run again',
      },
    });
  }
  if (code === 'EPROTO' || NOT_TLS.test(text)) {
    return new BackupError(
      's3-unreachable',
      `cannot ${doing}: ${where} did not answer in TLS (${networkDetail(e)})`,
      {
        cause,
        remedy: {
          kind: 'set',
          setting: 's3-endpoint',
          how: 'to http:// rather than https:// if it serves plain HTTP',
        },
      },
    );
  }
  const virtualHost = virtualHostName(settings);
  if (code === 'ENOTFOUND' && virtualHost && text.includes(virtualHost)) {
    return new BackupError(
      's3-unreachable',
      `cannot ${doing}: ${virtualHost}, the bucket's virtual-host name under ${where}, does not resolve: the store is addressed in host style, which needs a DNS name for every bucket`,
      { cause, remedy: { kind: 'set', setting: 's3-uri-style', value: 'path' } },
    );
  }
  if (NETWORK_CODES.has(code) || NETWORK_TEXTS.test(text)) {
    return new BackupError(
      's3-unreachable',
      `cannot ${doing}: the S3 endpoint ${where} is unreachable (${networkDetail(e)})`,
      {
        cause,
        remedy: {
          kind: 'set',
          setting: 's3-endpoint',
          how: 'to the right URL, or fix the network',
        },
      },
    );
  }
  return undefined;
}

/** `<bucket>.<endpoint host>` when requests go in host style to a custom endpoint, else undefined. */
function virtualHostName(settings: S3Settings): string | undefined {
  if (settings.uriStyle !== 'host' || !settings.endpoint) return undefined;
  try {
    return `${settings.bucket}.${new URL(settings.endpoint).hostname}`;
  } catch {
    return undefined;
  }
}

/**
 * What @smithy/node-http-handler's timeouts say, in the operator's words: "stopped
 * answering for 60 s" (the socket went that long without a byte: `socketTimeout`),
 * "did not finish answering within 15 min" (`requestTimeout` with
 * `throwOnRequestTimeout`); undefined for other errors (a connect timeout is
 * "unreachable").
 */
export function stallOf(text: string): string | undefined {
  const idle = /socket timed out after (\d+) ms of inactivity/.exec(text);
  if (idle) return `stopped answering for ${seconds(Number(idle[1]))}`;
  const total = /exceeded the configured (\d+) ms requestTimeout/.exec(text);
  if (total) return `did not finish answering within ${seconds(Number(total[1]))}`;
  return undefined;
}

/** 3000 → "3 s", 1500 → "1.5 s", 900000 → "15 min". */
function seconds(ms: number): string {
  if (ms >= 120_000 && ms % 60_000 === 0) return `${ms / 60_000} min`;
  return `${Number((ms / 1000).toFixed(1))} s`;
}

/** Errors the server answered with. */
function responseError(
  e: SdkErrorShape,
  settings: S3Settings,
  doing: string,
  cause: unknown,
): BackupError {
  const status = e.$metadata?.httpStatusCode;
  if (
    status === 403 ||
    e.name === 'InvalidAccessKeyId' ||
    e.name === 'SignatureDoesNotMatch' ||
    e.name === 'AccessDenied'
  ) {
    // The access key id is no secret, and names which credentials to fix.
    const credentials = settings.accessKeyId
      ? `the access key "${settings.accessKeyId}" and its secret key`
      : 'the credentials (none are set: the default AWS chain applied)';
    return new BackupError(
      's3-auth',
      `cannot ${doing}: access to bucket "${settings.bucket}" was denied (HTTP 403${e.name && e.name !== 'Unknown' ? ` ${e.name}` : ''}); check ${credentials} and the bucket policy`,
      { cause },
    );
  }
  if (e.name === 'NoSuchBucket') return missingBucket(settings, doing, cause);
  if (status === 301 || e.name === 'PermanentRedirect') {
    return new BackupError(
      's3-bucket',
      `cannot ${doing}: bucket "${settings.bucket}" is in another region than ${settings.region}`,
      { cause, remedy: { kind: 'set', setting: 's3-region', how: "to the bucket's region" } },
    );
  }
  if (status === 400 && settings.uriStyle === 'host' && settings.endpoint) {
    return new BackupError(
      's3',
      `cannot ${doing}: ${whereOf(settings)} rejected the request (HTTP 400)`,
      {
        cause,
        remedy: {
          kind: 'set',
          setting: 's3-uri-style',
          value: 'path',
          how: 'if the endpoint does not support virtual-host addressing',
        },
      },
    );
  }
  const detail = [status ? `HTTP ${status}` : undefined, e.name, e.message]
    .filter((x) => x && x !== 'Unknown' && x !== 'UnknownError')
    .join(' ');
  return new BackupError('s3', `cannot ${doing}: ${detail || String(cause)}`, { cause });
}

/** Code `s3-bucket`: `settings.bucket` does not exist at the endpoint. */
export function missingBucket(settings: S3Settings, doing: string, cause: unknown): BackupError {
  return new BackupError(
    's3-bucket',
    `cannot ${doing}: bucket "${settings.bucket}" does not exist at ${whereOf(settings)}`,
    {
      cause,
      remedy: { kind: 'set', setting: 's3-bucket', how: 'to an existing bucket, or create it' },
    },
  );
}
