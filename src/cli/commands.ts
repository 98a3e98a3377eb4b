/**
 * The CLI's subcommands, one function each, on an engine built by main.ts.
 * Each prints one human line (or table) or, with --json, one JSON object.
 */
import type { BackupEngine } from '../backup/engine';
import { describeByServer, describeRetention } from '../backup/retention';
import { ConfigError } from '../errors';
import { normalizePrefix } from '../s3/settings';
import { counted, formatBackupTable, formatBytes } from '../format';
import { type Values, required } from './args';
import { makeRestoreDir } from './restore-dir';
import { hours, wholeNumber } from './numbers';
import {
  createNoteLines,
  endProgressLine,
  noHomeserverYamlWarning,
  staleConfigWarning,
  warnSelection,
  warnSwapRecovery,
  workloadCleanupLines,
} from './output';

export interface CommandContext {
  engine: BackupEngine;
  values: Values;
  /** The data directory as the engine has it (absolute on this host). */
  dataDir: string | undefined;
  print(human: string, data: unknown): void;
}

type Command = (c: CommandContext) => Promise<void>;

const create: Command = async ({ engine, values, print }) => {
  const r = await engine.create({ id: values.id });
  warnSwapRecovery(r);
  warnSelection(r);
  print(
    [
      `created backup ${r.backupId}: ${counted(r.files, 'file')}, ${formatBytes(r.plaintextBytes)} archived, ${formatBytes(r.size)} stored, sha256 ${r.sha256}, ${r.durationSeconds.toFixed(1)} s`,
      ...createNoteLines(r),
    ].join('\n'),
    {
      'backup-id': r.backupId,
      size: r.size,
      files: r.files,
      sha256: r.sha256,
      'plaintext-bytes': r.plaintextBytes,
      'duration-seconds': r.durationSeconds,
      skipped: r.skipped,
      'skipped-count': r.skippedCount,
      warnings: r.warnings,
      'warnings-count': r.warningsCount,
      ...(r.swapRecovery ? { 'swap-recovery': r.swapRecovery } : {}),
      ...(r.missing ? { missing: r.missing } : {}),
      ...(r.notIncluded ? { 'not-included': r.notIncluded } : {}),
      ...(r.noHomeserverYaml ? { 'no-homeserver-yaml': noHomeserverYamlWarning(r) } : {}),
      ...(r.archivedOutside ? { 'archived-outside': r.archivedOutside } : {}),
    },
  );
};

const list: Command = async ({ engine, values, print }) => {
  const r = await engine.list();
  const uploads = r.uploads.map(
    (u) => `in-progress upload: ${u.key} (started ${u.initiated ?? '?'})`,
  );
  print([formatBackupTable(r.backups), ...uploads].join('\n'), r);
  if (r.backups.length === 0 && r.uploads.length === 0) {
    process.stderr.write(`synapse-backup: ${nothingListed(values)}\n`);
  }
};

/**
 * list's note on stderr when it found nothing: where it looked, and that --prefix
 * must be the one the backups were created with.
 */
function nothingListed(values: Values): string {
  const prefix = normalizePrefix(values.prefix ?? '');
  return prefix
    ? `no backups under prefix "${prefix}/" in bucket "${values.bucket}"; if they were created with another --prefix (or none), pass that one`
    : `no backups at the top of bucket "${values.bucket}" (no --prefix); if they were created with --prefix, pass the same one`;
}

const restore: Command = async ({ engine, values, dataDir, print }) => {
  const id = required(values.id, 'id', 'restore');
  const undoMkdir = values['pebble-socket'] ? () => undefined : makeRestoreDir(dataDir!);
  const r = await engine
    .restore({
      id,
      allowMissingManifest: values['allow-no-manifest'],
      keepPrevious: values['keep-previous'],
      force: values.force,
      services: values.service,
    })
    .catch((err: unknown) => {
      undoMkdir();
      throw err;
    });
  warnSwapRecovery(r);
  warnSelection(r);
  const stale = staleConfigWarning(r);
  if (stale) {
    endProgressLine();
    process.stderr.write(`synapse-backup: warning: ${stale}\n`);
  }
  const notes = [
    r.replacedOutside ? `also restored ${r.replacedOutside.join(', ')}` : undefined,
    r.oneTimeKeysRemoved ? `${counted(r.oneTimeKeysRemoved, 'one-time key')} removed` : undefined,
    r.previousPath
      ? `previous files kept in ${[r.previousPath, ...(r.externalPreviousPaths ?? [])].join(', ')}`
      : undefined,
  ].filter(Boolean);
  print(
    `restored backup ${r.backupId} into ${dataDir}: ${counted(r.files, 'file')}, ${formatBytes(r.plaintextBytes)}${notes.map((n) => `; ${n}`).join('')}`,
    stale ? { ...r, staleConfigPaths: { ...r.staleConfigPaths, warning: stale } } : r,
  );
};

