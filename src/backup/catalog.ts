/**
 * What is in the bucket: the keys of a backup's object and manifest, the
 * listing, a complete backup's manifest and deletion (pruning is prune.ts).
 * Nothing here decrypts.
 */
import { BackupError, errorMessage } from '../errors';
import type { EngineContext } from './context';
import { MANIFEST_SUFFIX, OBJECT_SUFFIX, PENDING_SUFFIX, validateBackupId } from './ids';
import { type Manifest, parseManifest } from './manifest';
import { DEFAULT_STALE_HOURS, pendingKey, refuseRunningCreate } from './pending';
import type { StoredObject } from './store';
import type { BackupInfo, DeleteResult, ListResult } from './types';

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
  manifest?: StoredObject;
  /** A create's pending marker (see pending.ts). */
  pending?: StoredObject;
}

/** The backups' objects and manifests by id; keys that are neither are left out. */
function groupById(ctx: EngineContext, objects: StoredObject[]): Map<string, Found> {
  const byId = new Map<string, Found>();
  for (const obj of objects) {
    const name = ctx.store.relativeName(obj.key);
    if (!name) continue;
    const suffix = [OBJECT_SUFFIX, MANIFEST_SUFFIX, PENDING_SUFFIX].find((s) => name.endsWith(s));
    if (!suffix) continue;
    const id = name.slice(0, -suffix.length);
    const entry = byId.get(id) ?? {};
    if (suffix === OBJECT_SUFFIX) entry.object = obj;
    else if (suffix === MANIFEST_SUFFIX) entry.manifest = obj;
    else entry.pending = obj;
    byId.set(id, entry);
  }
  return byId;
}

/** A manifest read: parsed, or why it could not be read (S3's error, bad JSON). */
type ManifestRead = { manifest: Manifest } | { error: unknown };

async function readManifest(ctx: EngineContext, key: string): Promise<ManifestRead> {
  try {
    return { manifest: parseManifest(await ctx.store.getText(key), key) };
  } catch (error) {
    return { error };
  }
}

/**
 * One backup's entry. Complete: an object and a readable manifest whose
 * ciphertext size matches it. Incomplete: positively so, an object without a
 * manifest or a manifest without an object. Unreadable: the manifest is
 * there but could not be read or does not match the object (`reason` says
 * which); nothing may be concluded, so prune never deletes it. In progress:
 * not complete and a create's pending marker is there (`pendingSince`).
 */
function backupInfo(backupId: string, found: Found, read: ManifestRead | undefined): BackupInfo {
  const { object } = found;
  const manifest = read && 'manifest' in read ? read.manifest : undefined;
  let status: BackupInfo['status'] = 'incomplete';
  let reason: string | undefined;
  if (read && 'error' in read) {
    status = 'unreadable';
    reason = `its manifest could not be read: ${errorMessage(read.error)}`;
  } else if (object && manifest) {
    status = manifest.ciphertextBytes === object.size ? 'complete' : 'unreadable';
    if (status === 'unreadable') {
      reason = `its object holds ${object.size} bytes but the manifest says ${manifest.ciphertextBytes}`;
    }
  } else if (found.pending) {
    status = 'in-progress';
  }
  return {
    backupId,
    created:
      manifest?.startedAt ??
      object?.lastModified?.toISOString() ??
      found.manifest?.lastModified?.toISOString() ??
      found.pending?.lastModified?.toISOString() ??
      new Date(0).toISOString(),
    size: object?.size ?? 0,
    status,
    ...(reason === undefined ? {} : { reason }),
    files: manifest?.files,
    lastModified: (object ?? found.manifest ?? found.pending)?.lastModified?.toISOString(),
    pendingSince: found.pending?.lastModified?.toISOString(),
    serverName: manifest?.serverName,
    ...(status === 'incomplete' && object && !found.manifest ? { objectOnly: true } : {}),
  };
}

