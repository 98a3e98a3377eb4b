/**
 * ObjectStore: the S3 operations of the engine on one bucket and prefix. Every
 * failure is a BackupError from describeS3Error (src/s3/errors.ts); uploads go
 * through the MultipartSink (src/s3/multipart-sink.ts).
 */
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  type S3Client,
  paginateListObjectsV2,
} from '@aws-sdk/client-s3';
import { BackupError, InterruptedError } from '../errors';
import { describedBody } from './body';
import { checkBucket, createS3Client } from './client';
import { describeS3Error, httpStatusOf } from './errors';
import { confirmListed } from './landing';
import { MultipartSink, type UploadOptions } from './multipart-sink';
import { DEFAULT_STALL_TIMEOUT_MS, type S3Settings } from './settings';

// The sink's part rules, importable from here as before the sink had a module of its own.
export {
  MAX_PARTS,
  MIN_PART_SIZE,
  SMALL_PARTS,
  type UploadOptions,
  uploadPartSize,
} from './multipart-sink';

/** An object: its full key, its size in bytes, when it was last written. */
export interface StoredObject {
  key: string;
  size: number;
  lastModified?: Date;
}

/** A multipart upload begun and neither completed nor aborted. */
export interface MultipartUploadInfo {
  key: string;
  uploadId: string;
  initiated?: Date;
}

/** One bucket and prefix: the S3 operations the engine needs, with errors in the operator's terms. */
export class ObjectStore {
  readonly client: S3Client;

  constructor(readonly settings: S3Settings) {
    this.client = createS3Client(settings);
  }

  /** The full key of `name` under the prefix. */
  key(name: string): string {
    return this.settings.prefix ? `${this.settings.prefix}/${name}` : name;
  }

  /** Name relative to the prefix, or undefined for keys in sub-folders. */
  relativeName(key: string): string | undefined {
    const base = this.settings.prefix ? `${this.settings.prefix}/` : '';
    if (!key.startsWith(base)) return undefined;
    const rest = key.slice(base.length);
    return rest.includes('/') ? undefined : rest;
  }

  /** Closes the client's sockets; the store is unusable after. */
  close(): void {
    this.client.destroy();
  }

  /** HeadBucket (see {@link checkBucket}): resolves when the bucket exists and may be used. */
  async checkBucket(): Promise<void> {
    await checkBucket(this.settings, this.client);
  }

  /** HeadObject: the object, or undefined when there is none (HTTP 404). */
  async head(key: string): Promise<StoredObject | undefined> {
    try {
      const out = await this.client.send(
        new HeadObjectCommand({ Bucket: this.settings.bucket, Key: key }),
      );
      return { key, size: out.ContentLength ?? 0, lastModified: out.LastModified };
    } catch (err) {
      if (httpStatusOf(err) === 404) return undefined;
      throw describeS3Error(err, this.settings, `read ${key}`);
    }
  }

  /**
   * Streams an object, or with `range` only its first bytes (`end` inclusive);
   * `size` is the length of what is streamed, bytes. A missing key is code `not-found`.
   * The body fails with a BackupError (see {@link describedBody}), e.g. when S3
   * stops sending it for `stallTimeoutMs`.
   */
  async getStream(key: string, range?: { end: number }): Promise<{ body: Readable; size: number }> {
    try {
      const out = await this.client.send(
        new GetObjectCommand({
          Bucket: this.settings.bucket,
          Key: key,
          Range: range ? `bytes=0-${range.end}` : undefined,
        }),
      );
      const body = describedBody(
        out.Body as Readable,
        (err) => describeS3Error(err, this.settings, `download ${key}`),
        this.settings.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS,
      );
      return { body, size: out.ContentLength ?? 0 };
    } catch (err) {
      if ((err as { name?: string }).name === 'NoSuchKey') {
        throw new BackupError(
          'not-found',
          `${key} does not exist in bucket "${this.settings.bucket}"`,
        );
      }
      throw describeS3Error(err, this.settings, `download ${key}`);
    }
  }

  /** The whole object as UTF-8 text (for small objects: manifests). */
  async getText(key: string): Promise<string> {
    const { body } = await this.getStream(key);
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }

  /** PutObject of `text` (UTF-8) with its Content-Type. */
  async putText(key: string, text: string, contentType: string): Promise<void> {
    try {
      await this.sendText(key, text, contentType);
    } catch (err) {
      throw describeS3Error(err, this.settings, `write ${key}`);
    }
  }

  /**
   * PutObject with `If-None-Match: *`: true when written, false when the key
   * exists (412 PreconditionFailed, or 409 ConditionalRequestConflict while
   * another conditional write of it is in flight). A store that does not
   * implement the header (501) gets a HEAD, a plain write and a read-back.
   */
  async putTextIfAbsent(key: string, text: string, contentType: string): Promise<boolean> {
    try {
      await this.sendText(key, text, contentType, { IfNoneMatch: '*' });
      return true;
    } catch (err) {
      const status = httpStatusOf(err);
      if (status === 412 || status === 409) return false;
      if (status !== 501) throw describeS3Error(err, this.settings, `write ${key}`);
    }
    if (await this.head(key)) return false;
    await this.putText(key, text, contentType);
    return (await this.getText(key)) === text;
  }

