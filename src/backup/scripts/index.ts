/**
 * Every program the engine runs inside the workload container (POSIX sh, GNU
 * tar, Python's sqlite3), in one place. Each is a function returning argv;
 * every path reaches the program as an argument ($1, sys.argv[1]), never as
 * text spliced into it, so odd characters cannot change what it does.
 *
 * selection.ts
 * - selectionProbeCommand: prints the data dir's real path, its glob matches and
 *   each selected path's type and real path (NUL-separated); always 0.
 *
 * create.ts
 * - tarCreateCommand: the archive of a selection on stdout. Exit 0; 66 (EMPTY_SELECTION_EXIT)
 *   when nothing is selected; 67 (SNAPSHOT_FAILED_EXIT) when the SQLite
 *   snapshot failed; 68 (TAR_DIFFERS_EXIT) and 69 (TAR_FAILED_EXIT) when tar
 *   exited 1 or 2 and dd did not fail (the engine then reads tar's complaints);
 *   otherwise dd's own non-zero status.
 *   The snapshot's failure says why on stderr's last line (its own error, "the
 *   workload has no python3", or python3's status).
 * - snapshotSpaceCommand: prints the database's bytes, the free and total bytes
 *   of the data dir's filesystem; df's status.
 * - SQLITE_SNAPSHOT: the snapshot alone, for the bench.
 *
 * restore.ts
 * - tarExtractCommand: extracts stdin into a directory; tar's status.
 * - extractionFlushLauncher: its launcher, flushing the directory's filesystem while tar writes.
 * - freeSpaceCommand: prints the bytes free for the data dir (NO_DATA_DIR when it is
 *   missing); df's status.
 * - makeDirCommand: mkdir; non-zero if the directory exists.
 * - prepareStagingCommand: removeLeftoversCommand, then makeDirCommand; mkdir's status.
 * - syncCommand: flushes the data dir's filesystem; sync's status.
 * - rollbackCommand: undoes an earlier engine's swap (journal format 1) from
 *   the phase it reached; non-zero (set -e) on the first failed step.
 * - removeTreeCommand: rm -rf; rm's status.
 * - removeOneTimeKeysCommand: prints the rows deleted (nothing without the
 *   table); python's status.
 * - removeKeysAndSetPhaseCommand: the same (when the database exists) as
 *   `keys=N`, then `keys-done`, then sets the journal's phase; python's status
 *   before the mark, the phase step's after it.
 *
 * swap.ts
 * - itemSwapCommand: the backup's items in, their live copies aside, journaled
 *   (format 2); 1 after rolling back what it moved (the journal stays only if
 *   that rollback failed).
 * - itemRollbackCommand: undoes it from the phase it reached; non-zero on the
 *   first failed step, the journal then still there.
 *
 * journal.ts
 * - journalPhaseCommand: sets the swap journal's phase; non-zero without one.
 * - readJournalCommand: prints the journal and `staged=N`; nothing without one.
 * - removeJournalCommand: removes it; rm's status.
 *
 * common.ts
 * - removeLeftoversCommand: removes an interrupted run's snapshot and staging
 *   dirs (never the one a swap journal names); always 0 (a missing data dir is
 *   nothing to remove).
 * - readSmallFileCommand: prints at most 1 MiB of a file; head's status.
 * - readSmallFileIfExistsCommand: nothing when it is not a regular file, else
 *   `+` and at most 1 MiB of it; head's status.
 *
 * lock.ts (lock.ts in the engine: one operation at a time per data dir)
 * - takeLockCommand: 0 when taken; 75 (LOCK_HELD_EXIT) printing the holder.
 * - takeOverLockCommand: 0 when a stale lock was taken over; 75 when it changed hands;
 *   76 (LOCK_RUNNING_EXIT) printing the pid of a command of the stale holder that still runs.
 * - recordRunLauncher: the launcher of a command under the lock (its pid recorded in
 *   the lock dir, the holder's token in its environment); the command's status.
 * - touchLockCommand: the holder's heartbeat; 1 when the lock is not its own.
 * - releaseLockCommand: removes the lock if it is still the holder's; always 0.
 */
export {
  JOURNAL_NAME,
  PREVIOUS_PREFIX,
  ROOT_LINK_NAME,
  SNAPSHOT_NAME,
  STAGING_PREFIX,
  readSmallFileCommand,
  readSmallFileIfExistsCommand,
  removeLeftoversCommand,
} from './common';
export { SELECTED_GLOBS, SELECTED_PATHS, selectionProbeCommand } from './selection';
export {
  EMPTY_SELECTION_EXIT,
  type TarSelection,
  SNAPSHOT_FAILED_EXIT,
  SQLITE_SNAPSHOT,
  TAR_DIFFERS_EXIT,
  TAR_FAILED_EXIT,
  snapshotSpaceCommand,
  tarCreateCommand,
} from './create';
export {
  KEYS_DONE_MARK,
  freeSpaceCommand,
  NO_DATA_DIR,
  NOT_A_DIR,
  makeDirCommand,
  prepareStagingCommand,
  removeKeysAndSetPhaseCommand,
  removeOneTimeKeysCommand,
  removeTreeCommand,
  rollbackCommand,
  syncCommand,
  extractionFlushLauncher,
  tarExtractCommand,
} from './restore';
export {
  LOCK_HELD_EXIT,
  LOCK_NAME,
  LOCK_RUNNING_EXIT,
  recordRunLauncher,
  releaseLockCommand,
  takeLockCommand,
  takeOverLockCommand,
  touchLockCommand,
} from './lock';
export {
  type SwapPhase,
  journalPhaseCommand,
  readJournalCommand,
  removeJournalCommand,
} from './journal';
export {
  type SwapItem,
  externalPaths,
  itemLines,
  itemRollbackCommand,
  itemSwapCommand,
} from './swap';
