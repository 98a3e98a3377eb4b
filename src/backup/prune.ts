/**
 * Pruning: the retention policy on complete backups (each server_name's on
 * its own: servers sharing a prefix never count against each other), and what interrupted
 * runs left, removed only when it is positively known to be removable (see
 * README "Retention and leftovers"): complete backups the policy drops;
 * incomplete ones (object or manifest alone) older than the stale age; the
 * multipart uploads, and pending markers, of creates whose marker is older
 * than the stale age. An id with a younger pending marker is never touched,
 * and a manifest that cannot be read stops the prune before anything goes.
 */
import { errorMessage } from '../errors';
import { runCommand } from '../workload/command';
import { deleteBackup, listBackups, manifestKey, objectKey } from './catalog';
import type { EngineContext } from './context';
import { pendingKey } from './pending';
import { type RetentionPolicy, backupsToForget, retentionGroups } from './retention';
import { removeLeftoversCommand } from './scripts';
import { resolveInterruptedSwap } from './swap-journal';
import type { BackupInfo, PruneRequest, PruneResult } from './types';

/**
 * Applies `policy` and removes what interrupted runs left (see above). Throws
 * the store's errors; the first one stops it (what went before it is gone).
 * Unless it is a dry run, then removes what interrupted runs left in the
 * workload (see {@link cleanWorkload}).
 */
export async function pruneBackups(
  ctx: EngineContext,
  policy: RetentionPolicy,
  request: PruneRequest = {},
): Promise<PruneResult> {
  const now = request.now ?? new Date();
  const staleBefore = now.getTime() - (request.staleAfterSeconds ?? 86_400) * 1000;
  const isOld = (iso: string | undefined) => iso !== undefined && Date.parse(iso) < staleBefore;
  const dryRun = Boolean(request.dryRun);
  const { backups, uploads } = await listBackups(ctx, true);
  // A create may still be running under a live marker: its id is not touched.
  const live = new Set(
    backups.filter((b) => b.pendingSince && !isOld(b.pendingSince)).map((b) => b.backupId),
  );
  const settled = backups.filter((b) => !live.has(b.backupId));
  const groups = retentionGroups(settled, policy, now);
  const forgotten = backupsToForget(settled, policy, now);
  // An object alone may be the original Python charm's backup (no manifests, restorable
  // with allow-no-manifest): only a manifest alone is known to be removable here; an
  // object this engine began is found by its stale pending marker (removeAbandoned).
  const incomplete = settled.filter(
    (b) => b.status === 'incomplete' && !b.objectOnly && isOld(b.lastModified ?? b.created),
  );
  const abandoned = settled.filter((b) => b.pendingSince && isOld(b.lastModified));
  const liveKeys = new Set([...live].map((id) => objectKey(ctx, id)));
  const staleUploads = uploads.filter((u) => isOld(u.initiated) && !liveKeys.has(u.key));
  const result: PruneResult = {
    dryRun,
    forgotten: forgotten.map((b) => b.backupId),
    incompleteRemoved: incomplete.map((b) => b.backupId),
    uploadsAborted: staleUploads.map((u) => u.key),
    pendingRemoved: [],
    kept: settled.filter((b) => b.status === 'complete').length - forgotten.length,
    ...(groups.length > 1
      ? {
          servers: groups.map((g) => ({
            serverName: g.serverName ?? null,
            kept: g.kept.map((b) => b.backupId),
            forgotten: [...g.forgotten].reverse().map((b) => b.backupId),
          })),
        }
      : {}),
    leftoversRemoved: false,
    staleRemoved: [],
  };
  if (!dryRun) {
    for (const backup of forgotten) await deleteBackup(ctx, backup.backupId);
    const removed: string[] = [];
    for (const { backupId } of incomplete) {
      if (await removeIncomplete(ctx, backupId)) removed.push(backupId);
    }
    result.incompleteRemoved = removed;
    for (const u of staleUploads) await ctx.store.abortUpload({ key: u.key, uploadId: u.uploadId });
  }
  for (const backup of abandoned) await removeAbandoned(ctx, backup, result);
  if (dryRun || request.workloadLeftovers === false) return result;
  return { ...result, ...(await cleanWorkload(ctx, request.services ?? [])) };
}

/**
 * What a create whose pending marker is stale left: the multipart uploads of
 * its object's exact key (the only way MinIO lists one begun before a
 * restart), the one half of an incomplete backup, then the marker. Adds what
 * went (or would go, in a dry run) to `result`.
 */
async function removeAbandoned(
  ctx: EngineContext,
  backup: BackupInfo,
  result: PruneResult,
): Promise<void> {
  const id = backup.backupId;
  const oKey = objectKey(ctx, id);
  const uploads = (await ctx.store.uploadsOf(oKey)).filter(
    (u) => !result.uploadsAborted.includes(u.key),
  );
  result.uploadsAborted.push(...uploads.map((u) => u.key));
  if (!result.dryRun) for (const u of uploads) await ctx.store.abortUpload(u);
  if (backup.status === 'in-progress' && (await removeIncomplete(ctx, id, result.dryRun, true))) {
    result.incompleteRemoved.push(id);
  }
  result.pendingRemoved.push(id);
  if (!result.dryRun) await ctx.store.delete(pendingKey(ctx, id));
}

/**
 * Deletes the one half of an incomplete backup (an object only with `objectToo`:
 * its stale pending marker says this engine began it), after looking again: when
 * both halves (or neither) are there by now, a run finished it meanwhile
 * (or someone removed it), and it is left alone. True when something went
 * (or, with `dryRun`, would go).
 */
async function removeIncomplete(
  ctx: EngineContext,
  id: string,
  dryRun = false,
  objectToo = false,
): Promise<boolean> {
  const mKey = manifestKey(ctx, id);
  const oKey = objectKey(ctx, id);
  const [manifest, object] = await Promise.all([ctx.store.head(mKey), ctx.store.head(oKey)]);
  if (Boolean(manifest) === Boolean(object)) return false;
  if (object && !objectToo) return false;
  if (!dryRun) await ctx.store.delete(manifest ? mKey : oKey);
  return true;
}

type WorkloadCleanup = Pick<
  PruneResult,
  'leftoversRemoved' | 'leftoversError' | 'staleRemoved' | 'staleError' | 'swapRecovery'
>;

/**
 * Resolves an interrupted swap (swap-journal.ts), then removes the database
 * snapshot and staging directories that a killed create or restore left in
 * the data dir, and what the transport's own interrupted runs left
 * (Workload.removeStale). Failures are reported in the result, not thrown:
 * the bucket's pruning is done by then.
 */
async function cleanWorkload(ctx: EngineContext, services: string[]): Promise<WorkloadCleanup> {
  const out: WorkloadCleanup = { leftoversRemoved: false, staleRemoved: [] };
  // An interrupted swap first; its staging dir is never a leftover (removeLeftoversCommand).
  await resolveInterruptedSwap(ctx, services).then(
    (recovery) => recovery && (out.swapRecovery = recovery),
    (err: unknown) => (out.leftoversError = errorMessage(err)),
  );
  await runCommand(ctx.workload, removeLeftoversCommand(ctx.dataDir), 'removing leftovers').then(
    () => (out.leftoversRemoved = true),
    (err: unknown) => (out.leftoversError = errorMessage(err)),
  );
  await ctx.workload.removeStale?.().then(
    (paths) => (out.staleRemoved = paths),
    (err: unknown) => (out.staleError = errorMessage(err)),
  );
  return out;
}
