/**
 * The data dir's lock: a directory `<data dir>/.synapse-backup.lock` made with
 * mkdir (atomic on every POSIX filesystem), holding `holder`, one line of text
 * that names who holds it. Never backed up (not selected) nor swapped (the
 * swap skips it).
 */
import { LOCK_NAME, sh } from './common';

export { LOCK_NAME };
/** takeLockCommand's and takeOverLockCommand's status when another run holds the lock. */
export const LOCK_HELD_EXIT = 75;
/**
 * takeOverLockCommand's status when a command the stale holder started in the
 * workload still runs (its pid on stdout): the holder's engine is gone, its
 * command is not.
 */
export const LOCK_RUNNING_EXIT = 76;
/** `<lock>/run.<pid>`: a command run under the lock, by its pid in the workload. */
export const RUN_FILE_PREFIX = 'run.';

const LOCK_PATH = `lock="$1/${LOCK_NAME}"`;
/** Prints `<seconds since the holder file was last touched> <holder line>`. */
const PRINT_HOLDER = [
  'now=$(date +%s)',
  'then=$(stat -c %Y -- "$lock/holder" 2>/dev/null || stat -c %Y -- "$lock" 2>/dev/null || echo "$now")',
  'printf "%s " "$((now - then))"',
  'cat -- "$lock/holder" 2>/dev/null || echo',
];

/**
 * Takes the lock for `holder` ($2): 0 when taken, and also when the data dir
 * does not exist (no run can use it: the operation fails on its own terms);
 * LOCK_HELD_EXIT, printing the age in seconds of the holder's last heartbeat
 * and its line, when held.
 */
export function takeLockCommand(dataDir: string, holder: string): string[] {
  return sh(
    [
      LOCK_PATH,
      '[ -d "$1" ] || exit 0',
      'if mkdir -m 0700 -- "$lock" 2>/dev/null; then',
      '  printf "%s\\n" "$2" > "$lock/holder" && exit 0',
      '  rm -rf -- "$lock"; exit 1',
      'fi',
      ...PRINT_HOLDER,
      `exit ${LOCK_HELD_EXIT}`,
    ],
    dataDir,
    holder,
  );
}

/**
 * The environment variable every command run under the lock carries, its
 * value the holder's token: the processes a command started (tar, dd,
 * python3) inherit it, so they are found when the command itself is gone (a
 * Pebble exec whose client dies loses its first process, not its children).
 */
export const RUN_MARKER_ENV = 'SYNAPSE_BACKUP_RUN';

/**
 * The launcher (ExecOptions.launcher) of a command run under the lock of the
 * holder whose token is `token`: records `<lock>/run.<its pid>` (two `cksum`
 * lines: of this launcher's /proc cmdline and of the command's argv, which it
 * execs in the same process, so the pid stays the same), sets RUN_MARKER_ENV to
 * `token` and execs the command; its status is the command's (127 when it is
 * not found). Nothing is recorded when the lock dir is missing. The file goes
 * with the lock (release, takeover). The pid is the workload's: its own pid
 * namespace, whatever the transport.
 */
export function recordRunLauncher(dataDir: string, token: string): string[] {
  return [
    'sh',
    '-c',
    [
      LOCK_PATH,
      `${RUN_MARKER_ENV}=$2; export ${RUN_MARKER_ENV}`,
      'shift 2',
      `if [ -d "$lock" ]; then { cksum < /proc/$$/cmdline; printf '%s\\0' "$@" | cksum; } 2>/dev/null > "$lock/${RUN_FILE_PREFIX}$$" || :; fi`,
      'exec "$@"',
    ].join('\n'),
    'synapse-backup-run',
    dataDir,
    token,
  ];
}

