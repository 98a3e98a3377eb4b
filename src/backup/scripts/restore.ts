/** The restore's scripts: free space, staging, extraction, the swap and its rollback, one-time keys. */
import { JOURNAL_NAME, PREVIOUS_PREFIX, REMOVE_LEFTOVERS, STAGING_PREFIX, sh } from './common';
import { SET_PHASE_FUNCTION, type SwapPhase } from './journal';
import { LOCK_NAME, RUN_MARKER_ENV } from './lock';

/** The line freeSpaceCommand prints instead of a number when the data dir does not exist. */
export const NO_DATA_DIR = 'no-data-dir';
/** The line freeSpaceCommand prints when the data dir is there but not a directory. */
export const NOT_A_DIR = 'not-a-directory';

/**
 * Prints the bytes available to unprivileged writers on the data dir's
 * filesystem on its first line (empty when df printed no number), then the
 * data dir's top-level names, each ended by a NUL (dot-files too: the restore
 * refuses a directory that holds files but none of Synapse's); or only
 * {@link NO_DATA_DIR} / {@link NOT_A_DIR}. df's status when it fails (its
 * complaint on stderr): never an empty answer read as "no space".
 */
export function freeSpaceCommand(dataDir: string): string[] {
  return sh(
    [
      'set -e',
      `[ -e "$1" ] || { echo ${NO_DATA_DIR}; exit 0; }`,
      `[ -d "$1" ] || { echo ${NOT_A_DIR}; exit 0; }`,
      'out=$(df -Pk -- "$1")',
      `printf '%s\n' "$out" | awk 'NR==2 { n = $4 * 1024 } END { print n }'`,
      'for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do',
      '  [ -e "$f" ] || [ -L "$f" ] || continue',
      `  printf '%s\\0' "\${f##*/}"`,
      'done',
    ],
    dataDir,
  );
}

/** Creates an empty directory; fails if it exists. */
export function makeDirCommand(path: string): string[] {
  return ['mkdir', '-m', '0700', '--', path];
}

/**
 * removeLeftoversCommand (common.ts) of `dataDir`, then makeDirCommand of `staging`
 * (a path), in one round trip: the leftovers' removal never fails, so a non-zero
 * status is mkdir's.
 */
export function prepareStagingCommand(dataDir: string, staging: string): string[] {
  return sh(['(', ...REMOVE_LEFTOVERS, ')', 'exec mkdir -m 0700 -- "$2"'], dataDir, staging);
}

/** Removes trees the engine created (staging, previous copies). */
export function removeTreeCommand(...paths: string[]): string[] {
  return ['rm', '-rf', '--', ...paths];
}

/**
 * Flushes the filesystems that hold `paths` to disk (syncfs; all filesystems where
 * `sync -f` is missing). Renames and deletions reach the disk in the journal's
 * order, but the data of newly written files may not: without this, a crash soon
 * after a restore could leave restored files empty with the previous ones deleted.
 */
export function syncCommand(...paths: string[]): string[] {
  return sh(['for p; do sync -f -- "$p" 2>/dev/null || { sync; exit; }; done'], ...paths);
}

const MOVE_TOP_LEVEL = [
  // move_all FROM TO: moves every entry of FROM (dotfiles too) into TO, skipping the engine's
  // own names; non-zero when any rename failed (a loop's status is only its last step's).
  'move_all() {',
  '  rc=0',
  '  for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do',
  '    [ -e "$f" ] || [ -L "$f" ] || continue',
  '    case "${f##*/}" in',
  `      ${STAGING_PREFIX}*|${PREVIOUS_PREFIX}*|${JOURNAL_NAME}*|${LOCK_NAME}) continue ;;`,
  '    esac',
  '    mv -- "$f" "$2"/ || rc=1',
  '  done',
  '  return $rc',
  '}',
];

/**
 * Undoes a swap of the journal's format 1 (an earlier engine's, which moved
 * everything in the data dir; swap.ts is today's) that reached `phase`:
 * unless it is `moving-out`, the files in
 * the data dir are restored ones and go back into $2 (journal phase
 * `rolling-back`, then `moving-out`); then the previous ones return from $3
 * (if it exists). The staging dir and the journal go last. Non-zero (set -e)
 * on the first failed step, the journal then still there, saying where the
 * rollback was.
 */
export function rollbackCommand(
  dataDir: string,
  staging: string,
  previous: string,
  phase: SwapPhase = 'moved',
): string[] {
  return sh(
    [
      'set -eu',
      ...MOVE_TOP_LEVEL,
      'cd -- "$1"',
      ...SET_PHASE_FUNCTION,
      'if [ "$4" != moving-out ]; then',
      '  set_phase rolling-back',
      '  mkdir -p -m 0700 -- "$2"',
      '  move_all . "$2"',
      '  set_phase moving-out',
      'fi',
      'if [ -d "$3" ]; then move_all "$3" .; rmdir -- "$3"; fi',
      'rm -rf -- "$2"',
      'sync -f -- . 2>/dev/null || sync',
      'rm -f -- "$J" "$JT"',
    ],
    dataDir,
    staging,
    previous,
    phase,
  );
}

