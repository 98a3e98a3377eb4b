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
 * Takes over a stale lock: only if its holder line is still `stale` ($2) (a
 * rename, so two takers cannot both win), then takes it for `holder` ($3).
 * LOCK_HELD_EXIT when the lock changed hands meanwhile.
 */
export function takeOverLockCommand(dataDir: string, stale: string, holder: string): string[] {
  return sh(
    [
      LOCK_PATH,
      '[ "$(cat -- "$lock/holder" 2>/dev/null)" = "$2" ] || exit 75',
      'mv -- "$lock" "$lock.stale.$$" 2>/dev/null || exit 75',
      'rm -rf -- "$lock.stale.$$"',
      'mkdir -m 0700 -- "$lock" 2>/dev/null || exit 75',
      'printf "%s\\n" "$3" > "$lock/holder"',
    ],
    dataDir,
    stale,
    holder,
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