/**
 * sh lines: exits LOCK_RUNNING_EXIT printing `<pid> <its /proc comm>` lines
 * (ascending pids) of what the stale holder (token $4) started that still runs:
 * - a command recorded in $lock (recordRunLauncher) that is alive (kill -0, or
 *   EPERM: its /proc entry) and whose /proc cmdline's cksum is one recorded for
 *   that pid (a reused pid runs something else; a zombie's is empty); without a
 *   readable cmdline a live pid counts;
 * - any process whose environment holds RUN_MARKER_ENV=$4 (its command's
 *   children), when a command was recorded.
 * Dead ones are ignored.
 */
const REFUSE_LIVE_RUNS = [
  'live=',
  'recorded=',
  `for r in "$lock"/${RUN_FILE_PREFIX}*; do`,
  `  p=\${r##*/${RUN_FILE_PREFIX}}`,
  "  case $p in ''|*[!0-9]*) continue ;; esac",
  '  recorded=1',
  '  kill -0 "$p" 2>/dev/null || [ -d "/proc/$p" ] || continue',
  '  if [ -r "/proc/$p/cmdline" ]; then',
  '    sum=$(cksum < "/proc/$p/cmdline" 2>/dev/null) || continue',
  '    grep -qxF -- "$sum" "$r" 2>/dev/null || continue',
  '  fi',
  '  live="$live $p"',
  'done',
  'if [ -n "$recorded" ] && [ -n "$4" ]; then',
  `  for p in $(grep -lzxF -- "${RUN_MARKER_ENV}=$4" /proc/[0-9]*/environ 2>/dev/null); do`,
  '    p=${p#/proc/}; live="$live ${p%/environ}"',
  '  done',
  'fi',
  'if [ -n "$live" ]; then',
  `  for p in $(printf '%s\\n' $live | sort -un); do printf '%s %s\\n' "$p" "$(cat "/proc/$p/comm" 2>/dev/null || echo '?')"; done`,
  `  exit ${LOCK_RUNNING_EXIT}`,
  'fi',
];

/**
 * Takes over a stale lock: only if its holder line is still `stale` ($2) (a
 * rename, so two takers cannot both win), then takes it for `holder` ($3).
 * LOCK_HELD_EXIT when the lock changed hands meanwhile; LOCK_RUNNING_EXIT,
 * printing their pids, when commands the stale holder (token `staleToken`)
 * started still run (the lock is then left as it is). Dead commands' records
 * go with the old lock.
 */
export function takeOverLockCommand(
  dataDir: string,
  stale: string,
  holder: string,
  staleToken = '',
): string[] {
  return sh(
    [
      LOCK_PATH,
      `[ "$(cat -- "$lock/holder" 2>/dev/null)" = "$2" ] || exit ${LOCK_HELD_EXIT}`,
      ...REFUSE_LIVE_RUNS,
      `mv -- "$lock" "$lock.stale.$$" 2>/dev/null || exit ${LOCK_HELD_EXIT}`,
      'rm -rf -- "$lock.stale.$$"',
      `mkdir -m 0700 -- "$lock" 2>/dev/null || exit ${LOCK_HELD_EXIT}`,
      'printf "%s\\n" "$3" > "$lock/holder"',
    ],
    dataDir,
    stale,
    holder,
    staleToken,
  );
}

/** Refreshes the holder's heartbeat (the holder file's time); 1 when the lock is no longer its. */
export function touchLockCommand(dataDir: string, holder: string): string[] {
  return sh(
    [
      LOCK_PATH,
      '[ "$(cat -- "$lock/holder" 2>/dev/null)" = "$2" ] || exit 1',
      'touch -- "$lock/holder"',
    ],
    dataDir,
    holder,
  );
}

/** Releases the lock if `holder` ($2) still holds it; always 0. */
export function releaseLockCommand(dataDir: string, holder: string): string[] {
  return sh(
    [
      LOCK_PATH,
      'if [ "$(cat -- "$lock/holder" 2>/dev/null)" = "$2" ]; then rm -rf -- "$lock"; fi',
      'exit 0',
    ],
    dataDir,
    holder,
  );
}
