/** The data dir a restore on this host makes when it is missing. */
import { chmodSync, mkdirSync, rmdirSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { ConfigError, errorMessage } from '../errors';

/** The mode of a data dir the restore makes, whatever the umask: the restore then fills it. */
export const NEW_DATA_DIR_MODE = 0o700;
/**
 * The mode of missing parents, whatever the umask: Synapse's user (991 in the
 * official image) must be able to pass through them to the data dir, which a
 * `umask 077` shell's `mkdir -p` (0700, root's) would not let it.
 */
const PARENT_MODE = 0o755;

/**
 * Makes a missing restore directory `dir` (absolute) on this host, mode
 * {@link NEW_DATA_DIR_MODE} (tar needs it to exist), and its missing parents, mode
 * {@link PARENT_MODE}, both whatever the umask. The swap then gives the data dir the owner,
 * group and mode of the archive's `./` (the backed-up data dir's), as it does an
 * existing one; a backup without `./` (the original Python charm's) leaves it 0700.
 * Returns an undo that removes what it made if it is still empty, for a restore that
 * fails before writing. Throws ConfigError when it cannot be made (a file in its place,
 * no permission).
 */
export function makeRestoreDir(dir: string): () => void {
  let first: string | undefined;
  try {
    const firstParent = mkdirSync(path.dirname(dir), { recursive: true, mode: PARENT_MODE });
    if (firstParent) {
      // mkdir took the umask off: each parent it made gets PARENT_MODE itself.
      for (let d = path.dirname(dir); d.length >= firstParent.length; d = path.dirname(d)) {
        chmodSync(d, PARENT_MODE);
      }
    }
    first = made(dir) ? (firstParent ?? dir) : firstParent;
  } catch (err) {
    throw new ConfigError(
      `cannot create the data directory ${dir}: ${errorMessage(err)}; create it first (\`install -d -o 991 -g 991 ${dir}\` for the official image's user), or pass another --data-dir`,
    );
  }
  return () => {
    if (!first) return;
    for (let d = dir; d.length >= first.length; d = path.dirname(d)) {
      try {
        rmdirSync(d);
      } catch {
        return;
      }
    }
  };
}

/** Makes `dir`, mode 0700 whatever the umask; false when a directory is there already. */
function made(dir: string): boolean {
  try {
    mkdirSync(dir, { mode: NEW_DATA_DIR_MODE });
  } catch (err) {
    const exists = (err as NodeJS.ErrnoException).code === 'EEXIST';
    if (exists && statIsDir(dir)) return false;
    throw err;
  }
  chmodSync(dir, NEW_DATA_DIR_MODE);
  return true;
}

function statIsDir(dir: string): boolean {
  try {
    return statSync(dir).isDirectory();
  } catch {
    return false;
  }
}