/**
 * Every backup under the prefix, by id (see {@link backupInfo} for the
 * statuses), and the in-progress uploads. Throws the store's errors for the
 * listings (the backups' listing's, when both fail); a manifest that cannot be
 * read makes its backup `unreadable`, or, with `strict` (what prune uses), is
 * thrown as it came (`s3`, ...).
 */
export async function listBackups(ctx: EngineContext, strict = false): Promise<ListResult> {
  const [listed, uploadsListed] = await Promise.allSettled([
    ctx.store.list(),
    ctx.store.listUploads(),
  ]);
  // Both fail alike (no credentials, a bad key): the backups' listing is what was asked for.
  if (listed.status === 'rejected') throw listed.reason;
  if (uploadsListed.status === 'rejected') throw uploadsListed.reason;
  const [objects, uploads] = [listed.value, uploadsListed.value];
  const backups: BackupInfo[] = [];
  for (const [backupId, found] of groupById(ctx, objects)) {
    const read = found.manifest ? await readManifest(ctx, found.manifest.key) : undefined;
    if (strict && read && 'error' in read) {
      const cause = read.error;
      if (cause instanceof BackupError) {
        throw new BackupError(
          cause.code,
          `cannot tell whether backup ${backupId} is complete: ${cause.message}`,
          { cause, remedy: cause.remedy },
        );
      }
      throw cause;
    }
    backups.push(backupInfo(backupId, found, read));
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

/**
 * Where backups are looked for, for messages: `under prefix "x/" in bucket "b"`, or
 * `at the top of bucket "b" (no prefix)`.
 */
export function whereInBucket(ctx: EngineContext): string {
  const prefix = ctx.store.key('');
  return prefix
    ? `under prefix "${prefix}" in bucket "${ctx.bucket}"`
    : `at the top of bucket "${ctx.bucket}" (no prefix)`;
}

/**
 * An id that is not there, saying where it was looked for (the prefix, which must be
 * the one the backup was created with). A missing bucket also answers 404 to HEAD:
 * name that instead.
 */
export async function notFound(ctx: EngineContext, id: string): Promise<BackupError> {
  await ctx.store.checkBucket();
  return new BackupError('not-found', `backup ${id} does not exist ${whereInBucket(ctx)}`, {
    remedy: { kind: 'run', operation: 'list', why: 'to see the ids', sameAs: 's3-path' },
  });
}

/**
 * Deletes a backup's manifest, then its object (a half-deleted backup never
 * looks complete), then its pending marker. Without a manifest, a marker
 * younger than `staleAfterSeconds` (default 24 h) is a create that may still
 * be running: refused, `busy`, before anything is deleted; an older one is an
 * interrupted run's, whose uploads are aborted too. Throws `not-found` when the
 * id has neither object, manifest nor marker.
 */
export async function deleteBackup(
  ctx: EngineContext,
  id: string,
  staleAfterSeconds = DEFAULT_STALE_HOURS * 3600,
): Promise<DeleteResult> {
  validateBackupId(id);
  const mKey = manifestKey(ctx, id);
  const oKey = objectKey(ctx, id);
  const pKey = pendingKey(ctx, id);
  const [manifest, object, pending] = await Promise.all(
    [mKey, oKey, pKey].map((key) => ctx.store.head(key)),
  );
  if (!manifest && !object && !pending) throw await notFound(ctx, id);
  const interrupted = !manifest && pending !== undefined;
  if (interrupted) refuseRunningCreate(id, pending, staleAfterSeconds);
  const deletedKeys: string[] = [];
  for (const key of [manifest ? mKey : undefined, object ? oKey : undefined]) {
    if (!key) continue;
    await ctx.store.delete(key);
    deletedKeys.push(key);
  }
  // The interrupted run's multipart upload, if one is left: found by its exact key.
  if (interrupted) await ctx.store.removeFailedUpload(oKey);
  if (pending) {
    await ctx.store.delete(pKey);
    deletedKeys.push(pKey);
  }
  const since = interrupted ? pending.lastModified?.toISOString() : undefined;
  return {
    backupId: id,
    deletedKeys,
    ...(interrupted ? { interruptedRunSince: since ?? '?' } : {}),
  };
}
