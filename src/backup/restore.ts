/**
 * Restoring without risking the live data: every check comes first, the
 * archive is extracted into a staging directory beside the data, and only a
 * fully authenticated archive that matches its manifest is swapped in (by
 * renames), with Synapse stopped just for the swap. Only the backup's items
 * (items.ts) are replaced; those outside the data dir are staged beside their
 * paths first (external.ts). A failure before the swap
 * leaves the live data as it was; a failure during or after it moves the
 * previous files back. The swap is journaled (swap-journal.ts): a process
 * killed mid-swap leaves a journal that the next operation resolves.
 */
import { BackupError } from '../errors';
import { formatBytes } from '../format';
import { CommandSink, runCommand } from '../workload/command';
import { completeManifest, objectKey } from './catalog';
import { type EngineContext, checkInterrupted, passphraseOf } from './context';
import { readHomeserverConfigOf } from './homeserver';
import {
  configDatabases,
  manifestDatabases,
  planDatabases,
  refuseOpenDatabases,
  refuseRunningSynapse,
} from './running';
import { checkStaleConfigPaths } from './stale-paths';
import { validateBackupId } from './ids';
import type { Manifest } from './manifest';
import { refuseOtherServer } from './identity';
import {
  type ReadCounts,
  checkPassphrase,
  compareWithManifest,
  readArchive,
  withCleanup,
} from './read';
import {
  externalCopies,
  externalTargets,
  refuseRootsElsewhere,
  refuseWithoutDatabase,
  restoreEntryPolicy,
  stageExternal,
} from './external';
import { ItemTracker } from './items';
import { type RestoreDirs, type SwapPlan, removeTree, swapIn } from './restore-swap';
import {
  PREVIOUS_PREFIX,
  STAGING_PREFIX,
  prepareStagingCommand,
  removeJournalCommand,
  syncCommand,
  extractionFlushLauncher,
  tarExtractCommand,
} from './scripts';
import { type SwapRecovery, resolveInterruptedSwap } from './swap-journal';
import { readRestoreTarget, refuseForeignDataDir, refuseMissingDataDir } from './restore-target';
import { ArchiveRejectedError, TarScanner } from './tar';
import type { RestoreRequest, RestoreResult } from './types';

/**
 * Restores backup `request.id` into the data dir (see the protocol above).
 * Throws `not-found`, `corrupt` (no manifest unless allowMissingManifest),
 * `no-data-dir`, `foreign-data-dir` (the data dir holds files but none of
 * Synapse's, unless force: restore-target.ts), `wrong-server` (unless force),
 * `wrong-passphrase`, `no-space`,
 * `archive-rejected`, `manifest-mismatch`, `workload-command`,
 * `unfinished-swap` (an earlier interrupted swap that could not be resolved),
 * `busy` (Synapse runs on the data dir and is not among `services`: running.ts),
 * `interrupted` (ctx.signal: before the swap, the staging dir is removed;
 * once the swap began it is finished first, and the message says so),
 * or ConfigError without a passphrase; before the swap, the live data is as
 * it was. An earlier interrupted swap is resolved first (`swapRecovery`). Into
 * another data dir than the backup's, homeserver.yaml paths still naming the old
 * one are reported (`staleConfigPaths`, stale-paths.ts), never rewritten.
 */
