import type { Readable } from 'node:stream';
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
import { Upload } from '@aws-sdk/lib-storage';
import { BackupError } from '../errors';
import { createS3Client, describeS3Error } from './client';
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
   * finds nothing there.
   */
  async listUploads(keyPrefix?: string): Promise<MultipartUploadInfo[]> {
    const out: MultipartUploadInfo[] = [];
    const wanted = keyPrefix ?? (this.settings.prefix ? `${this.settings.prefix}/` : '');
    let KeyMarker: string | undefined;
    let UploadIdMarker: string | undefined;
    try {
      // ListMultipartUploads has no paginator in the SDK.
      for (;;) {
        const page = await this.client.send(
          new ListMultipartUploadsCommand({
            Bucket: this.settings.bucket,
            KeyMarker,
            UploadIdMarker,
          }),
        );
        for (const u of page.Uploads ?? []) {
          if (u.Key?.startsWith(wanted) && u.UploadId) {
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
   * Streams `body` to `key` with a bounded multipart upload. On failure the
   * upload is aborted and the caller must still call {@link removeFailedUpload}:
   * lib-storage's abort does not wait for its own cleanup.
   */
  async upload(key: string, body: Readable, options: UploadOptions): Promise<void> {
    const upload = new Upload({
      client: this.client,
      params: {
        Bucket: this.settings.bucket,
        Key: key,
        Body: body,
        ContentType: 'application/octet-stream',
      },
      partSize: options.partSize,
      queueSize: options.queueSize,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (err) {
      await upload.abort().catch(() => undefined);
      if (err instanceof BackupError) throw err;
      if (/Exceeded \d+ parts/.test((err as Error).message ?? '')) {
        throw new BackupError(
          'too-large',
          `the backup is larger than ${MAX_PARTS} parts of ${options.partSize} bytes allow; raise the part size`,
        );
      }
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
      const pending = (await this.listUploads(key)).filter((u) => u.key === key);
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
