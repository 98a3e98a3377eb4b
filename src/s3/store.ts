import { type Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  AbortMultipartUploadCommand,
  type CompletedPart,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  type S3Client,
  UploadPartCommand,
  paginateListObjectsV2,
} from '@aws-sdk/client-s3';
import { BackupError } from '../errors';
import { checkBucket, createS3Client, describeS3Error } from './client';
import type { S3Settings } from './settings';

export interface StoredObject {
  key: string;
  size: number;
  lastModified?: Date;
}

export interface MultipartUploadInfo {
  key: string;
  uploadId: string;
  initiated?: Date;
}

export interface UploadOptions {
  partSize: number;
  queueSize: number;
}

/** S3 has a hard limit of 10,000 parts per multipart upload. */
export const MAX_PARTS = 10_000;
export const MIN_PART_SIZE = 5 * 1024 * 1024;

/** One bucket and prefix: the S3 operations the engine needs, with errors in the operator's terms. */
export class ObjectStore {
  readonly client: S3Client;

  constructor(readonly settings: S3Settings) {
    this.client = createS3Client(settings);
  }

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

  close(): void {
    this.client.destroy();
  }

  /** HeadBucket (see {@link checkBucket}): resolves when the bucket exists and may be used. */
  async checkBucket(): Promise<void> {
    await checkBucket(this.settings, this.client);
  }

  async head(key: string): Promise<StoredObject | undefined> {
    try {
      const out = await this.client.send(
        new HeadObjectCommand({ Bucket: this.settings.bucket, Key: key }),
      );
      return { key, size: out.ContentLength ?? 0, lastModified: out.LastModified };
    } catch (err) {
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status === 404) return undefined;
      throw describeS3Error(err, this.settings, `read ${key}`);
    }
  }

  /** Streams an object, or with `range` only its first bytes (`end` inclusive). */
  async getStream(key: string, range?: { end: number }): Promise<{ body: Readable; size: number }> {
    try {
      const out = await this.client.send(
        new GetObjectCommand({
          Bucket: this.settings.bucket,
          Key: key,
          Range: range ? `bytes=0-${range.end}` : undefined,
        }),
      );
      return { body: out.Body as Readable, size: out.ContentLength ?? 0 };
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

  async getText(key: string): Promise<string> {
    const { body } = await this.getStream(key);
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }

  async putText(key: string, text: string, contentType: string): Promise<void> {
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.settings.bucket,
          Key: key,
          Body: text,
          ContentType: contentType,
        }),
      );
    } catch (err) {
      throw describeS3Error(err, this.settings, `write ${key}`);
    }
  }

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
      throw describeS3Error(err, this.settings, `list bucket "${this.settings.bucket}"`);
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
      throw describeS3Error(err, this.settings, 'list in-progress uploads');
    }
    return out;
  }

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
    try {
      await pipeline(body, sink);
    } catch (err) {
      await sink.abort();
      if (err instanceof BackupError) throw err;
      throw describeS3Error(err, this.settings, `upload ${key}`);
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
    throw new BackupError(
      'cleanup',
      `could not abort the in-progress upload of ${key}; run prune-backups or abort it with your S3 tools`,
    );
  }
}

/** The smallest part size (a whole MiB, >= 5 MiB) that lets 10,000 parts hold `maxBytes`. */
export function partSizeFor(maxBytes: number): number {
  const mib = 1024 * 1024;
  return Math.max(MIN_PART_SIZE, Math.ceil(maxBytes / MAX_PARTS / mib) * mib);
}

/** How many parts of an upload are cut at the smaller size (see {@link uploadPartSize}). */
export const SMALL_PARTS = 2000;

/**
 * The size of part `partNumber` when uploading with `partSize`. The first
 * {@link SMALL_PARTS} parts are half as large (at least 5 MiB), the rest a
 * little larger, so that 10,000 parts still hold 10,000 x `partSize`: the
 * largest backup a part size allows is unchanged, while the part buffers of
 * every backup up to 2,000 half-parts (15.6 GiB with 16 MiB parts) take half
 * the memory. Whole MiB.
 */
export function uploadPartSize(partNumber: number, partSize: number): number {
  const mib = 1024 * 1024;
  const small = Math.max(MIN_PART_SIZE, Math.ceil(partSize / 2 / mib) * mib);
  if (small >= partSize) return partSize;
  if (partNumber <= SMALL_PARTS) return small;
  const rest = MAX_PARTS * partSize - SMALL_PARTS * small;
  return Math.ceil(rest / (MAX_PARTS - SMALL_PARTS) / mib) * mib;
}

