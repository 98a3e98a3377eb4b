/**
 * The built CLI (`build/synapse-backup.js`, `npm run build` first) run against a MinIO
 * peer with a prefix and a passphrase, with nothing else from this process's environment
 * but PATH; its exit status and both outputs.
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import type { MinioPeer } from './peers';

export const CLI_BUNDLE = path.resolve(__dirname, '..', '..', 'build', 'synapse-backup.js');

export interface CliRun {
  code: number | null;
  out: string;
  err: string;
}

/** Runs the CLI with `args`, then the S3 flags of `minio` and `--prefix prefix`. */
export function runCli(
  args: string[],
  s3: { minio: MinioPeer; prefix: string; passphrase: string },
): Promise<CliRun> {
  const { minio, prefix, passphrase } = s3;
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [
        CLI_BUNDLE,
        ...args,
        ...['--endpoint', minio.endpoint, '--uri-style', 'path', '--bucket', minio.bucket],
        ...['--prefix', prefix],
      ],
      {
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          AWS_ACCESS_KEY_ID: minio.accessKeyId,
          AWS_SECRET_ACCESS_KEY: minio.secretAccessKey,
          SYNAPSE_BACKUP_PASSPHRASE: passphrase,
          AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, out, err }));
  });
}
