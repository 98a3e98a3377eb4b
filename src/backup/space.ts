/**
 * Room for the database snapshot. The create script writes its SQLite copy into
 * the data dir, on the volume the live Synapse writes to: a copy that filled it
 * would make Synapse's own writes fail ("database or disk is full") during the
 * backup. So the engine refuses before the snapshot when the copy would not
 * leave Synapse a margin, and the snapshot stops itself if the volume's free
 * space falls below that margin while it copies (other writers).
 */
import { BackupError } from '../errors';
import { formatBytes } from '../format';
import { runCommand } from '../workload/command';
import type { Workload } from '../workload/workload';
import { snapshotSpaceCommand } from './scripts';

const MiB = 1024 * 1024;
/** The margin Synapse keeps, on volumes of 640 MiB and more: 64 MiB or 10% of the database. */
export const SNAPSHOT_MARGIN_FLOOR = 64 * MiB;

/** Bytes: the database (with its WAL), free space and size of the data dir's filesystem. */
export interface SnapshotSpace {
  databaseBytes: number;
  freeBytes: number;
  volumeBytes: number;
}

/**
 * Bytes that must stay free for Synapse beside the snapshot: the larger of 10% of
 * the database and 64 MiB, the latter capped at 10% of the volume (a 64 MiB
 * margin on a 100 MiB volume would refuse every backup of it).
 */
export function snapshotMargin(space: SnapshotSpace): number {
  const floor = Math.min(SNAPSHOT_MARGIN_FLOOR, Math.floor(space.volumeBytes / 10));
  return Math.max(Math.ceil(space.databaseBytes / 10), floor);
}

/**
 * Checks that the data dir's filesystem can hold the snapshot of the SQLite
 * `database` (an absolute path; none: nothing to check) and still keep
 * {@link snapshotMargin} free. Returns the margin (bytes) for the
 * snapshot's own watch, 0 without a database. Throws `no-space` ("backing up
 * needs 700.0 MiB free in /data for the database snapshot, but only 120.0 MiB
 * is free") with an advice remedy, or `workload-command` when df fails.
 * Source: `df -Pk` and `wc -c` in the workload (scripts/create.ts).
 */
export async function checkSnapshotSpace(
  workload: Workload,
  dataDir: string,
  database?: string,
): Promise<number> {
  if (database === undefined) return 0;
  const out = await runCommand(
    workload,
    snapshotSpaceCommand(dataDir, database),
    `checking free space in ${dataDir}`,
  );
  const [databaseBytes, freeBytes, volumeBytes] = out.trim().split(/\s+/).map(Number);
  const space = { databaseBytes, freeBytes, volumeBytes };
  if (!Object.values(space).every(Number.isFinite) || databaseBytes === 0) return 0;
  const margin = snapshotMargin(space);
  const needed = databaseBytes + margin;
  if (freeBytes < needed) {
    throw new BackupError(
      'no-space',
      `backing up needs ${formatBytes(needed)} free in ${dataDir} for the database snapshot, but only ${formatBytes(freeBytes)} is free`,
      {
        remedy: {
          kind: 'advice',
          text: `grow the data volume or free space in it (the snapshot of the ${formatBytes(databaseBytes)} database is written there, and ${formatBytes(margin)} must stay free for Synapse), then retry`,
        },
      },
    );
  }
  return margin;
}