/**
 * Over TLS, the parts of a backup are signed without hashing their bodies
 * (`UNSIGNED-PAYLOAD`, what the AWS CLI does over HTTPS): TLS already protects
 * them in transit, and the SHA-256 of every byte costs about 0.7 s of CPU per
 * GiB here and as much again in the server that checks it. Over plain HTTP the
 * payload stays signed, so a body altered on the way is refused by the server.
 */
function skipPayloadHashOverTls<T extends PutObjectCommand | UploadPartCommand>(
  command: T,
  settings: S3Settings,
): T {
  const tls = !settings.endpoint || settings.endpoint.startsWith('https:');
  if (!tls) return command;
  (command.middlewareStack as PutObjectCommand['middlewareStack']).add(
    (next) => async (args) => {
      const request = args.request as { headers?: Record<string, string> };
      if (request.headers) request.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      return next(args);
    },
    { step: 'build', name: 'synapseBackupUnsignedPayload' },
  );
  return command;
}

interface Part {
  number: number;
  buffer: Buffer;
  length: number;
}

/**
 * The end of the create pipeline: copies what it is written into part buffers
 * and uploads each full part while the next one fills.
 *
 * Memory is fixed: `queueSize + 1` part buffers, allocated on first use and
 * reused for the whole upload (no per-part allocation, so nothing for the
 * garbage collector and no fresh pages for the kernel to zero), while
 * lib-storage's `Upload` concatenated a new buffer for every part and held
 * about (queueSize + 3) parts. Parts are half the part size for the first
 * 2,000 (see {@link uploadPartSize}): 3 x 8 MiB by default, flat in the size
 * of the backup up to 15.6 GiB, then 3 x 18 MiB. Writing waits while every buffer is full or in
 * flight: that is the backpressure that slows tar down. A buffer goes back to
 * the pool only once its UploadPart has settled (the SDK re-sends the same
 * bytes when it retries).
 */
