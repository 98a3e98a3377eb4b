#!/usr/bin/env node
import { mkdirSync, readFileSync, rmdirSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { BackupEngine } from '../backup/engine';
import type { EngineOptions, Progress, PruneResult } from '../backup/types';
import { BackupError, ConfigError, errorMessage, redact } from '../errors';
import { describeForCli } from './remedy';
import { parseS3Settings } from '../s3/settings';
import { createWorkload } from '../workload/factory';
import { formatBytes, formatBackupTable } from '../format';
import { describeRetention } from '../backup/retention';

const USAGE = `usage:
  synapse-backup create  --data-dir DIR [--id ID]
  synapse-backup list
  synapse-backup restore --id ID --data-dir DIR [--allow-no-manifest] [--keep-previous] [--force]
  synapse-backup delete  --id ID
  synapse-backup verify  --id ID
  synapse-backup decrypt --id ID [--allow-no-manifest]   # plain tar on stdout
  synapse-backup prune   [--keep-last N] [--keep-days N] [--stale-hours H] [--dry-run]
                         [--data-dir DIR]   also remove what interrupted runs left in DIR
common: --bucket B [--prefix P] [--endpoint URL] [--region R] [--uri-style host|path] [--json]
        [--passphrase-file F] [--ca-file PEM] [--checksum when_required|when_supported]
        [--frame-length BYTES] [--part-size MIB] [--queue-size N]
        [--pebble-socket PATH]   run tar through Pebble instead of on this host
        [--direct [--workload-dir PATH]]   with --pebble-socket: the archive (create's output,
                                 restore's input) goes over a unix socket in the socket's
                                 directory, not through Pebble's websocket (PATH: that
                                 directory as the workload sees it; default the same path,
                                 as when Pebble runs on this host)
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
  direct: { type: 'boolean' },
  /** The name of --direct when it was for create only. */
  'direct-output': { type: 'boolean' },
  'workload-dir': { type: 'string' },
  'data-dir': { type: 'string' },
  id: { type: 'string' },
  'allow-no-manifest': { type: 'boolean' },
  'keep-previous': { type: 'boolean' },
  force: { type: 'boolean' },
  'keep-last': { type: 'string' },
  'keep-days': { type: 'string' },
  'stale-hours': { type: 'string' },
  'dry-run': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Values = ReturnType<
  typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>
>['values'];

const COMMANDS = ['create', 'list', 'restore', 'delete', 'verify', 'decrypt', 'prune'];

/** Secrets this run knows, for the redaction of error messages. */
const secrets: (string | undefined)[] = [
  process.env.SYNAPSE_BACKUP_PASSPHRASE,
  process.env.AWS_SECRET_ACCESS_KEY,
];

function readPassphrase(values: Values): string {
  if (values['passphrase-file']) {
    let fromFile: string;
    try {
      fromFile = readFileSync(values['passphrase-file'], 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw new ConfigError(`cannot read the passphrase file: ${errorMessage(err)}`);
    }
    if (!fromFile) {
      throw new ConfigError(`the passphrase file ${values['passphrase-file']} is empty`);
    }
    secrets.push(fromFile);
    return fromFile;
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

function readCaFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read the CA file: ${errorMessage(err)}`);
  }
}

/**
 * The data directory as the engine wants it: absolute. On this host a relative path is
 * taken from the current directory, and create needs it to be a directory. Through Pebble
 * the path is the workload container's, so it is passed on as given.
 */
function dataDirFor(command: string, values: Values): string | undefined {
  const given = values['data-dir'];
  if (!given || values['pebble-socket']) return given;
  const dir = path.resolve(given);
  if (command !== 'create' && command !== 'restore') return dir;
  let isDir: boolean | undefined;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new ConfigError(`cannot use the data directory ${dir}: ${errorMessage(err)}`);
    }
  }
  if (isDir === false) throw new ConfigError(`the data directory ${dir} is not a directory`);
  if (isDir === undefined && command === 'create') {
    throw new ConfigError(`the data directory ${dir} does not exist`);
  }
  return dir;
}

/**
 * Makes a missing restore directory on this host (tar needs it to exist). Returns an undo
 * that removes what it made if it is still empty, for a restore that fails before writing.
 */
