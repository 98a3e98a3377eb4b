import type { Readable } from 'node:stream';

/** An object in the store: its full key, size in bytes, last-modified time. */
export interface StoredObject {
  key: string;
  size: number;
  lastModified?: Date;
}

/** An in-progress multipart upload (S3's ListMultipartUploads terms). */
export interface MultipartUploadInfo {
  key: string;
  uploadId: string;
  initiated?: Date;
}

/** How an upload is cut: `partSize` bytes per part (>= 5 MiB), `queueSize` parts in flight. */
export interface UploadOptions {
  partSize: number;
  queueSize: number;
  /**
   * Aborting it stops the upload at once: requests in flight are cancelled, the
   * multipart upload aborted, and upload() rejects with an InterruptedError.
   */
  signal?: AbortSignal;
}

/**
 * What the engine needs of an object store: one bucket and key prefix. The
 * S3 implementation is ObjectStore (src/s3/store.ts); tests use an in-memory
 * one (tests/support/memory-store.ts). Failures are BackupErrors in the
 * operator's terms (codes `s3`, `s3-auth`, `s3-bucket`, `not-found`, ...).
 */
export interface BackupStore {
  /** The full key of `name` under the prefix. */
  key(name: string): string;
  /** `key` relative to the prefix, or undefined for keys outside it or in sub-folders. */
  relativeName(key: string): string | undefined;
  /** The object's size and time, or undefined when it does not exist (404). */
  head(key: string): Promise<StoredObject | undefined>;
  /**
   * Resolves when a listing of the bucket (not a request about the key, which
   * a store can take to another bucket: src/s3/landing.ts) holds `key` with
   * `size` bytes; else throws `misrouted` (the addressing style sent the
   * write elsewhere) or `corrupt`.
   */
  confirmListed(key: string, size: number): Promise<void>;
  /** Objects directly under the prefix (not in sub-folders). */
  list(): Promise<StoredObject[]>;
  /** In-progress multipart uploads under the prefix. */
  listUploads(): Promise<MultipartUploadInfo[]>;
  /** In-progress multipart uploads of exactly `key`. */
  uploadsOf(key: string): Promise<MultipartUploadInfo[]>;
  /** An object as UTF-8 text. */
  getText(key: string): Promise<string>;
  /** Streams an object, or with `range` only bytes 0..`end` (inclusive); `size` in bytes. */
  getStream(key: string, range?: { end: number }): Promise<{ body: Readable; size: number }>;
  putText(key: string, text: string, contentType: string): Promise<void>;
  /**
   * Writes `text` at `key` only if no object is there: true when written, false
   * when one already was. Atomic where the store supports conditional writes
   * (S3 PutObject with `If-None-Match: *`, RFC 9110 section 13.1.2: AWS since
   * 2024, MinIO); elsewhere a HEAD, the write, and a read-back of `text`.
   */
  putTextIfAbsent(key: string, text: string, contentType: string): Promise<boolean>;
  /**
   * Streams `body` to `key` (multipart when it is larger than a part). On
   * failure it rejects with its own error; the caller then calls
   * removeFailedUpload to make sure nothing is left.
   */
  upload(key: string, body: Readable, options: UploadOptions): Promise<void>;
  /** Aborts every in-progress upload of `key` and deletes the object if it was completed. */
  removeFailedUpload(key: string): Promise<void>;
  /** Aborts one multipart upload; one that is already gone is no error. */
  abortUpload(upload: MultipartUploadInfo): Promise<void>;
  delete(key: string): Promise<void>;
  /**
   * Resolves when the bucket exists and may be used; else throws saying why
   * (a missing bucket also answers 404 to HEAD: the engine asks this before it
   * says that a backup does not exist).
   */
  checkBucket(): Promise<void>;
  /** Releases connections. */
  close(): void;
}