/** The Python that deletes the one-time keys of the database sys.argv[1]; prints the rows deleted. */
const REMOVE_ONE_TIME_KEYS_PY = [
  'import sqlite3, sys',
  'db = sqlite3.connect(sys.argv[1])',
  'tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type=\'table\'")}',
  'if "e2e_one_time_keys_json" in tables:',
  '    n = db.execute("DELETE FROM e2e_one_time_keys_json").rowcount',
  '    db.commit()',
  '    print(n)',
  'db.close()',
];

/**
 * Synapse's backup guide: restored one-time keys cause decryption errors, so
 * they are deleted from the restored database. A database without the table
 * (a fresh or Postgres-backed server) is left alone.
 */
export function removeOneTimeKeysCommand(dbPath: string): string[] {
  return ['python3', '-c', REMOVE_ONE_TIME_KEYS_PY.join('\n'), dbPath];
}

/** What removeKeysAndSetPhaseCommand prints before it records the phase. */
export const KEYS_DONE_MARK = 'keys-done';

/**
 * After a swap, in one round trip: removeOneTimeKeysCommand on the database $2
 * when it is a regular file (none: '' or a missing file), printing `keys=<its
 * output>`, then `keys-done` (KEYS_DONE_MARK), then journalPhaseCommand's step in
 * the data dir $1 with phase $3. A failure before the mark is python's (its
 * status), after it the journal's (non-zero without a journal).
 */
export function removeKeysAndSetPhaseCommand(
  dataDir: string,
  dbPath: string | undefined,
  phase: SwapPhase,
): string[] {
  return sh(
    [
      'if [ -n "$2" ] && [ -f "$2" ]; then',
      '  out=$(python3 - "$2" <<\'PYTHON\'',
      ...REMOVE_ONE_TIME_KEYS_PY,
      'PYTHON',
      '  ) || exit $?',
      '  echo "keys=$out"',
      'fi',
      `echo ${KEYS_DONE_MARK}`,
      'set -eu',
      'cd -- "$1"',
      ...SET_PHASE_FUNCTION,
      '[ -f "$J" ] || { echo "no swap journal in $PWD" >&2; exit 1; }',
      // $3 as $2, the phase argument of journalPhaseCommand's line.
      'shift',
      'set_phase "$2"',
    ],
    dataDir,
    dbPath ?? '',
    phase,
  );
}

/**
 * GNU tar extracting stdin into `dir`, which must exist; tar's status. Without
 * `--delay-directory-restore`: tar sets a directory's mode and mtime once it
 * has left the directory, which is right for archives in tar's own order (ours);
 * the option keeps every directory until the end and is quadratic in their
 * number (40,000 media directories here: 66 s with it, 15 s without, the same
 * modes and mtimes). An archive in another order can only fail the extraction
 * (a file under a read-only directory), before anything is swapped. Run it
 * through extractionFlushLauncher. 128 KiB records (`--blocking-factor=256`, as
 * the create's tar writes them): fewer, larger reads and writes than GNU tar's
 * 10 KiB; reading stdin, tar takes a short last record (`--read-full-records`
 * is its default there), so archives of any record size extract.
 */
export function tarExtractCommand(dir: string): string[] {
  return [
    'tar',
    '--extract',
    '--file=-',
    '--blocking-factor=256',
    '--numeric-owner',
    '--preserve-permissions',
    '-C',
    dir,
  ];
}

/**
 * The launcher (ExecOptions.launcher, before the data dir lock's own) of the
 * extraction into `dir`: starts a background loop that flushes `dir`'s
 * filesystem every FLUSH_EVERY_SECONDS (`sync -f`), then execs the command (tar:
 * the same pid). The disk writes the restored files while the engine still
 * decrypts, and the flush before the swap (syncCommand, which stays: it is what
 * makes the swap safe) only has the tail left. The loop holds none of the
 * command's streams, stops once that pid is gone, and stops for good where
 * `sync -f` fails (BusyBox built without its sync options ignores them and syncs
 * everything, which only costs time). It does not carry the lock's run marker
 * (RUN_MARKER_ENV): after a killed restore, the next run waits for tar, not for
 * the flushes.
 */
export function extractionFlushLauncher(dir: string): string[] {
  return sh(
    [
      `${RUN_MARKER_ENV}= sh -c 'while sleep ${FLUSH_EVERY_SECONDS} && kill -0 "$2" 2>/dev/null; do sync -f -- "$1" || exit 0; done' synapse-backup-flush "$1" "$$" </dev/null >/dev/null 2>&1 &`,
      'shift',
      'exec "$@"',
    ],
    dir,
  );
}

/** How often extractionFlushLauncher's loop flushes the restored files while tar writes them. */
export const FLUSH_EVERY_SECONDS = 1;