function makeRestoreDir(dir: string): () => void {
  let first: string | undefined;
  try {
    first = mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new ConfigError(`cannot create the data directory ${dir}: ${errorMessage(err)}`);
  }
  return () => {
    if (!first) return;
    for (let d = dir; d.length >= first.length; d = path.dirname(d)) {
      try {
        rmdirSync(d);
      } catch {
        return;
      }
    }
  };
}

/** Set once a progress line has been drawn on stderr (which then needs a newline). */
let progressShown = false;

function endProgressLine(): void {
  if (progressShown) process.stderr.write('\n');
  progressShown = false;
}

function engineFor(
  command: string,
  values: Values,
  json: boolean,
  dataDir: string | undefined,
): BackupEngine {
  const s3 = parseS3Settings({
    bucket: values.bucket,
    prefix: values.prefix,
    endpoint: values.endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL,
    region: values.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION,
    uriStyle: values['uri-style'],
    accessKeyId: process.env.AWS_ACCESS_KEY_ID,
    secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
    caChain: values['ca-file'] ? readCaFile(values['ca-file']) : undefined,
    checksumMode: values.checksum,
  });
  const direct = values.direct || values['direct-output'];
  if (direct && !values['pebble-socket']) {
    throw new ConfigError('--direct is for Pebble: give --pebble-socket too');
  }
  if (values['workload-dir'] && !direct) {
    throw new ConfigError('--workload-dir goes with --direct');
  }
  const pebbleMode = direct ? 'pebble' : 'pebble-relay';
  const workload = createWorkload(values['pebble-socket'] ? pebbleMode : 'local', {
    pebbleSocket: values['pebble-socket'],
    workloadSharedDir: values['workload-dir'],
    onDirectStreamUnavailable: (reason) =>
      process.stderr.write(
        `synapse-backup: warning: the archive comes through Pebble's websocket instead: ${reason}\n`,
      ),
  });
  const partMiB = wholeNumber(values['part-size'], 'part-size');
  const needsPassphrase = !['list', 'delete', 'prune'].includes(command);
  const options: EngineOptions = {
    s3,
    // list, delete and prune never decrypt.
    passphrase: needsPassphrase ? readPassphrase(values) : undefined,
    workload,
    dataDir,
    frameLength: wholeNumber(values['frame-length'], 'frame-length'),
    partSize: partMiB === undefined ? undefined : partMiB * 1024 * 1024,
    queueSize: wholeNumber(values['queue-size'], 'queue-size'),
    onProgress: json || !process.stderr.isTTY ? undefined : showProgress,
    onNotice: (message) => process.stderr.write(`synapse-backup: ${message}\n`),
  };
  return new BackupEngine(options);
}

function showProgress(p: Progress): void {
  progressShown = true;
  process.stderr.write(
    `\r${p.phase}: ${formatBytes(p.bytes)} in ${p.elapsedSeconds.toFixed(0)} s (${formatBytes(p.bytesPerSecond)}/s)   `,
  );
}

