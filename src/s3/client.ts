import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { rootCertificates } from 'node:tls';
import { HeadBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { BackupError } from '../errors';
import type { S3Settings } from './settings';

export function createS3Client(settings: S3Settings): S3Client {
  const agentOptions = { keepAlive: true, maxSockets: 16 };
  const httpsAgent = new HttpsAgent({
    ...agentOptions,
    // An agent's `ca` replaces Node's trust store, so keep the public roots too.
    ...(settings.caChain ? { ca: [...rootCertificates, settings.caChain] } : {}),
  });
  return new S3Client({
    region: settings.region,
    endpoint: settings.endpoint,
    forcePathStyle: settings.uriStyle === 'path',
    credentials:
      settings.accessKeyId && settings.secretAccessKey
        ? { accessKeyId: settings.accessKeyId, secretAccessKey: settings.secretAccessKey }
        : undefined,
    requestChecksumCalculation: settings.checksumMode,
    responseChecksumValidation: settings.checksumMode,
    maxAttempts: settings.maxAttempts,
    retryMode: 'standard',
    requestHandler: new NodeHttpHandler({
      httpAgent: new HttpAgent(agentOptions),
      httpsAgent,
      connectionTimeout: 10_000,
      requestTimeout: 120_000,
    }),
  });
}

interface SdkErrorShape {
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

const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/;
/** Node's texts for the same, for errors that reach us without their code. */
const TLS_TEXTS = /certificate|unable to verify|unable to get (local )?issuer/i;
/** OpenSSL's complaints when the other end does not speak TLS at all. */
const NOT_TLS = /EPROTO|wrong version number|packet length too long|SSL routines/i;

/**
 * The code of a network error, else its message. Errors created in another
 * realm (as under jest) reach us through the SDK's wrapper, without a code.
 */
function networkDetail(e: SdkErrorShape): string {
  if (e.code) return e.code;
  const text = (e.message ?? '').replace(/^AWS SDK error wrapper for (Error: )?/, '').trim();
  return text.length > 200 ? `${text.slice(0, 200)}…` : text || (e.name ?? 'unknown error');
}

/** Classifies an S3 SDK error into a BackupError that tells the operator what to fix. */
export function describeS3Error(err: unknown, settings: S3Settings, doing: string): BackupError {
  if (err instanceof BackupError) return err;
  const e = (err ?? {}) as SdkErrorShape;
  const status = e.$metadata?.httpStatusCode;
  const where = settings.endpoint ?? `AWS S3 region ${settings.region}`;
  const code = e.code ?? e.name ?? '';
  const text = e.message ?? '';
  if (
    TLS_CODES.test(code) ||
    TLS_CODES.test(text) ||
    (status === undefined && TLS_TEXTS.test(text))
  ) {
    return new BackupError(
      's3-unreachable',
      `cannot ${doing}: the TLS certificate of ${where} is not trusted (${networkDetail(e)}); set s3-ca-chain to the CA that signed it`,
      { cause: err },
    );
  }
  if (status === undefined && (code === 'EPROTO' || NOT_TLS.test(text))) {
    return new BackupError(
      's3-unreachable',
      `cannot ${doing}: ${where} did not answer in TLS (${networkDetail(e)}); if it serves plain HTTP, set s3-endpoint to http:// rather than https://`,
      { cause: err },
    );
  }
  if (
    status === undefined &&
    (NETWORK_CODES.has(code) ||
      /ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ECONNRESET|EHOSTUNREACH|ENETUNREACH|socket hang up|timed? ?out/i.test(
        text,
      ))
  ) {
    return new BackupError(
      's3-unreachable',
      `cannot ${doing}: the S3 endpoint ${where} is unreachable (${networkDetail(e)}); check s3-endpoint and the network`,
      { cause: err },
    );
  }
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
      { cause: err },
    );
  }
  if (e.name === 'NoSuchBucket') return missingBucket(settings, doing, err);
  if (status === 301 || e.name === 'PermanentRedirect') {
    return new BackupError(
      's3-bucket',
      `cannot ${doing}: bucket "${settings.bucket}" is in another region than ${settings.region}; set s3-region to the bucket's region`,
      { cause: err },
    );
  }
  if (status === 400 && settings.uriStyle === 'host' && settings.endpoint) {
    return new BackupError(
      's3',
      `cannot ${doing}: ${where} rejected the request (HTTP 400); if it does not support virtual-host addressing set s3-uri-style=path`,
      { cause: err },
    );
  }
  const detail = [status ? `HTTP ${status}` : undefined, e.name, e.message]
    .filter((x) => x && x !== 'Unknown' && x !== 'UnknownError')
    .join(' ');
  return new BackupError('s3', `cannot ${doing}: ${detail || String(err)}`, { cause: err });
}

function missingBucket(settings: S3Settings, doing: string, cause: unknown): BackupError {
  const where = settings.endpoint ?? `AWS S3 region ${settings.region}`;
  return new BackupError(
    's3-bucket',
    `cannot ${doing}: bucket "${settings.bucket}" does not exist at ${where}; create it or fix s3-bucket`,
    { cause },
  );
}

/** HeadBucket: resolves when the bucket exists and these credentials may use it. */
export async function checkBucket(settings: S3Settings, client?: S3Client): Promise<void> {
  const s3 = client ?? createS3Client(settings);
  try {
    await s3.send(new HeadBucketCommand({ Bucket: settings.bucket }));
  } catch (err) {
    const doing = `use bucket "${settings.bucket}"`;
    // HeadBucket replies have no body: a 404 is the only sign of a missing bucket.
    if ((err as SdkErrorShape).$metadata?.httpStatusCode === 404) {
      throw missingBucket(settings, doing, err);
    }
    throw describeS3Error(err, settings, doing);
  } finally {
    if (!client) s3.destroy();
  }
}