export async function restoreBackup(
  ctx: EngineContext,
  request: RestoreRequest,
): Promise<RestoreResult> {
  passphraseOf(ctx);
  const id = validateBackupId(request.id);
  const { swapRecovery, manifest, liveDatabases } = await checkBeforeRestore(ctx, id, request);
  const stamp = new Date().toISOString().replace(/[-:.]/g, '');
  const dirs: RestoreDirs = {
    staging: `${STAGING_PREFIX}${stamp}`,
    previous: `${PREVIOUS_PREFIX}${stamp}`,
    backupId: id,
    keepPrevious: Boolean(request.keepPrevious),
  };
  const policy = restoreEntryPolicy(manifest, id, ctx.dataDir);
  const tracker = new ItemTracker(manifest?.items);
  const scanner = new TarScanner((entry) => {
    policy(entry);
    tracker.see(entry);
  });
  const unchanged = `the staging dir was removed; ${ctx.dataDir} is unchanged`;
  const extracted = await withCleanup(
    extractToStaging(ctx, id, manifest, dirs, scanner),
    unchanged,
  );
  dirs.rootFromArchive = tracker.rootFromArchive;
  let plan: SwapPlan = { items: [], parents: [] };
  try {
    plan = planSwap(id, tracker, manifest);
    await stageExternal(ctx, dirs, plan);
    // The last moment to stop without touching the live data.
    checkInterrupted(ctx, unchanged);
    // Synapse may have started since the first check (the staging took a while).
    const databases = planDatabases(plan.items, ctx.dataDir);
    if (!request.services?.length) await refuseRunningSynapse(ctx, [], undefined, databases);
  } catch (err) {
    const staged = externalCopies(plan, dirs).staged;
    await removeTree(ctx, [`${ctx.dataDir}/${dirs.staging}`, ...staged], err);
    throw err;
  }
  // From here on a signal waits: the swap is finished (or rolled back) first.
  // With services named: what holds a database once they stopped (running.ts).
  const services = request.services ?? [];
  const held = [...planDatabases(plan.items, ctx.dataDir), ...liveDatabases];
  const recheck = services.length ? () => refuseOpenDatabases(ctx, services, held) : undefined;
  const oneTimeKeysRemoved = await swapIn(ctx, services, dirs, plan, recheck);
  const kept = await removePrevious(ctx, dirs, plan);
  // The last step: until here an interrupted run is completed by the next operation.
  await runCommand(ctx.workload, removeJournalCommand(ctx.dataDir), 'removing the swap journal');
  checkInterrupted(ctx, `the swap had begun, so it was finished: backup ${id} is restored`);
  const outside = externalTargets(plan);
  const items = plan.items.filter((i) => i.kind === 'item' || i.kind === 'db').map((i) => i.name);
  const stale = await checkStaleConfigPaths(ctx, {
    backupDataDir: manifest?.dataDir,
    items,
    outside,
  });
  return {
    backupId: id,
    files: scanner.files,
    plaintextBytes: extracted.plaintext.bytes,
    durationSeconds: extracted.elapsedSeconds,
    flushSeconds: extracted.flushSeconds,
    previousPath: kept ? `${ctx.dataDir}/${dirs.previous}` : undefined,
    ...(outside.length ? { replacedOutside: outside } : {}),
    ...(kept && kept.length ? { externalPreviousPaths: kept } : {}),
    oneTimeKeysRemoved,
    ...(swapRecovery ? { swapRecovery } : {}),
    ...(manifest?.notIncluded?.length ? { notIncluded: manifest.notIncluded } : {}),
    ...(stale ? { staleConfigPaths: stale } : {}),
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
  // An interrupted run's leftovers go first (scripts/common.ts removeLeftoversCommand).
  await runCommand(
    ctx.workload,
    prepareStagingCommand(ctx.dataDir, stagingPath),
    'creating the staging directory',
  );
  try {
    const sink = new CommandSink(
      ctx.workload,
      {
        command: tarExtractCommand(stagingPath),
        launcher: extractionFlushLauncher(stagingPath),
        directStdin: true,
      },
      `tar extracting into ${stagingPath}`,
    );
    const extracted = await readArchive(ctx, id, 'restore', sink, scanner, manifest);
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
    await removeTree(ctx, [stagingPath], err);
    throw err;
  }
}

/**
 * Removes the replaced items (the data dir's previous dir and the copies beside
 * external targets) unless they are to be kept, and only once the swap itself
 * is on disk: if it cannot be flushed they stay. Returns undefined when they
 * went, else the external copies kept (the result says where).
 */
async function removePrevious(
  ctx: EngineContext,
  dirs: RestoreDirs,
  plan: SwapPlan,
): Promise<string[] | undefined> {
  const { previous, companions } = externalCopies(plan, dirs);
  if (dirs.keepPrevious) return previous;
  const flushed = await runCommand(
    ctx.workload,
    syncCommand(ctx.dataDir, ...externalTargets(plan)),
    'flushing the swap',
  ).then(
    () => true,
    () => false,
  );
  if (!flushed) return previous;
  await removeTree(ctx, [`${ctx.dataDir}/${dirs.previous}`, ...previous, ...companions]);
  return undefined;
}

/** The items the archive holds (the manifest's, else derived: items.ts); refuses none. */
function planSwap(id: string, tracker: ItemTracker, manifest: Manifest | undefined): SwapPlan {
  const plan = tracker.items(manifest?.items ? (manifest.databases ?? []) : undefined);
  if (plan.items.length === 0) {
    throw new ArchiveRejectedError(`backup ${id} holds nothing to restore (no selected item)`);
  }
  return plan;
}

/**
 * Every check before anything changes, reported in this order: an interrupted
 * swap that cannot be resolved, a stop signal, a running Synapse (running.ts),
 * the manifest (catalog.ts completeManifest), a missing data dir, a data dir
 * that holds files but none of Synapse's (restore-target.ts), another server's
 * backup, roots elsewhere, no database, the passphrase and binding (the
 * header), free space.
 * The S3 reads have no side effects and go while the workload's run (the
 * journal; then homeserver.yaml and df together), so the checks cost about the
 * longest chain rather than their sum; the error thrown is the first in the
 * order above, as when they ran one by one, and only once every read ended.
 */
async function checkBeforeRestore(
  ctx: EngineContext,
  id: string,
  request: RestoreRequest,
): Promise<{ manifest?: Manifest; swapRecovery?: SwapRecovery; liveDatabases: string[] }> {
  const services = request.services ?? [];
  const manifestRead = started(
    request.allowMissingManifest ? completeManifest(ctx, id, true) : completeManifest(ctx, id),
  );
  const headerRead = started(manifestRead.then((m) => checkPassphrase(ctx, id, m)));
  const reads: Promise<unknown>[] = [manifestRead, headerRead];
  try {
    const swapRecovery = await resolveInterruptedSwap(ctx, services);
    checkInterrupted(ctx, `${ctx.dataDir} is unchanged`);
    // homeserver.yaml after the journal is resolved: a rollback may have changed it.
    const configRead = started(readHomeserverConfigOf(ctx));
    const targetRead = started(readRestoreTarget(ctx));
    reads.push(configRead, targetRead);
    // Never under a Synapse the swap would not stop, nor one holding a database it replaces.
    const toReplace = manifestRead
      .catch(() => undefined)
      .then((m) => manifestDatabases(m, ctx.dataDir));
    await refuseRunningSynapse(ctx, services, configRead, toReplace);
    const manifest = await manifestRead;
    // Before the refusals --force overrides: neither it nor another option helps there.
    await refuseMissingDataDir(targetRead);
    // A df that failed is reported in its turn, at the free-space check.
    const target = await targetRead.catch(() => undefined);
    await refuseUnlessForced(
      [
        () => target && refuseForeignDataDir(ctx.dataDir, id, target.entries, manifest),
        () => refuseOtherServer(id, manifest, request, configRead),
        () => refuseRootsElsewhere(manifest, id, ctx.dataDir),
        () => refuseWithoutDatabase(manifest, id),
      ],
      request.force,
    );
    await headerRead;
    await checkFreeSpace(ctx, id, manifest, (await targetRead).free);
    const liveDatabases = await configRead.then(configDatabases, () => []);
    return { manifest, swapRecovery, liveDatabases };
  } catch (err) {
    await Promise.allSettled(reads);
    throw err;
  }
}

/** The codes of the refusals `--force` (`force=true`) overrides. */
const FORCEABLE = new Set(['foreign-data-dir', 'wrong-server', 'not-included']);

/**
 * Runs every check `--force` overrides (each as unforced) and, unless `force`,
 * refuses once with all that apply: the first's code and remedy, every reason
 * in its message. An operator told to force is then told all it overrides (a
 * foreign dir's refusal alone had hidden the paths outside it a forced restore
 * also replaces). Other errors propagate as they come.
 */
async function refuseUnlessForced(
  checks: (() => unknown)[],
  force: boolean | undefined,
): Promise<void> {
  if (force) return;
  const refused: BackupError[] = [];
  for (const check of checks) {
    try {
      await check();
    } catch (err) {
      if (!(err instanceof BackupError && FORCEABLE.has(err.code))) throw err;
      refused.push(err);
    }
  }
  const [first, ...rest] = refused;
  if (!first) return;
  if (rest.length === 0) throw first;
  const also = rest.map((e) => e.message.replace(/; nothing was (changed|restored)$/, ''));
  throw new BackupError(first.code, `${first.message}; also, ${also.join('; also, ')}`, {
    remedy: first.remedy,
  });
}

/** `promise`, marked handled: it is awaited later, and may reject before that. */
function started<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/** Refuses when the data dir's filesystem cannot hold the staged copy (plaintext bytes). */
async function checkFreeSpace(
  ctx: EngineContext,
  id: string,
  manifest: Manifest | undefined,
  free: number,
): Promise<void> {
  const needed = manifest?.plaintextBytes ?? (await ctx.store.head(objectKey(ctx, id)))?.size ?? 0;
  if (!Number.isFinite(free)) return;
  if (free < needed) {
    throw new BackupError(
      'no-space',
      `restoring backup ${id} needs ${formatBytes(needed)} free in ${ctx.dataDir} for the staged copy, but only ${formatBytes(free)} is free`,
      { remedy: { kind: 'advice', text: 'grow the data volume or free space, then retry' } },
    );
  }
}
