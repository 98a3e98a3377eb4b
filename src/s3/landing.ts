/**
 * Did a write land where it was meant to? With host-style (virtual-host)
 * addressing the bucket travels in the Host header: `PUT
 * http://<bucket>.<host>/<prefix>/<id>.tar.enc`. A store without virtual-host
 * support (MinIO without MINIO_DOMAIN, most self-hosted stores) ignores that
 * Host and reads the path as `/<bucket>/<key>`: the write lands in bucket
 * `<prefix>` as `<id>.tar.enc`, and succeeds. A HeadObject through the same
 * client is misrouted the same way and "finds" it.
 *
 * A ListObjectsV2 of the configured bucket cannot be misrouted that way: its
 * path is `/`, so such a store answers it as ListBuckets (`GET /`: MinIO
 * sends a `ListAllMyBucketsResult`, which the SDK reads as a listing without
 * `Name` or `Contents`) or with an error, never with a listing of the
 * configured bucket that holds the key.
 */
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { BackupError } from '../errors';
import { describeS3Error } from './errors';
import type { S3Settings } from './settings';

/**
 * Resolves when a ListObjectsV2 of `settings.bucket` with Prefix = `key`
 * (one page: the exact key sorts first among the keys it prefixes) is a
 * listing of that bucket holding exactly `key` with `size` bytes. Otherwise
 * throws: code `misrouted` (host-style addressing to a custom endpoint, with
 * the remedy s3-uri-style=path) or `corrupt` (path style or AWS: something
 * else removed or changed it) when the key is not listed; `corrupt` when it is
 * listed with another size; the listing's own S3 errors (describeS3Error).
 * Nothing is removed here: the caller removes what it wrote, through the same
 * client, which reaches wherever the write went.
 */
export async function confirmListed(
  client: S3Client,
  settings: S3Settings,
  key: string,
  size: number,
): Promise<void> {
  const { bucket } = settings;
  let listing: { Name?: string; Contents?: { Key?: string; Size?: number }[] };
  try {
    listing = await client.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: key, MaxKeys: 10 }),
    );
  } catch (err) {
    throw describeS3Error(err, settings, `confirm that ${key} is in bucket "${bucket}"`);
  }
  const ofBucket = listing.Name === undefined || listing.Name === bucket;
  const entry = ofBucket ? listing.Contents?.find((c) => c.Key === key) : undefined;
  if (entry && entry.Size === size) return;
  if (entry) {
    throw new BackupError(
      'corrupt',
      `${key} holds ${entry.Size ?? 0} bytes in bucket "${bucket}", not the ${size} just written: something else changed it`,
    );
  }
  throw notListed(settings, key);
}

/** The error for a write that a listing of the configured bucket does not hold. */
function notListed(settings: S3Settings, key: string): BackupError {
  const { bucket, endpoint } = settings;
  const missing = `${key} was written, but a listing of bucket "${bucket}" does not hold it`;
  if (settings.uriStyle !== 'host' || !endpoint) {
    return new BackupError(
      'corrupt',
      `${missing}: something else removed it at once, or the store does not list what it stores`,
    );
  }
  const slash = key.indexOf('/');
  const where =
    slash > 0
      ? `: it most likely went to bucket "${key.slice(0, slash)}" as "${key.slice(slash + 1)}"`
      : '';
  return new BackupError(
    'misrouted',
    `${missing}: the write went elsewhere. Requests go to ${endpoint} in host style (the bucket in the host name, ${bucket}.${hostOf(endpoint)}), and a store without virtual-host support takes the first part of the path as the bucket instead${where}`,
    {
      remedy: {
        kind: 'set',
        setting: 's3-uri-style',
        value: 'path',
        how: 'unless the store serves virtual-host names',
      },
    },
  );
}

function hostOf(endpoint: string): string {
  try {
    return new URL(endpoint).host;
  } catch {
    return endpoint;
  }
}