  /** The PutObject of putText and putTextIfAbsent: `text` (UTF-8) with its Content-Type; S3's errors as they come. */
  private async sendText(
    key: string,
    text: string,
    contentType: string,
    condition: { IfNoneMatch?: '*' } = {},
  ): Promise<void> {
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.settings.bucket,
        Key: key,
        Body: text,
        ContentType: contentType,
        ...condition,
      }),
    );
  }

  /**
   * Confirms with a request that cannot be misrouted (a listing of the bucket)
   * that `key` is in it with `size` bytes: see {@link confirmListed}.
   */
  async confirmListed(key: string, size: number): Promise<void> {
    await confirmListed(this.client, this.settings, key, size);
  }

  /** DeleteObject (S3 does not mind a key that does not exist). */
  async delete(key: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.settings.bucket, Key: key }));
    } catch (err) {
      throw describeS3Error(err, this.settings, `delete ${key}`);
    }
  }

  /** Objects directly under the prefix (not in sub-folders). */
  async list(): Promise<StoredObject[]> {
    const out: StoredObject[] = [];
    const Prefix = this.settings.prefix ? `${this.settings.prefix}/` : undefined;
    try {
      const pages = paginateListObjectsV2(
        { client: this.client },
        { Bucket: this.settings.bucket, Prefix, Delimiter: '/' },
      );
      for await (const page of pages) {
        for (const obj of page.Contents ?? []) {
          if (obj.Key) {
            out.push({ key: obj.Key, size: obj.Size ?? 0, lastModified: obj.LastModified });
          }
        }
      }
    } catch (err) {
      const under = Prefix ? ` under prefix "${Prefix}"` : '';
      throw describeS3Error(
        err,
        this.settings,
        `list backups in bucket "${this.settings.bucket}"${under}`,
      );
    }
    return out;
  }

  /**
   * In-progress multipart uploads whose key starts with `keyPrefix` (default:
   * the store's prefix). The bucket is listed whole and filtered here: MinIO
   * treats ListMultipartUploads' Prefix as an exact key, so a folder prefix
   * finds nothing there. (MinIO also answers a listing without Prefix from a
   * node-local cache that a restart empties: see {@link uploadsOf}.)
   */
  async listUploads(keyPrefix?: string): Promise<MultipartUploadInfo[]> {
    const wanted = keyPrefix ?? (this.settings.prefix ? `${this.settings.prefix}/` : '');
    return (await this.listUploadPages(undefined)).filter((u) => u.key.startsWith(wanted));
  }

  /**
   * In-progress multipart uploads of exactly `key`, listed with the key as
   * Prefix: MinIO finds an upload that began before it restarted only that way,
   * and to S3 and others it is just a prefix.
   */
  async uploadsOf(key: string): Promise<MultipartUploadInfo[]> {
    return (await this.listUploadPages(key)).filter((u) => u.key === key);
  }

  private async listUploadPages(Prefix: string | undefined): Promise<MultipartUploadInfo[]> {
    const out: MultipartUploadInfo[] = [];
    let KeyMarker: string | undefined;
    let UploadIdMarker: string | undefined;
    try {
      // ListMultipartUploads has no paginator in the SDK.
      for (;;) {
        const page = await this.client.send(
          new ListMultipartUploadsCommand({
            Bucket: this.settings.bucket,
            Prefix,
            KeyMarker,
            UploadIdMarker,
          }),
        );
        for (const u of page.Uploads ?? []) {
          if (u.Key && u.UploadId) {
            out.push({ key: u.Key, uploadId: u.UploadId, initiated: u.Initiated });
          }
        }
        if (!page.IsTruncated) break;
        KeyMarker = page.NextKeyMarker;
        UploadIdMarker = page.NextUploadIdMarker;
      }
    } catch (err) {
      throw describeS3Error(
        err,
        this.settings,
        `list in-progress uploads in bucket "${this.settings.bucket}"`,
      );
    }
    return out;
  }

  /** AbortMultipartUpload; an upload already gone (NoSuchUpload) is no error. */
  async abortUpload(upload: MultipartUploadInfo): Promise<void> {
    try {
      await this.client.send(
        new AbortMultipartUploadCommand({
          Bucket: this.settings.bucket,
          Key: upload.key,
          UploadId: upload.uploadId,
        }),
      );
    } catch (err) {
      if ((err as { name?: string }).name === 'NoSuchUpload') return;
      throw describeS3Error(err, this.settings, `abort the upload of ${upload.key}`);
    }
  }

  /**
   * Streams `body` to `key` with a bounded multipart upload (see {@link MultipartSink}):
   * at most `queueSize` parts in flight and `queueSize + 1` part buffers, reused, whatever
   * the size of the backup. A body that fits in one part goes up with one PutObject. On
   * failure the upload is aborted; the caller must still call {@link removeFailedUpload}
   * to confirm that nothing is left.
   */
  async upload(key: string, body: Readable, options: UploadOptions): Promise<void> {
    const sink = new MultipartSink(this.client, this.settings, key, options);
    const { signal } = options;
    // Also once every byte is in and only the last parts are in flight.
    const onAbort = () =>
      sink.destroy(
        new InterruptedError(typeof signal?.reason === 'string' ? signal.reason : 'a signal', ''),
      );
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await pipeline(body, sink);
    } catch (err) {
      await sink.abort();
      if (err instanceof BackupError) throw err;
      throw describeS3Error(err, this.settings, `upload ${key}`);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Removes every trace of a failed write of `key`: aborts its in-progress
   * multipart uploads and deletes the object if it was completed. Confirms with
   * ListMultipartUploads, retrying a few times as aborts settle.
   */
  async removeFailedUpload(key: string): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const pending = await this.uploadsOf(key);
      if (pending.length === 0) {
        if (await this.head(key)) await this.delete(key);
        return;
      }
      for (const upload of pending) await this.abortUpload(upload);
      await new Promise((resolve) => setTimeout(resolve, 200 * (attempt + 1)));
    }
    throw new BackupError('cleanup', `could not abort the in-progress upload of ${key}`, {
      remedy: { kind: 'run', operation: 'prune', why: 'or abort it with your S3 tools' },
    });
  }
}
