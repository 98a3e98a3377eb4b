/**
 * Restoring without risking the live data: every check comes first, the
 * archive is extracted into a staging directory beside the data, and only a
 * fully authenticated archive that matches its manifest is swapped in (by
 * renames), with Synapse stopped just for the swap. A failure before the swap
 * leaves the live data as it was; a failure during or after it moves the
 * previous files back. The swap is journaled (swap-journal.ts): a process
 * killed mid-swap leaves a journal that the next operation resolves.
 */
import { BackupError, errorMessage } from '../errors';
import { formatBytes } from '../format';
import { CommandSink, fileExists, runCommand } from '../workload/command';
import { completeManifest, objectKey } from './catalog';
import { type EngineContext, checkInterrupted, interruptedBy, passphraseOf } from './context';
import { readServerIdentity } from './identity';
import { validateBackupId } from './ids';
import type { Manifest } from './manifest';
import {
  type ReadCounts,
  checkPassphrase,
  compareWithManifest,
  readArchive,
  withCleanup,
} from './read';
import {
  JOURNAL_NAME,
  PREVIOUS_PREFIX,
  STAGING_PREFIX,
  freeSpaceCommand,
  journalPhaseCommand,
  makeDirCommand,
  removeJournalCommand,
  removeLeftoversCommand,
  removeTreeCommand,
  rollbackCommand,
  swapCommand,
  syncCommand,
  tarExtractCommand,
} from './scripts';
import { removeOneTimeKeys, resolveInterruptedSwap } from './swap-journal';
import { TarScanner, confinedEntryPolicy } from './tar';
import type { RestoreRequest, RestoreResult } from './types';

/** The hidden directories of one restore, as names in the data dir. */
interface RestoreDirs {
  staging: string;
  previous: string;
  /** The backup restored and whether the previous files are kept: for the journal. */
  backupId: string;
  keepPrevious: boolean;
  /** The archive had a `./` entry: its owner, group and mode are the data dir's at backup time. */
  rootFromArchive?: boolean;
}

/**
 * Restores backup `request.id` into the data dir (see the protocol above).
 * Throws `not-found`, `corrupt` (no manifest unless allowMissingManifest),
 * `wrong-server` (unless force), `wrong-passphrase`, `no-space`,
 * `archive-rejected`, `manifest-mismatch`, `workload-command`,
 * `unfinished-swap` (an earlier interrupted swap that could not be resolved),
 * `interrupted` (ctx.signal: before the swap, the staging dir is removed;
 * once the swap began it is finished first, and the message says so),
 * or ConfigError without a passphrase; before the swap, the live data is as
 * it was. An earlier interrupted swap is resolved first (`swapRecovery`).
 */
