import { BackupEngine } from '../../src/backup/engine';
import type { EngineOptions } from '../../src/backup/types';
import { type S3Settings, type S3SettingsInput, parseS3Settings } from '../../src/s3/settings';
import { LocalWorkload } from '../../src/workload/local';
import type { MinioPeer } from './peers';

/** S3 settings for a test MinIO: path-style, its credentials, under `prefix`. */
export function minioSettings(
  minio: MinioPeer,
  prefix: string,
  extra: S3SettingsInput = {},
): S3Settings {
  return parseS3Settings({
    bucket: minio.bucket,
    prefix,
    endpoint: minio.endpoint,
    uriStyle: 'path',
    accessKeyId: minio.accessKeyId,
    secretAccessKey: minio.secretAccessKey,
    ...extra,
  });
}

/** An engine on a test MinIO; the workload defaults to this host. */
export function minioEngine(
  minio: MinioPeer,
  prefix: string,
  options: Partial<EngineOptions> = {},
): BackupEngine {
  return new BackupEngine({
    s3: minioSettings(minio, prefix),
    workload: new LocalWorkload(),
    ...options,
  });
}
