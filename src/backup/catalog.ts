/**
 * What is in the bucket: the keys of a backup's object and manifest, the
 * listing, a complete backup's manifest, deletion and pruning (with what
 * interrupted runs left in the workload). Nothing here decrypts.
 */
import { BackupError, errorMessage } from '../errors';
import { runCommand } from '../workload/command';
import type { EngineContext } from './context';
import { MANIFEST_SUFFIX, OBJECT_SUFFIX, validateBackupId } from './ids';
import { type Manifest, parseManifest } from './manifest';
import { type RetentionPolicy, backupsToForget } from './retention';
import { resolveInterruptedSwap } from './swap-journal';
import { removeLeftoversCommand } from './scripts';
import type { StoredObject } from './store';
import type { BackupInfo, DeleteResult, ListResult, PruneRequest, PruneResult } from './types';

/** The key of backup `id`'s encrypted tar. */
export function objectKey(ctx: EngineContext, id: string): string {
  return ctx.store.key(`${id}${OBJECT_SUFFIX}`);
}

/** The key of backup `id`'s manifest. */
export function manifestKey(ctx: EngineContext, id: string): string {
  return ctx.store.key(`${id}${MANIFEST_SUFFIX}`);
}

interface Found {
  object?: StoredObject;
  manifestKey?: string;
}

/** The backups' objects and manifests by id; keys that are neither are left out. */
function groupById(ctx: EngineContext, objects: StoredObject[]): Map<string, Found> {
  const byId = new Map<string, Found>();
  for (const obj of objects) {
    const name = ctx.store.relativeName(obj.key);
    if (!name) continue;
    const suffix = [OBJECT_SUFFIX, MANIFEST_SUFFIX].find((s) => name.endsWith(s));
    if (!suffix) continue;
    const id = name.slice(0, -suffix.length);
    const entry = byId.get(id) ?? {};
    if (suffix === OBJECT_SUFFIX) entry.object = obj;
    else entry.manifestKey = obj.key;
    byId.set(id, entry);
  }
  return byId;
}

/**
 * Every backup under the prefix, by id, and the in-progress uploads. A backup
 * is complete when it has an object and a readable manifest whose ciphertext
 * size matches the object's.
 */
export async function listBackups(ctx: EngineContext): Promise<ListResult> {
  const [objects, uploads] = await Promise.all([ctx.store.list(), ctx.store.listUploads()]);
  const backups: BackupInfo[] = [];
  for (const [backupId, { object, manifestKey: key }] of groupById(ctx, objects)) {
    const manifest = key
      ? await ctx.store
          .getText(key)
          .then((text) => parseManifest(text, key))
          .catch(() => undefined)
      : undefined;
    const complete = Boolean(object && manifest && manifest.ciphertextBytes === object.size);
    backups.push({
      backupId,
      created:
        manifest?.startedAt ?? object?.lastModified?.toISOString() ?? new Date(0).toISOString(),
      size: object?.size ?? 0,
      status: complete ? 'complete' : 'incomplete',
      files: manifest?.files,
      lastModified: object?.lastModified?.toISOString(),
      serverName: manifest?.serverName,
    });
  }
  backups.sort((a, b) => a.backupId.localeCompare(b.backupId));
  return {
    backups,
    uploads: uploads.map((u) => ({
      key: u.key,
      uploadId: u.uploadId,
      initiated: u.initiated?.toISOString(),
    })),
  };
}

/**
 * Loads the manifest of a complete backup, with a specific error for each way
 * it can be missing. With `allowMissing`, a backup written by the original
 * Python charm (which wrote no manifests) yields undefined instead.
 */
