import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { rootCertificates } from 'node:tls';
import { HeadBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { describeS3Error, httpStatusOf, missingBucket } from './errors';
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_STALL_TIMEOUT_MS, type S3Settings } from './settings';

// Kept importable from here, where it lived first.
export { describeS3Error } from './errors';

/**
 * The longest one request may take until its answer starts, however steadily it
 * progresses: 15 min, a 16 MiB part at 18 KiB/s. Stalls fail much sooner
 * (`stallTimeoutMs`).
 */
export const REQUEST_CEILING_MS = 15 * 60_000;

/**
 * An S3 client for `settings`: path- or host-style addressing, the access key
 * if set (else the SDK's default chain), the extra CA of `caChain` trusted on
 * top of the system roots, `maxAttempts` with standard retries. Every request
 * fails (a TimeoutError, which the SDK retries, then {@link describeS3Error}
 * says "stopped answering") when it cannot connect within `connectTimeoutMs`
 * (default 10 s), when its connection goes `stallTimeoutMs` (default 60 s)
 * without a byte sent or received, body included (the handler's socketTimeout:
 * it destroys the response stream too), or when no answer has begun after
 * {@link REQUEST_CEILING_MS}. In @smithy/node-http-handler 4.x `requestTimeout`
 * alone only logs a warning: `throwOnRequestTimeout` makes it fail. Call
 * destroy() when done.
 */
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
      connectionTimeout: settings.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      socketTimeout: settings.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS,
      requestTimeout: REQUEST_CEILING_MS,
      throwOnRequestTimeout: true,
    }),
  });
}

/**
 * HeadBucket: resolves when the bucket exists and these credentials may use it,
 * else rejects with a BackupError (see {@link describeS3Error}; a 404 is
 * `s3-bucket`). Uses `client` if given, else a client of its own, destroyed after.
 */
export async function checkBucket(settings: S3Settings, client?: S3Client): Promise<void> {
  const s3 = client ?? createS3Client(settings);
  try {
    await s3.send(new HeadBucketCommand({ Bucket: settings.bucket }));
  } catch (err) {
    const doing = `use bucket "${settings.bucket}"`;
    // HeadBucket replies have no body: a 404 is the only sign of a missing bucket.
    if (httpStatusOf(err) === 404) {
      throw missingBucket(settings, doing, err);
    }
    throw describeS3Error(err, settings, doing);
  } finally {
    if (!client) s3.destroy();
  }
}