async function run(argv: string[]): Promise<void> {
  // The SDK nags about Node 20 on every run; the charm itself ships Node 24.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true });
  } catch (err) {
    // Unknown option, missing option value, ...: a usage error like an unknown command.
    throw new ConfigError(`${errorMessage(err).split('. ')[0]}; see synapse-backup --help`);
  }
  const { values, positionals } = parsed;
  const command = positionals[0];
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (!command) {
    process.stderr.write(`${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  if (!COMMANDS.includes(command)) {
    throw new ConfigError(`unknown command "${command}"; see synapse-backup --help`);
  }
  if (positionals.length > 1) throw new ConfigError(`unexpected argument "${positionals[1]}"`);
  // Missing options first: before the passphrase, the S3 settings or any directory is touched.
  if (command === 'create' || command === 'restore')
    required(values['data-dir'], 'data-dir', command);
  if (!['create', 'list', 'prune'].includes(command)) required(values.id, 'id', command);
  const json = Boolean(values.json);
  const print = (human: string, data: unknown): void => {
    endProgressLine();
    process.stdout.write(json ? `${JSON.stringify(kebabKeys(data))}\n` : `${human}\n`);
  };
  const dataDir = dataDirFor(command, values);
  const engine = engineFor(command, values, json, dataDir);
  try {
    switch (command) {
      case 'create': {
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
        const id = required(values.id, 'id', 'restore');
        const undoMkdir = values['pebble-socket'] ? () => undefined : makeRestoreDir(dataDir!);
        const r = await engine
          .restore({
            id,
            allowMissingManifest: values['allow-no-manifest'],
            keepPrevious: values['keep-previous'],
            force: values.force,
          })
          .catch((err: unknown) => {
            undoMkdir();
            throw err;
          });
        const notes = [
          r.oneTimeKeysRemoved ? `${r.oneTimeKeysRemoved} one-time keys removed` : undefined,
          r.previousPath ? `previous files kept in ${r.previousPath}` : undefined,
        ].filter(Boolean);
        print(
          `restored backup ${r.backupId} into ${dataDir}: ${r.files} files, ${formatBytes(r.plaintextBytes)}${notes.map((n) => `; ${n}`).join('')}`,
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
        const r = await engine.decryptTo(id, process.stdout, {
          allowMissingManifest: values['allow-no-manifest'],
        });
        endProgressLine();
        process.stderr.write(
          `decrypted backup ${id}: ${formatBytes(r.plaintextBytes)}, sha256 ${r.sha256}\n`,
        );
        return;
      }
      case 'prune': {
        const policy = {
          keepLast: wholeNumber(values['keep-last'], 'keep-last'),
          keepDays: wholeNumber(values['keep-days'], 'keep-days'),
        };
        const staleHours = wholeNumber(values['stale-hours'], 'stale-hours') ?? 24;
        const r = await engine.prune(policy, {
          dryRun: values['dry-run'],
          staleAfterSeconds: staleHours * 3600,
          // Only in a data dir the operator named: another run may be using the default one.
          workloadLeftovers: dataDir !== undefined,
        });
        const list = (items: string[]) => (items.length ? items.join(', ') : 'none');
        print(
          [
            `${r.dryRun ? 'would remove' : 'removed'} by the retention policy (${describeRetention(policy)}): ${list(r.forgotten)}`,
            `${r.dryRun ? 'would remove' : 'removed'} incomplete backups older than ${staleHours} h: ${list(r.incompleteRemoved)}`,
            `${r.dryRun ? 'would abort' : 'aborted'} unfinished uploads older than ${staleHours} h: ${list(r.uploadsAborted)}`,
            `${r.dryRun ? 'would remove' : 'removed'} pending markers of runs older than ${staleHours} h: ${list(r.pendingRemoved)}`,
            `complete backups kept: ${r.kept}`,
            ...workloadCleanupLines(r, dataDir),
          ].join('\n'),
          r,
        );
        return;
      }
    }
  } finally {
    engine.close();
  }
}

/** What prune removed in the workload, for the human output (none in a dry run). */
function workloadCleanupLines(r: PruneResult, dataDir: string | undefined): string[] {
  if (r.dryRun) return [];
  const lines: string[] = [];
  if (r.leftoversRemoved)
    lines.push(`removed what interrupted runs left in ${dataDir}, if anything`);
  if (r.leftoversError) {
    lines.push(`could not remove what interrupted runs left in ${dataDir}: ${r.leftoversError}`);
  }
  if (r.staleRemoved.length > 0) lines.push(`removed stale files: ${r.staleRemoved.join(', ')}`);
  if (r.staleError) lines.push(`could not remove stale files: ${r.staleError}`);
  return lines;
}

/** JSON output uses kebab-case keys throughout, as create's contract does. */
function kebabKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(kebabKeys);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value).map(([k, v]) => [
      k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`),
      kebabKeys(v),
    ]),
  );
}

run(process.argv.slice(2)).catch((err: unknown) => {
  endProgressLine();
  const message = redact(describeForCli(err), secrets);
  process.stderr.write(`synapse-backup: error: ${message.split('\n')[0]}\n`);
  process.exitCode = err instanceof BackupError && err.code === 'config' ? 2 : 1;
});