export async function completeManifest(
  ctx: EngineContext,
  id: string,
  allowMissing: true,
): Promise<Manifest | undefined>;
export async function completeManifest(
  ctx: EngineContext,
  id: string,
  allowMissing?: false,
): Promise<Manifest>;
export async function completeManifest(
  ctx: EngineContext,
  id: string,
  allowMissing = false,
): Promise<Manifest | undefined> {
  const mKey = manifestKey(ctx, id);
  const oKey = objectKey(ctx, id);
  const [manifestHead, objectHead] = await Promise.all([
    ctx.store.head(mKey),
    ctx.store.head(oKey),
  ]);
  if (!manifestHead && !objectHead) throw await notFound(ctx, id);
  if (!objectHead) {
    throw new BackupError(
      'corrupt',
      `backup ${id} has a manifest but its data object ${oKey} is missing`,
    );
  }
  if (!manifestHead) {
    if (allowMissing) return undefined;
    throw new BackupError(
      'corrupt',
      `backup ${id} is incomplete: it has no manifest (the run that made it did not finish, or an older charm wrote it)`,
      {
        remedy: {
          kind: 'run-again',
          option: 'allow-no-manifest',
          when: "if it is an old charm's backup",
        },
      },
    );
  }
  const manifest = parseManifest(await ctx.store.getText(mKey), mKey);
  if (manifest.ciphertextBytes !== objectHead.size) {
    throw new BackupError(
      'corrupt',
      `backup ${id} is damaged: its object holds ${objectHead.size} bytes but the manifest says ${manifest.ciphertextBytes}`,
    );
  }
  return manifest;
}

/** An id that is not there. A missing bucket also answers 404 to HEAD: name that instead. */
export async function notFound(ctx: EngineContext, id: string): Promise<BackupError> {
  await ctx.store.checkBucket();
  return new BackupError('not-found', `backup ${id} does not exist in bucket "${ctx.bucket}"`, {
    remedy: { kind: 'run', operation: 'list', why: 'to see the ids' },
  });
}

/** Deletes a backup's manifest, then its object: a half-deleted backup never looks complete. */
export async function deleteBackup(ctx: EngineContext, id: string): Promise<DeleteResult> {
  validateBackupId(id);
  const mKey = manifestKey(ctx, id);
  const oKey = objectKey(ctx, id);
  const [manifest, object] = await Promise.all([ctx.store.head(mKey), ctx.store.head(oKey)]);
  if (!manifest && !object) throw await notFound(ctx, id);
  const deletedKeys: string[] = [];
  for (const key of [manifest ? mKey : undefined, object ? oKey : undefined]) {
    if (!key) continue;
    await ctx.store.delete(key);
    deletedKeys.push(key);
  }
  return { backupId: id, deletedKeys };
}

/**
 * Applies the retention policy to complete backups and removes what
 * interrupted runs left: in-progress uploads and incomplete backups older
 * than `staleAfterSeconds`. The newest complete backup is never removed.
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
  const dryRun = Boolean(request.dryRun);
  const { backups, uploads } = await listBackups(ctx);
  const forgotten = backupsToForget(backups, policy, now);
  const incomplete = backups.filter(
    (b) => b.status === 'incomplete' && Date.parse(b.lastModified ?? b.created) < staleBefore,
  );
  const staleUploads = uploads.filter(
    (u) => u.initiated !== undefined && Date.parse(u.initiated) < staleBefore,
  );
  if (!dryRun) {
    for (const backup of [...forgotten, ...incomplete]) await deleteBackup(ctx, backup.backupId);
    for (const u of staleUploads) await ctx.store.abortUpload({ key: u.key, uploadId: u.uploadId });
  }
  return {
    dryRun,
    forgotten: forgotten.map((b) => b.backupId),
    incompleteRemoved: incomplete.map((b) => b.backupId),
    uploadsAborted: staleUploads.map((u) => u.key),
    kept: backups.filter((b) => b.status === 'complete').length - forgotten.length,
    ...(dryRun || request.workloadLeftovers === false
      ? { leftoversRemoved: false, staleRemoved: [] }
      : await cleanWorkload(ctx)),
  };
}

type WorkloadCleanup = Pick<
  PruneResult,
  'leftoversRemoved' | 'leftoversError' | 'staleRemoved' | 'staleError' | 'swapRecovery'
>;

/**
 * Resolves an interrupted swap (swap-journal.ts), then removes the database
 * snapshot and staging directories that a killed create or restore left in
 * the data dir, and what the transport's own interrupted
 * runs left (Workload.removeStale). Failures are reported in the result, not
 * thrown: the bucket's pruning is done by then.
 */
async function cleanWorkload(ctx: EngineContext): Promise<WorkloadCleanup> {
  const out: WorkloadCleanup = { leftoversRemoved: false, staleRemoved: [] };
  // An interrupted swap first; its staging dir is never a leftover (removeLeftoversCommand).
  await resolveInterruptedSwap(ctx).then(
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
