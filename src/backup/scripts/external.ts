/**
 * The restore's items outside the data dir (issue #15): staged beside their
 * targets before the swap, so that the swap is a rename on their own
 * filesystem (scripts/swap.ts), and removed again when a restore stops.
 */
import { sh } from './common';

/**
 * The file in a staging dir listing its external roots (one absolute path a
 * line), written before anything is staged beside them: the leftover removal
 * (common.ts) reads it to remove those copies too. Its name is a bookkeeping
 * name, so no archive entry can be it.
 */
export const ROOTS_LIST_NAME = '.synapse-restore-roots';

/**
 * For each absolute path after $2: moves the staged copy `$2/@external<path>`
 * (in the data dir's staging dir, $1 the data dir) to `<dir>/$2-<base>` beside
 * the path, creating `<dir>` if needed (a move across filesystems copies, with
 * owners, modes and times), then flushes that filesystem. Records the paths in
 * $2/ROOTS_LIST_NAME first. Non-zero (set -e) at the first failure.
 */
export function stageExternalCommand(dataDir: string, staging: string, paths: string[]): string[] {
  return sh(
    [
      'set -eu',
      'cd -- "$1"',
      'staging=$2',
      'shift 2',
      `printf '%s\\n' "$@" > "$staging/${ROOTS_LIST_NAME}"`,
      'for p in "$@"; do',
      '  d=${p%/*} b=${p##*/}',
      '  mkdir -p -- "${d:-/}"',
      '  rm -rf -- "$d/$staging-$b"',
      '  mv -- "$staging/@external$p" "$d/$staging-$b"',
      '  sync -f -- "$d/$staging-$b" 2>/dev/null || sync',
      'done',
    ],
    dataDir,
    staging,
    ...paths,
  );
}

/** sh lines for removeLeftoversCommand: removes the external copies staging dir $d lists. */
export const REMOVE_EXTERNAL_STAGED = [
  `  if [ -f "$d/${ROOTS_LIST_NAME}" ]; then`,
  '    while IFS= read -r p; do',
  '      case $p in /*) rm -rf -- "${p%/*}/$d-${p##*/}" ;; esac',
  `    done < "$d/${ROOTS_LIST_NAME}"`,
  '  fi',
];
