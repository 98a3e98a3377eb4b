/**
 * The multipart uploader behind ObjectStore.upload (src/s3/store.ts): a
 * Writable that cuts what it is written into parts and uploads them with
 * bounded memory, and the part-size rule it follows.
 */
import { Writable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  type CompletedPart,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  type S3Client,
  UploadPartCommand,
  type UploadPartCommandOutput,
} from '@aws-sdk/client-s3';
import { BackupError } from '../errors';
import { describeS3Error } from './errors';
import { PartIntegrity, completedPart, uploadChecksumAlgorithm } from './part-integrity';
import type { S3Settings } from './settings';

/** How ObjectStore.upload cuts and sends a body: `partSize` bytes (>= 5 MiB), at most `queueSize` parts in flight. */
export interface UploadOptions {
  partSize: number;
  queueSize: number;
  /**
   * Aborting it stops the upload at once: requests in flight are cancelled, the
   * multipart upload aborted, and upload() rejects with an InterruptedError.
   */
  signal?: AbortSignal;
}

/** S3 has a hard limit of 10,000 parts per multipart upload. */
export const MAX_PARTS = 10_000;
/** S3's smallest part (but the last), bytes. */
export const MIN_PART_SIZE = 5 * 1024 * 1024;

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
export class MultipartSink extends Writable {
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
  /** How each part's body is protected on the way (src/s3/part-integrity.ts). */
  private readonly integrity: PartIntegrity;

  constructor(
    private readonly client: S3Client,
    private readonly settings: S3Settings,
    private readonly key: string,
    private readonly options: UploadOptions,
  ) {
    super({ highWaterMark: 1024 * 1024 });
    this.maxBuffers = options.queueSize + 1;
    this.integrity = new PartIntegrity(settings);
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
      await this.integrity.send(
        this.client,
        (crc32) =>
          new PutObjectCommand({
            Bucket: this.settings.bucket,
            Key: this.key,
            Body: body,
            ContentLength: body.length,
            ContentType: 'application/octet-stream',
            ChecksumCRC32: crc32,
          }),
        body,
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
        ChecksumAlgorithm: uploadChecksumAlgorithm(this.settings),
      }),
      { abortSignal: this.requests.signal },
    );
    if (!out.UploadId) throw new Error('the server returned no upload id');
    return out.UploadId;
  }

  private async uploadPart(part: Part): Promise<void> {
    const UploadId = await this.uploadId!;
    const body = part.buffer.subarray(0, part.length);
    const out = await this.integrity.send<UploadPartCommandOutput>(
      this.client,
      (crc32) =>
        new UploadPartCommand({
          Bucket: this.settings.bucket,
          Key: this.key,
          UploadId,
          PartNumber: part.number,
          Body: body,
          ContentLength: part.length,
          ChecksumAlgorithm: uploadChecksumAlgorithm(this.settings),
          ChecksumCRC32: crc32,
        }),
      body,
      { abortSignal: this.requests.signal },
    );
    if (!out.ETag) throw new Error(`the server returned no ETag for part ${part.number}`);
    this.completed.push(completedPart(part.number, out, this.settings));
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