export async function restoreBackup(
  ctx: EngineContext,
  request: RestoreRequest,
): Promise<RestoreResult> {
  passphraseOf(ctx);
  const id = validateBackupId(request.id);
  const swapRecovery = await resolveInterruptedSwap(ctx, request.services ?? []);
  checkInterrupted(ctx, `${ctx.dataDir} is unchanged`);
  const manifest = request.allowMissingManifest
    ? await completeManifest(ctx, id, true)
    : await completeManifest(ctx, id);
  await refuseOtherServer(ctx, id, manifest?.serverName, request);
  await checkPassphrase(ctx, id);
  await checkFreeSpace(ctx, id, manifest);

  await runCommand(ctx.workload, removeLeftoversCommand(ctx.dataDir), 'removing leftovers');
  const stamp = new Date().toISOString().replace(/[-:.]/g, '');
  const dirs: RestoreDirs = {
    staging: `${STAGING_PREFIX}${stamp}`,
    previous: `${PREVIOUS_PREFIX}${stamp}`,
    backupId: id,
    keepPrevious: Boolean(request.keepPrevious),
  };
  const policy = confinedEntryPolicy();
  const scanner = new TarScanner((entry) => {
    policy(entry);
    if (entry.type === 'directory' && /^(\.\/*)+$/.test(entry.name)) dirs.rootFromArchive = true;
  });
  const unchanged = `the staging dir was removed; ${ctx.dataDir} is unchanged`;
  const extracted = await withCleanup(
    extractToStaging(ctx, id, manifest, dirs, scanner),
    unchanged,
  );
  // The last moment to stop without touching the live data.
  if (interruptedBy(ctx)) {
    await removeTree(ctx, `${ctx.dataDir}/${dirs.staging}`);
    checkInterrupted(ctx, unchanged);
  }
  // From here on a signal waits: the swap is finished (or rolled back) first.
  const oneTimeKeysRemoved = await swapIn(ctx, request.services ?? [], dirs);

  const previousPath = `${ctx.dataDir}/${dirs.previous}`;
  // The previous files go only once the swap itself is on disk; if it cannot be
  // flushed, they stay, and the result says where.
  let keepPrevious = Boolean(request.keepPrevious);
  if (!keepPrevious) {
    keepPrevious = await runCommand(
      ctx.workload,
      syncCommand(ctx.dataDir),
      'flushing the swap',
    ).then(
      () => false,
      () => true,
    );
    if (!keepPrevious) await removeTree(ctx, previousPath);
  }
  // The last step: until here an interrupted run is completed by the next operation.
  await runCommand(ctx.workload, removeJournalCommand(ctx.dataDir), 'removing the swap journal');
  checkInterrupted(ctx, `the swap had begun, so it was finished: backup ${id} is restored`);
  return {
    backupId: id,
    files: scanner.files,
    plaintextBytes: extracted.plaintext.bytes,
    durationSeconds: extracted.elapsedSeconds,
    flushSeconds: extracted.flushSeconds,
    previousPath: keepPrevious ? previousPath : undefined,
    oneTimeKeysRemoved,
    ...(swapRecovery ? { swapRecovery } : {}),
  };
}

/**
 * Extracts the backup into a new staging directory, compares it with the
 * manifest and flushes it to disk; on any failure the staging directory goes.
 */
async function extractToStaging(
  ctx: EngineContext,
  id: string,
  manifest: Manifest | undefined,
  dirs: RestoreDirs,
  scanner: TarScanner,
): Promise<ReadCounts & { flushSeconds: number }> {
  const stagingPath = `${ctx.dataDir}/${dirs.staging}`;
  await runCommand(ctx.workload, makeDirCommand(stagingPath), 'creating the staging directory');
  try {
    const sink = new CommandSink(
      ctx.workload,
      { command: tarExtractCommand(stagingPath), directStdin: true },
      `tar extracting into ${stagingPath}`,
    );
    const extracted = await readArchive(ctx, id, 'restore', sink, scanner);
    if (manifest) {
      compareWithManifest(manifest, {
        plaintextBytes: extracted.plaintext.bytes,
        ciphertextBytes: extracted.ciphertext.bytes,
        sha256: extracted.plaintext.sha256,
        files: scanner.files,
      });
    }
    // On disk before Synapse stops: the swap below is renames only.
    const flushStart = Date.now();
    await runCommand(ctx.workload, syncCommand(stagingPath), 'flushing the restored files to disk');
    return { ...extracted, flushSeconds: (Date.now() - flushStart) / 1000 };
  } catch (err) {
    await removeTree(ctx, stagingPath, err);
    throw err;
  }
}

/**
 * With `services` stopped: moves the live files aside and the staged ones in,
 * removes the one-time keys, and starts the services again. A failure after
 * the swap moves the previous files back; any failure removes the staging
 * directory and starts the services. Returns the one-time keys removed.
 */
async function swapIn(
  ctx: EngineContext,
  services: string[],
  dirs: RestoreDirs,
): Promise<number | undefined> {
  const { workload, dataDir } = ctx;
  await workload.stopServices(services);
  try {
    await runCommand(
      workload,
      swapCommand(dataDir, dirs.staging, dirs.previous, {
        rootFromArchive: dirs.rootFromArchive,
        backupId: dirs.backupId,
        keepPrevious: dirs.keepPrevious,
      }),
      `moving the restored files into ${dataDir}`,
    );
    try {
      const removed = await removeOneTimeKeys(ctx);
      await runCommand(
        workload,
        journalPhaseCommand(dataDir, 'keys-removed'),
        'recording the swap journal phase',
      );
      await workload.startServices(services);
      return removed;
    } catch (err) {
      await workload.stopServices(services).catch(() => undefined);
      await runCommand(
        workload,
        rollbackCommand(dataDir, dirs.staging, dirs.previous),
        'moving the previous files back',
      );
      throw err;
    }
  } catch (err) {
    // A journal still there means the swap was cut off (the transport lost, the
    // rollback failed): its staging dir may hold restored files, and the next
    // operation resolves it (swap-journal.ts).
    if (await fileExists(workload, `${dataDir}/${JOURNAL_NAME}`).catch(() => true)) {
      // Synapse stays stopped: started on a half-swapped data dir it could make a new,
      // empty database where the swapped-out one should be.
      if (err instanceof Error) {
        const stopped = services.length ? `, so ${services.join(', ')} stays stopped` : '';
        err.message += `; the swap is unfinished${stopped}: the next create, restore or prune completes or rolls it back`;
      }
    } else {
      await removeTree(ctx, `${dataDir}/${dirs.staging}`, err);
      await workload.startServices(services).catch(() => undefined);
    }
    throw err;
  }
}

/** Refuses a backup of another server name than the live one, unless `force`. */
async function refuseOtherServer(
  ctx: EngineContext,
  id: string,
  backupServer: string | undefined,
  request: RestoreRequest,
): Promise<void> {
  if (!backupServer || request.force) return;
  const live = await readServerIdentity(ctx.workload, ctx.dataDir);
  const current = live.serverName ?? request.expectedServerName;
  if (current && current !== backupServer) {
    throw new BackupError(
      'wrong-server',
      `backup ${id} is of server "${backupServer}" but this Synapse is "${current}": restoring it would replace this server's identity`,
      { remedy: { kind: 'run-again', option: 'force', when: 'if that is what you want' } },
    );
  }
}

/** Refuses when the data dir's filesystem cannot hold the staged copy (plaintext bytes). */
async function checkFreeSpace(
  ctx: EngineContext,
  id: string,
  manifest: Manifest | undefined,
): Promise<void> {
  const needed = manifest?.plaintextBytes ?? (await ctx.store.head(objectKey(ctx, id)))?.size ?? 0;
  const output = await runCommand(
    ctx.workload,
    freeSpaceCommand(ctx.dataDir),
    `checking free space in ${ctx.dataDir}`,
  );
  const free = Number(output.trim());
  if (!Number.isFinite(free)) return;
  if (free < needed) {
    throw new BackupError(
      'no-space',
      `restoring backup ${id} needs ${formatBytes(needed)} free in ${ctx.dataDir} for the staged copy, but only ${formatBytes(free)} is free`,
      { remedy: { kind: 'advice', text: 'grow the data volume or free space, then retry' } },
    );
  }
}

/** Removes a tree the engine made; a failure is added to `cause`'s story rather than hiding it. */
async function removeTree(ctx: EngineContext, path: string, cause?: unknown): Promise<void> {
  try {
    await runCommand(ctx.workload, removeTreeCommand(path), `removing ${path}`);
  } catch (err) {
    if (cause instanceof Error)
      cause.message += `; also could not remove ${path}: ${errorMessage(err)}`;
    else throw err;
  }
}
