#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { BackupEngine } from '../backup/engine';
import type { EngineOptions, Progress } from '../backup/types';
import { BackupError, ConfigError, errorMessage, redact } from '../errors';
import { parseS3Settings } from '../s3/settings';
import { LocalWorkload } from '../workload/local';
import { PebbleWorkload } from '../workload/pebble';
import type { Workload } from '../workload/workload';
import { formatBytes, formatBackupTable } from './format';

const USAGE = `usage:
  synapse-backup create  --data-dir DIR [--id ID]
  synapse-backup list
  synapse-backup restore --id ID --data-dir DIR [--allow-no-manifest]
  synapse-backup delete  --id ID
  synapse-backup verify  --id ID
  synapse-backup decrypt --id ID            # plain tar on stdout
common: --bucket B [--prefix P] [--endpoint URL] [--region R] [--uri-style host|path] [--json]
        [--passphrase-file F] [--ca-file PEM] [--checksum when_required|when_supported]
        [--frame-length BYTES] [--part-size MIB] [--queue-size N]
        [--pebble-socket PATH]   run tar through Pebble instead of on this host
credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS SDK's default chain)
passphrase:  SYNAPSE_BACKUP_PASSPHRASE or --passphrase-file (never a flag value)`;

const OPTIONS = {
  bucket: { type: 'string' },
  prefix: { type: 'string' },
  endpoint: { type: 'string' },
  region: { type: 'string' },
  'uri-style': { type: 'string' },
  json: { type: 'boolean' },
  'passphrase-file': { type: 'string' },
  'ca-file': { type: 'string' },
  checksum: { type: 'string' },
  'frame-length': { type: 'string' },
  'part-size': { type: 'string' },
  'queue-size': { type: 'string' },
  'pebble-socket': { type: 'string' },
  'data-dir': { type: 'string' },
  id: { type: 'string' },
  'allow-no-manifest': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Values = ReturnType<
  typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>
>['values'];

function readPassphrase(values: Values): string {
  if (values['passphrase-file']) {
    try {
      return readFileSync(values['passphrase-file'], 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw new ConfigError(`cannot read the passphrase file: ${errorMessage(err)}`);
    }
  }
  const fromEnv = process.env.SYNAPSE_BACKUP_PASSPHRASE;
  if (!fromEnv) {
    throw new ConfigError('no passphrase: set SYNAPSE_BACKUP_PASSPHRASE or pass --passphrase-file');
  }
  return fromEnv;
}

function wholeNumber(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new ConfigError(`--${flag} takes a whole number, not "${value}"`);
  return Number(value);
}

function required(value: string | undefined, flag: string, command: string): string {
  if (!value) throw new ConfigError(`${command} needs --${flag}`);
  return value;
}

function engineFor(command: string, values: Values, json: boolean): BackupEngine {
  const s3 = parseS3Settings({
    bucket: values.bucket,
    prefix: values.prefix,
    endpoint: values.endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL,
    region: values.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION,
    uriStyle: values['uri-style'],
    accessKeyId: process.env.AWS_ACCESS_KEY_ID,
    secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
    caChain: values['ca-file'] ? readFileSync(values['ca-file'], 'utf8') : undefined,
    checksumMode: values.checksum,
  });
  const workload: Workload = values['pebble-socket']
    ? new PebbleWorkload({ socketPath: values['pebble-socket'] })
    : new LocalWorkload();
  const partMiB = wholeNumber(values['part-size'], 'part-size');
  const needsPassphrase = !['list', 'delete'].includes(command);
  const options: EngineOptions = {
    s3,
    // list and delete never decrypt; the engine still wants a non-empty value.
    passphrase: needsPassphrase ? readPassphrase(values) : 'unused-by-this-command',
    workload,
    dataDir: values['data-dir'],
    frameLength: wholeNumber(values['frame-length'], 'frame-length'),
    partSize: partMiB === undefined ? undefined : partMiB * 1024 * 1024,
    queueSize: wholeNumber(values['queue-size'], 'queue-size'),
    onProgress: json || !process.stderr.isTTY ? undefined : showProgress,
  };
  return new BackupEngine(options);
}

function showProgress(p: Progress): void {
  process.stderr.write(
    `\r${p.phase}: ${formatBytes(p.bytes)} in ${p.elapsedSeconds.toFixed(0)} s (${formatBytes(p.bytesPerSecond)}/s)   `,
  );
}

async function run(argv: string[]): Promise<void> {
  // The SDK nags about Node 20 on every run; the charm itself ships Node 24.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const { values, positionals } = parseArgs({
    args: argv,
    options: OPTIONS,
    allowPositionals: true,
  });
  const command = positionals[0];
  if (values.help || !command) {
    process.stdout.write(`${USAGE}\n`);
    if (!command && !values.help) process.exitCode = 2;
    return;
  }
  if (positionals.length > 1) throw new ConfigError(`unexpected argument "${positionals[1]}"`);
  const json = Boolean(values.json);
  const print = (human: string, data: unknown): void => {
    process.stdout.write(json ? `${JSON.stringify(data)}\n` : `${human}\n`);
  };
  if (!['create', 'list', 'restore', 'delete', 'verify', 'decrypt'].includes(command)) {
    throw new ConfigError(`unknown command "${command}"; see synapse-backup --help`);
  }
  const engine = engineFor(command, values, json);
  try {
    switch (command) {
      case 'create': {
        required(values['data-dir'], 'data-dir', 'create');
        const r = await engine.create({ id: values.id });
        print(
          `created backup ${r.backupId}: ${r.files} files, ${formatBytes(r.plaintextBytes)} archived, ${formatBytes(r.size)} stored, sha256 ${r.sha256}, ${r.durationSeconds.toFixed(1)} s`,
          {
            'backup-id': r.backupId,
            size: r.size,
            files: r.files,
            sha256: r.sha256,
            'plaintext-bytes': r.plaintextBytes,
            'duration-seconds': r.durationSeconds,
          },
        );
        return;
      }
      case 'list': {
        const r = await engine.list();
        const uploads = r.uploads.map(
          (u) => `in-progress upload: ${u.key} (started ${u.initiated ?? '?'})`,
        );
        print([formatBackupTable(r.backups), ...uploads].join('\n'), r);
        return;
      }
      case 'restore': {
        required(values['data-dir'], 'data-dir', 'restore');
        const id = required(values.id, 'id', 'restore');
        const r = await engine.restore({ id, allowMissingManifest: values['allow-no-manifest'] });
        print(
          `restored backup ${r.backupId} into ${values['data-dir']}: ${r.files} files, ${formatBytes(r.plaintextBytes)}`,
          r,
        );
        return;
      }
      case 'delete': {
        const r = await engine.delete(required(values.id, 'id', 'delete'));
        print(`deleted backup ${r.backupId} (${r.deletedKeys.join(', ')})`, r);
        return;
      }
      case 'verify': {
        const r = await engine.verify(required(values.id, 'id', 'verify'));
        print(
          `backup ${r.backupId} is good: ${r.files} files, ${formatBytes(r.plaintextBytes)}, sha256 ${r.sha256}`,
          { ...r, ok: true },
        );
        return;
      }
      case 'decrypt': {
        const id = required(values.id, 'id', 'decrypt');
        if (process.stdout.isTTY)
          throw new ConfigError(
            'decrypt writes a tar archive: redirect stdout to a file or a pipe',
          );
        const r = await engine.decryptTo(id, process.stdout);
        process.stderr.write(
          `decrypted backup ${id}: ${formatBytes(r.plaintextBytes)}, sha256 ${r.sha256}\n`,
        );
        return;
      }
    }
  } finally {
    engine.close();
  }
}

run(process.argv.slice(2)).catch((err: unknown) => {
  if (process.stderr.isTTY) process.stderr.write('\n');
  const message = redact(errorMessage(err), [
    process.env.SYNAPSE_BACKUP_PASSPHRASE,
    process.env.AWS_SECRET_ACCESS_KEY,
  ]);
  process.stderr.write(`synapse-backup: error: ${message.split('\n')[0]}\n`);
  process.exitCode = err instanceof BackupError && err.code === 'config' ? 2 : 1;
});
