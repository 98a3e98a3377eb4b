/**
 * An in-memory BackupStore (src/backup/store.ts) for tests of the engine's
 * logic without MinIO, after restic's in-memory backend
 * (internal/backend/mem): objects in a Map, with S3's semantics where the
 * engine relies on them (HEAD of a missing key is undefined, DELETE of one is
 * no error, a GET of one is `not-found`), multipart uploads with ids that can
 * be listed and aborted while a body streams in, and failures a test injects
 * per method. Every call is recorded in `calls`, in order.
 */
import { Readable } from 'node:stream';
import type {
  BackupStore,
  MultipartUploadInfo,
  StoredObject,
  UploadOptions,
} from '../../src/backup/store';
import { BackupError } from '../../src/errors';

export type StoreMethod = Exclude<keyof BackupStore, 'key' | 'relativeName' | 'close'>;

export interface MemoryObject {
  data: Buffer;
  lastModified: Date;
}

interface Upload extends MultipartUploadInfo {
  initiated: Date;
  parts: Buffer[];
}

/** An injected failure: the error, how many more calls fail (Infinity: until healed). */
interface Failure {
  error: Error;
  times: number;
  /** upload only: fail once this many bytes of the body have arrived. */
  afterBytes: number;
  /** Only calls on this key. */
  key?: string;
  /** upload only: the multipart upload stays (its abort was lost: a store that restarted). */
  leaveUpload?: boolean;
}

export interface FailOptions {
  /** Default: a BackupError('s3', 'cannot <method> <key>: injected failure'). */
  error?: Error;
  /** Default 1. */
  times?: number;
  /** For upload: fail mid-body, once this many bytes have arrived (default 0: at once). */
  afterBytes?: number;
  /** Only calls on this key. */
  key?: string;
  /** For upload: leave the multipart upload behind (an abort lost when a store restarts). */
  leaveUpload?: boolean;
}

export class MemoryStore implements BackupStore {
  readonly objects = new Map<string, MemoryObject>();
  /** In-progress multipart uploads by upload id. */
  readonly uploads = new Map<string, Upload>();
  /** Every call: its method and key (if it has one), in order. */
  readonly calls: { method: StoreMethod; key?: string }[] = [];
  /** False: the bucket is missing (checkBucket says so). */
  bucketExists = true;
  /**
   * True: listUploads finds nothing, uploadsOf (the exact key) still does: MinIO
   * after a restart, which lists an upload begun before it only by its key.
   */
  uploadsListedByKeyOnly = false;
  closed = false;
  private readonly failures = new Map<StoreMethod, Failure>();
  private nextUploadId = 1;

  constructor(
    readonly prefix = 'backups',
    readonly bucket = 'memory',
  ) {}

  /** Makes the next call(s) of `method` fail (see FailOptions). */
  fail(method: StoreMethod, options: FailOptions = {}): void {
    this.failures.set(method, {
      error: options.error ?? new BackupError('s3', `cannot ${method}: injected failure`),
      times: options.times ?? 1,
      afterBytes: options.afterBytes ?? 0,
      key: options.key,
      leaveUpload: options.leaveUpload,
    });
  }

  /** Stops the injected failures of `method`, or of every method. */
  heal(method?: StoreMethod): void {
    if (method) this.failures.delete(method);
    else this.failures.clear();
  }

  /** Stores `data` at `key` as if written at `lastModified` (default now). */
  putObject(key: string, data: Buffer | string, lastModified = new Date()): void {
    this.objects.set(key, { data: Buffer.from(data), lastModified });
  }

  /** Starts a multipart upload of `key` that nobody finishes (an interrupted run's). */
  startUpload(key: string, initiated = new Date()): MultipartUploadInfo {
    const uploadId = `upload-${this.nextUploadId++}`;
    this.uploads.set(uploadId, { key, uploadId, initiated, parts: [] });
    return { key, uploadId, initiated };
  }

  /** Full keys under the prefix, sorted. */
  keys(): string[] {
    return [...this.objects.keys()].sort();
  }

  key(name: string): string {
    return this.prefix ? `${this.prefix}/${name}` : name;
  }

  relativeName(key: string): string | undefined {
    const base = this.prefix ? `${this.prefix}/` : '';
    if (!key.startsWith(base)) return undefined;
    const rest = key.slice(base.length);
    return rest.includes('/') ? undefined : rest;
  }

  close(): void {
    this.closed = true;
  }

  async checkBucket(): Promise<void> {
    this.enter('checkBucket');
    if (!this.bucketExists) {
      throw new BackupError('s3-bucket', `bucket "${this.bucket}" does not exist`);
    }
  }

  async head(key: string): Promise<StoredObject | undefined> {
    this.enter('head', key);
    const obj = this.objects.get(key);
    return obj && { key, size: obj.data.length, lastModified: obj.lastModified };
  }