class MultipartSink extends Writable {
  private readonly free: Buffer[] = [];
  private allocated = 0;
  private readonly maxBuffers: number;
  private current: Buffer | undefined;
  private filled = 0;
  private partCount = 0;
  private readonly ready: Part[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private readonly completed: CompletedPart[] = [];
  private uploadId: Promise<string> | undefined;
  private failure: Error | undefined;
  /** Resumes a write or the final step that waits for a buffer or for the last part. */
  private wake: (() => void) | undefined;
  private readonly requests = new AbortController();

  constructor(
    private readonly client: S3Client,
    private readonly settings: S3Settings,
    private readonly key: string,
    private readonly options: UploadOptions,
  ) {
    super({ highWaterMark: 1024 * 1024 });
    this.maxBuffers = options.queueSize + 1;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    let offset = 0;
    const step = (): void => {
      while (offset < chunk.length) {
        if (this.failure) {
          done(this.failure);
          return;
        }
        if (this.current && this.filled === this.current.length) {
          // A full part goes up only once more data proves it is not the only one.
          this.dispatch();
          continue;
        }
        if (!this.current) {
          const buffer = this.takeBuffer();
          if (!buffer) {
            this.wake = step;
            return;
          }
          this.current = buffer;
          this.filled = 0;
        }
        const n = chunk.copy(this.current, this.filled, offset);
        this.filled += n;
        offset += n;
      }
      done();
    };
    step();
  }

  override _final(done: (err?: Error | null) => void): void {
    this.finish().then(
      () => done(),
      (err: Error) => done(err),
    );
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.fail(err ?? new Error('the upload was stopped'));
    done(err);
  }

  /** Stops every request, waits for them, and aborts the multipart upload if one began. */
  async abort(): Promise<void> {
    this.fail(new Error('the upload was aborted'));
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
    const uploadId = await this.uploadId?.catch(() => undefined);
    if (!uploadId) return;
    await this.client
      .send(
        new AbortMultipartUploadCommand({
          Bucket: this.settings.bucket,
          Key: this.key,
          UploadId: uploadId,
        }),
      )
      .catch(() => undefined); // removeFailedUpload confirms and retries
  }

  private async finish(): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.partCount === 0) {
      // Everything fits in one part: a single PutObject.
      const body = this.current ? this.current.subarray(0, this.filled) : Buffer.alloc(0);
      await this.client.send(
        skipPayloadHashOverTls(
          new PutObjectCommand({
            Bucket: this.settings.bucket,
            Key: this.key,
            Body: body,
            ContentLength: body.length,
            ContentType: 'application/octet-stream',
          }),
          this.settings,
        ),
        { abortSignal: this.requests.signal },
      );
      return;
    }
    if (this.current && this.filled > 0) this.dispatch();
    while (this.ready.length > 0 || this.inFlight.size > 0) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    if (this.failure) throw this.failure;
    const Parts = [...this.completed].sort((a, b) => a.PartNumber! - b.PartNumber!);
    await this.client.send(
      new CompleteMultipartUploadCommand({
        Bucket: this.settings.bucket,
        Key: this.key,
        UploadId: await this.uploadId!,
        MultipartUpload: { Parts },
      }),
      { abortSignal: this.requests.signal },
    );
  }

  /** A buffer for the next part: a free one of its size, else a new one while under the limit. */
  private takeBuffer(): Buffer | undefined {
    const size = uploadPartSize(this.partCount + 1, this.options.partSize);
    for (let reused = this.free.pop(); reused; reused = this.free.pop()) {
      if (reused.length === size) return reused;
      this.allocated--; // the parts grew: let the smaller buffer go
    }
    if (this.allocated >= this.maxBuffers) return undefined;
    this.allocated++;
    return Buffer.allocUnsafeSlow(size);
  }

  /** Queues the current buffer as the next part and starts uploads while slots are free. */
  private dispatch(): void {
    const number = ++this.partCount;
    if (number > MAX_PARTS) {
      this.fail(
        new BackupError(
          'too-large',
          `the backup is larger than ${MAX_PARTS} parts allow with a part size of ${this.options.partSize} bytes; raise the part size`,
        ),
      );
      return;
    }
    this.ready.push({ number, buffer: this.current!, length: this.filled });
    this.current = undefined;
    this.filled = 0;
    if (!this.uploadId) {
      this.uploadId = this.createUpload();
      this.uploadId.catch(() => undefined); // reported by the parts that wait for it
    }
    this.pump();
  }

  private pump(): void {
    while (!this.failure && this.inFlight.size < this.options.queueSize && this.ready.length > 0) {
      const part = this.ready.shift()!;
      const request: Promise<void> = this.uploadPart(part).then(
        () => {
          this.inFlight.delete(request);
          this.free.push(part.buffer);
          this.pump();
          this.resume();
        },
        (err: Error) => {
          this.inFlight.delete(request);
          // In the operator's terms already: this error also tears the rest of the pipeline down.
          this.fail(describeS3Error(err, this.settings, `upload ${this.key}`));
        },
      );
      this.inFlight.add(request);
    }
  }

  private async createUpload(): Promise<string> {
    const out = await this.client.send(
      new CreateMultipartUploadCommand({
        Bucket: this.settings.bucket,
        Key: this.key,
        ContentType: 'application/octet-stream',
        // As lib-storage does: with checksums on, the parts carry CRC32s the completion lists.
        ChecksumAlgorithm: this.settings.checksumMode === 'WHEN_SUPPORTED' ? 'CRC32' : undefined,
      }),
      { abortSignal: this.requests.signal },
    );
    if (!out.UploadId) throw new Error('the server returned no upload id');
    return out.UploadId;
  }

  private async uploadPart(part: Part): Promise<void> {
    const UploadId = await this.uploadId!;
    const out = await this.client.send(
      skipPayloadHashOverTls(
        new UploadPartCommand({
          Bucket: this.settings.bucket,
          Key: this.key,
          UploadId,
          PartNumber: part.number,
          Body: part.buffer.subarray(0, part.length),
          ContentLength: part.length,
          ChecksumAlgorithm: this.settings.checksumMode === 'WHEN_SUPPORTED' ? 'CRC32' : undefined,
        }),
        this.settings,
      ),
      { abortSignal: this.requests.signal },
    );
    if (!out.ETag) throw new Error(`the server returned no ETag for part ${part.number}`);
    this.completed.push({
      PartNumber: part.number,
      ETag: out.ETag,
      ChecksumCRC32: out.ChecksumCRC32,
      ChecksumCRC32C: out.ChecksumCRC32C,
      ChecksumCRC64NVME: out.ChecksumCRC64NVME,
      ChecksumSHA1: out.ChecksumSHA1,
      ChecksumSHA256: out.ChecksumSHA256,
    });
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.requests.abort();
    this.ready.length = 0;
    if (!this.destroyed) this.destroy(err);
    this.resume();
  }

  private resume(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}
