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

export const PENDING_FORMAT = 'synapse-backup-pending';

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
  if (await ctx.store.putTextIfAbsent(key, text, 'application/json')) return;
  const holder = await ctx.store.getText(key).then(
    (t) => describeMarker(t),
    () => 'another run',
  );
  throw new BackupError(
    'already-exists',
    `backup ${id} is being created by ${holder} (its pending marker ${key} is there): choose another id`,
    {
      remedy: {
        kind: 'run',
        operation: 'prune',
        why: 'to remove what an interrupted run left once it is older than the stale age, or choose another id',
      },
    },
  );
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

/** Removes `id`'s pending marker; a failure is returned as text, never thrown. */
export async function releaseBackupId(ctx: EngineContext, id: string): Promise<string | undefined> {
  return ctx.store.delete(pendingKey(ctx, id)).then(
    () => undefined,
    (err: unknown) => errorMessage(err),
  );
}