const remove: Command = async ({ engine, values, print }) => {
  const staleHours = hours(values['stale-hours'], 'stale-hours');
  const r = await engine.delete(required(values.id, 'id', 'delete'), {
    staleAfterSeconds: staleHours === undefined ? undefined : staleHours * 3600,
  });
  const interrupted = r.interruptedRunSince
    ? `; it was an interrupted create's, whose pending marker dates from ${r.interruptedRunSince}: its marker and any upload it left are gone`
    : '';
  print(`deleted backup ${r.backupId} (${r.deletedKeys.join(', ')})${interrupted}`, r);
};

const verify: Command = async ({ engine, values, print }) => {
  const r = await engine.verify(required(values.id, 'id', 'verify'));
  print(
    `backup ${r.backupId} is good: ${counted(r.files, 'file')}, ${formatBytes(r.plaintextBytes)}, sha256 ${r.sha256}`,
    { ...r, ok: true },
  );
};

const decrypt: Command = async ({ engine, values }) => {
  const id = required(values.id, 'id', 'decrypt');
  if (process.stdout.isTTY) {
    throw new ConfigError('decrypt writes a tar archive: redirect stdout to a file or a pipe');
  }
  // A reader that stops early (`| head -c 100`) closes the pipe: writes fail with EPIPE.
  let pipeClosed = false;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') pipeClosed = true;
  });
  const r = await engine
    .decryptTo(id, process.stdout, { allowMissingManifest: values['allow-no-manifest'] })
    .catch((err: unknown) => {
      if (!pipeClosed && !isBrokenPipe(err)) throw err;
      return undefined;
    });
  if (!r) {
    // No failure of the backup: the output was cut where the reader stopped. Silent, with
    // the status of a process killed by SIGPIPE (128 + 13), as tar or cat in a pipeline.
    endProgressLine();
    process.exitCode = BROKEN_PIPE_STATUS;
    return;
  }
  endProgressLine();
  process.stderr.write(
    `decrypted backup ${id}: ${formatBytes(r.plaintextBytes)}, sha256 ${r.sha256}\n`,
  );
};

/** decrypt's exit status when its reader closed the pipe early: 128 + SIGPIPE (13). */
export const BROKEN_PIPE_STATUS = 141;

/** True when `err`, or an error it was caused by, is a write to a closed pipe (EPIPE). */
function isBrokenPipe(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth += 1) {
    if ((e as NodeJS.ErrnoException).code === 'EPIPE') return true;
  }
  return false;
}

const prune: Command = async ({ engine, values, dataDir, print }) => {
  const policy = {
    keepLast: wholeNumber(values['keep-last'], 'keep-last'),
    keepDays: wholeNumber(values['keep-days'], 'keep-days'),
  };
  const staleHours = hours(values['stale-hours'], 'stale-hours') ?? 24;
  const r = await engine.prune(policy, {
    dryRun: values['dry-run'],
    staleAfterSeconds: staleHours * 3600,
    // Only in a data dir the operator named: another run may be using the default one.
    workloadLeftovers: dataDir !== undefined,
  });
  warnSwapRecovery(r);
  const items = (names: string[]) => (names.length ? names.join(', ') : 'none');
  const [remove, abort] = r.dryRun ? ['would remove', 'would abort'] : ['removed', 'aborted'];
  // Backups of several servers share the prefix: the policy applies to each server's own.
  const servers = r.servers;
  const each = servers ? ' of each server' : '';
  print(
    [
      `${remove} by the retention policy (${describeRetention(policy)}${each}): ${servers ? describeByServer(servers, 'forgotten') : items(r.forgotten)}`,
      `${remove} incomplete backups older than ${staleHours} h: ${items(r.incompleteRemoved)}`,
      `${abort} unfinished uploads older than ${staleHours} h: ${items(r.uploadsAborted)}`,
      `${remove} pending markers of runs older than ${staleHours} h: ${items(r.pendingRemoved)}`,
      `complete backups kept: ${r.kept}${servers ? ` (${describeByServer(servers, 'kept')})` : ''}`,
      ...workloadCleanupLines(r, dataDir),
    ].join('\n'),
    r,
  );
};

/** Every subcommand by its name (args.ts COMMANDS lists the same names). */
export const COMMAND_HANDLERS: Record<string, Command> = {
  create,
  list,
  restore,
  delete: remove,
  verify,
  decrypt,
  prune,
};
