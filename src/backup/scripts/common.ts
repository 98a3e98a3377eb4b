/**
 * What the workload scripts share: the hidden names the engine creates inside
 * the data dir, the sh wrapper, and the small reads and cleanups every
 * operation uses. See index.ts for the list of scripts and their exit statuses.
 */

import { REMOVE_EXTERNAL_STAGED } from './external';

/** Hidden names the engine creates inside the data dir; never backed up, never swapped. */
export const STAGING_PREFIX = '.synapse-restore-';
export const PREVIOUS_PREFIX = '.pre-restore-';
export const SNAPSHOT_NAME = '.synapse-backup-snapshot.db';
/** The swap's journal: what an interrupted swap left half-done (src/backup/swap-journal.ts). */
export const JOURNAL_NAME = '.synapse-swap.journal';
/** Its temporary copy while a new phase is written (then renamed over it). */
export const JOURNAL_TEMP_NAME = `${JOURNAL_NAME}.new`;
/** The lock of one operation at a time per data dir (src/backup/lock.ts). */
export const LOCK_NAME = '.synapse-backup.lock';
/**
 * A symlink to `/` that the create script makes for the length of its tar, so that
 * paths outside the data dir are archived as `ROOT_LINK_NAME/<path>`, which tar's
 * transform names `@external/<path>` (src/backup/selection.ts).
 */
export const ROOT_LINK_NAME = '.synapse-backup-root';

/**
 * Whether `name`, a top-level name in the data dir, is one of the engine's own
 * bookkeeping names (staging and previous dirs, the snapshot, the journal, the lock):
 * never backed up, never swapped, refused as an archive's entry.
 */
export function isBookkeepingName(name: string): boolean {
  return (
    name.startsWith(STAGING_PREFIX) ||
    name.startsWith(PREVIOUS_PREFIX) ||
    name === SNAPSHOT_NAME ||
    name === ROOT_LINK_NAME ||
    name.startsWith(JOURNAL_NAME) ||
    name === LOCK_NAME
  );
}

/** `script`'s lines as `sh -c`, with `args` as $1, $2, ... (never spliced into the text). */
export function sh(script: string[], ...args: string[]): string[] {
  return ['sh', '-c', script.join('\n'), 'synapse-backup', ...args];
}

/**
 * Removes leftovers of interrupted runs: snapshot files, the root link and staging
 * dirs with the copies they staged beside paths outside the data dir (never
 * previous copies, never the staging dir a swap journal names: it may hold the
 * only complete copy of the restored files).
 */
export function removeLeftoversCommand(dataDir: string): string[] {
  return sh(REMOVE_LEFTOVERS, dataDir);
}

/** removeLeftoversCommand's lines: the data dir is $1; always exit 0. */
export const REMOVE_LEFTOVERS = [
  'cd -- "$1" || exit 0',
  `rm -f -- ${SNAPSHOT_NAME} ${ROOT_LINK_NAME}`,
  `keep=$(sed -n 's/^staging=//p' -- ${JOURNAL_NAME} 2>/dev/null)`,
  `for d in ${STAGING_PREFIX}*; do`,
  '  [ -d "$d" ] && [ "$d" != "$keep" ] || continue',
  ...REMOVE_EXTERNAL_STAGED,
  '  rm -rf -- "$d"',
  'done',
  'exit 0',
];

/** Prints a small file (homeserver.yaml, a signing key), at most 1 MiB. */
export function readSmallFileCommand(path: string): string[] {
  return ['head', '-c', '1048576', '--', path];
}

/**
 * One round trip for "is it a regular file, and what does it hold": prints
 * nothing when `path` is not a regular file, else `+` and then at most 1 MiB of
 * it; head's status. See readSmallFileIfExists (identity.ts).
 */
export function readSmallFileIfExistsCommand(path: string): string[] {
  return sh(['[ -f "$1" ] || exit 0', 'printf +', 'exec head -c 1048576 -- "$1"'], path);
}