  async confirmListed(key: string, size: number): Promise<void> {
    this.enter('confirmListed', key);
    const obj = this.objects.get(key);
    if (obj?.data.length !== size) {
      throw new BackupError(
        'corrupt',
        `${key} ${obj ? `holds ${obj.data.length} bytes, not ${size}` : 'is not listed'} in bucket "${this.bucket}"`,
      );
    }
  }

  async list(): Promise<StoredObject[]> {
    this.enter('list');
    return [...this.objects]
      .filter(([key]) => this.relativeName(key) !== undefined)
      .map(([key, obj]) => ({ key, size: obj.data.length, lastModified: obj.lastModified }));
  }

  async listUploads(): Promise<MultipartUploadInfo[]> {
    this.enter('listUploads');
    if (this.uploadsListedByKeyOnly) return [];
    const base = this.prefix ? `${this.prefix}/` : '';
    return [...this.uploads.values()].filter((u) => u.key.startsWith(base)).map(uploadInfo);
  }

  async uploadsOf(key: string): Promise<MultipartUploadInfo[]> {
    this.enter('uploadsOf', key);
    return [...this.uploads.values()].filter((u) => u.key === key).map(uploadInfo);
  }

  async getStream(key: string, range?: { end: number }): Promise<{ body: Readable; size: number }> {
    this.enter('getStream', key);
    const obj = this.objects.get(key);
    if (!obj) {
      throw new BackupError('not-found', `${key} does not exist in bucket "${this.bucket}"`);
    }
    const data = range ? obj.data.subarray(0, range.end + 1) : obj.data;
    // In 64 KiB chunks, as a socket would deliver them.
    const chunks: Buffer[] = [];
    for (let i = 0; i < data.length; i += 65536) chunks.push(data.subarray(i, i + 65536));
    return { body: Readable.from(chunks, { objectMode: false }), size: data.length };
  }

  async getText(key: string): Promise<string> {
    const { body } = await this.getStream(key);
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }

  async putText(key: string, text: string, _contentType: string): Promise<void> {
    this.enter('putText', key);
    this.putObject(key, text);
  }

  async putTextIfAbsent(key: string, text: string, _contentType: string): Promise<boolean> {
    this.enter('putTextIfAbsent', key);
    if (this.objects.has(key)) return false;
    this.putObject(key, text);
    return true;
  }

  async delete(key: string): Promise<void> {
    this.enter('delete', key);
    this.objects.delete(key);
  }

  async abortUpload(upload: MultipartUploadInfo): Promise<void> {
    this.enter('abortUpload', upload.key);
    this.uploads.delete(upload.uploadId);
  }

  async removeFailedUpload(key: string): Promise<void> {
    this.enter('removeFailedUpload', key);
    for (const u of [...this.uploads.values()]) if (u.key === key) this.uploads.delete(u.uploadId);
    this.objects.delete(key);
  }

  /**
   * Reads `body` into parts of `partSize`; a multipart upload (listed while
   * it runs) once there is more than one part, else one put. An injected
   * failure destroys the body with its error (as the S3 sink's teardown does),
   * aborts the upload and rejects with that error.
   */
  async upload(key: string, body: Readable, options: UploadOptions): Promise<void> {
    const failure = this.failureFor('upload', key);
    this.calls.push({ method: 'upload', key });
    let upload: Upload | undefined;
    const chunks: Buffer[] = [];
    let received = 0;
    try {
      if (failure && failure.afterBytes === 0) throw failure.error;
      for await (const chunk of body) {
        chunks.push(chunk as Buffer);
        received += (chunk as Buffer).length;
        if (!upload && received > options.partSize) {
          upload = this.uploads.get(this.startUpload(key).uploadId);
        }
        if (failure && received >= failure.afterBytes) throw failure.error;
      }
    } catch (err) {
      body.destroy(err as Error);
      if (upload && !failure?.leaveUpload) this.uploads.delete(upload.uploadId);
      throw err;
    }
    if (upload) this.uploads.delete(upload.uploadId);
    this.putObject(key, Buffer.concat(chunks));
  }

  /** Records a call and throws its injected failure, if one applies. */
  private enter(method: StoreMethod, key?: string): void {
    this.calls.push({ method, key });
    const failure = this.failureFor(method, key);
    if (failure) throw failure.error;
  }

  /** The failure that applies to this call of `method`, counted down. */
  private failureFor(method: StoreMethod, key?: string): Failure | undefined {
    const failure = this.failures.get(method);
    if (!failure || (failure.key !== undefined && failure.key !== key)) return undefined;
    if (--failure.times <= 0) this.failures.delete(method);
    return failure;
  }
}

function uploadInfo(u: Upload): MultipartUploadInfo {
  return { key: u.key, uploadId: u.uploadId, initiated: u.initiated };
}
