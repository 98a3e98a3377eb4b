/**
 * A create's pending marker, `<id>.pending` beside the object: written before
 * anything else of the backup (with a conditional write, so it also reserves
 * the id), removed once the manifest is written or the cleanup of a failed run
 * succeeded. While it is younger than prune's stale age, prune leaves the id
 * alone; once older, it names the one key whose multipart upload may be left
 * (MinIO lists an upload begun before a restart only by its exact key).
 */
import { hostname } from 'node:os';
import { BackupError, errorMessage } from '../errors';
import { objectKey } from './catalog';
import type { EngineContext } from './context';
import { PENDING_SUFFIX } from './ids';
import type { StoredObject } from './store';

export const PENDING_FORMAT = 'synapse-backup-pending';

/** Prune's default stale age, hours: a marker older than this is an interrupted run's. */
export const DEFAULT_STALE_HOURS = 24;

/** The key of backup `id`'s pending marker. */
export function pendingKey(ctx: EngineContext, id: string): string {
  return ctx.store.key(`${id}${PENDING_SUFFIX}`);
}

/**
 * Reserves `id` for this run: writes its pending marker only if there is none
 * (JSON: format, id, object key, ISO start time, host and pid of the writer).
 * Throws `already-exists` naming the other run when the marker is there.
 */
export async function reserveBackupId(ctx: EngineContext, id: string): Promise<void> {
  const key = pendingKey(ctx, id);
  const marker = {
    format: PENDING_FORMAT,
    id,
    object: objectKey(ctx, id),
    startedAt: new Date().toISOString(),
    host: hostname(),
    pid: process.pid,
  };
  const text = `${JSON.stringify(marker, null, 2)}\n`;
  if (await ctx.store.putTextIfAbsent(key, text, 'application/json')) {
    await confirmMarkerListed(ctx, id, key, Buffer.byteLength(text));
    return;
  }
  const holder = await ctx.store.getText(key).then(describeMarker, () => 'another run');
  throw new BackupError(
    'already-exists',
    `backup ${id} is being created by ${holder} (its pending marker ${key} is there)`,
    {
      remedy: {
        kind: 'run',
        operation: 'delete',
        why: `to remove the marker if that run was interrupted (once it is older than the stale age, ${DEFAULT_STALE_HOURS} h unless told otherwise), or choose another id`,
      },
    },
  );
}

/**
 * Fails fast, before tar runs, when the marker did not land in the configured
 * bucket (src/s3/landing.ts): removes it through the same client (which
 * reaches wherever it went) and rethrows, saying so.
 */
async function confirmMarkerListed(
  ctx: EngineContext,
  id: string,
  key: string,
  size: number,
): Promise<void> {
  try {
    await ctx.store.confirmListed(key, size);
  } catch (err) {
    const removed = await ctx.store.delete(key).then(
      () => 'it was removed again',
      (e: unknown) => `removing it failed too: ${errorMessage(e)}`,
    );
    if (err instanceof BackupError && err.code === 'misrouted') {
      err.message += `; nothing else of backup ${id} was written, and ${removed}`;
    }
    throw err;
  }
}

/** "the run of <host> pid <pid> started <time>", from a marker's text. */
function describeMarker(text: string): string {
  try {
    const m = JSON.parse(text) as { host?: string; pid?: number; startedAt?: string };
    return `the run of ${m.host ?? '?'} pid ${m.pid ?? '?'} started ${m.startedAt ?? '?'}`;
  } catch {
    return 'another run';
  }
}

/**
 * Refuses to delete an incomplete backup whose pending marker (`pending`, its
 * HEAD) is younger than `staleAfterSeconds`: its create may still be running.
 * Code `busy`, saying how old the marker is and when delete will take it.
 */
export function refuseRunningCreate(
  id: string,
  pending: StoredObject,
  staleAfterSeconds: number,
): void {
  const written = pending.lastModified?.getTime();
  if (written === undefined) return;
  const ageSeconds = Math.max(0, (Date.now() - written) / 1000);
  if (ageSeconds >= staleAfterSeconds) return;
  throw new BackupError(
    'busy',
    `backup ${id} is being created: its pending marker ${pending.key} was written ${formatAge(ageSeconds)} ago (S3's time), and a create may still be running; nothing was deleted`,
    {
      remedy: {
        kind: 'run',
        operation: 'delete',
        id,
        why: `again once the marker is ${formatAge(staleAfterSeconds)} old if that create was interrupted (it then removes the marker and the upload); else wait for it to finish`,
        staleNowIf: 'if you know that create died',
      },
    },
  );
}

/** 90 → "1 min", 7200 → "2 h", 30 → "30 s". */
function formatAge(seconds: number): string {
  if (seconds >= 7200) return `${Math.floor(seconds / 3600)} h`;
  if (seconds >= 60) return `${Math.floor(seconds / 60)} min`;
  return `${Math.floor(seconds)} s`;
}

/** Removes `id`'s pending marker; a failure is returned as text, never thrown. */
export async function releaseBackupId(ctx: EngineContext, id: string): Promise<string | undefined> {
  return ctx.store.delete(pendingKey(ctx, id)).then(
    () => undefined,
    (err: unknown) => errorMessage(err),
  );
}
