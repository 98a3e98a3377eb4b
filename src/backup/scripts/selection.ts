/** The selection's probe: which selected paths exist, and where they really are. */
import { sh } from './common';

/**
 * The data-dir globs of Synapse's backup guide (signing keys, config files),
 * matched in the data dir itself as before homeserver.yaml was followed, so
 * existing layouts back up the same.
 */
export const SELECTED_GLOBS = ['*.key', '*.yaml', '*.yml', '*.log.config'];
/** The media folders selected by default (homeserver.yaml's media_store_path moves them). */
export const SELECTED_PATHS = ['media_store/local_content', 'media_store/local_thumbnails'];

/**
 * Prints NUL-terminated records of four fields, `KIND PATH TYPE REAL`:
 * - `dir . d REAL`: the data dir ($1) and its real path (`pwd -P`), first;
 * - `glob NAME f REAL`: each regular file (or link to one) in it matching SELECTED_GLOBS;
 * - for each `KIND PATH` pair of arguments after $1: TYPE `f` (a file), `d` (a
 *   directory) or `-` (missing, REAL empty), REAL its real path (readlink -f:
 *   every symlink resolved).
 * Only `nodir` when the data dir does not exist. Status 0.
 */
export function selectionProbeCommand(dataDir: string, candidates: [string, string][]): string[] {
  return sh(
    [
      `cd -- "$1" 2>/dev/null || { printf 'nodir\\0'; exit 0; }`,
      `printf 'dir\\0.\\0d\\0%s\\0' "$(pwd -P)"`,
      `for f in ${SELECTED_GLOBS.join(' ')}; do`,
      '  [ -f "$f" ] || continue',
      `  printf 'glob\\0%s\\0f\\0%s\\0' "$f" "$(readlink -f -- "$f")"`,
      'done',
      'shift',
      'while [ "$#" -ge 2 ]; do',
      '  k=$1 p=$2',
      '  shift 2',
      '  t=- r=',
      '  if [ -e "$p" ]; then t=f; [ -d "$p" ] && t=d; r=$(readlink -f -- "$p"); fi',
      `  printf '%s\\0%s\\0%s\\0%s\\0' "$k" "$p" "$t" "$r"`,
      'done',
    ],
    dataDir,
    ...candidates.flat(),
  );
}
