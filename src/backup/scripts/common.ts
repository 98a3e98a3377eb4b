/**
 * What the workload scripts share: the hidden names the engine creates inside
 * the data dir, the sh wrapper, and the small reads and cleanups every
 * operation uses. See index.ts for the list of scripts and their exit statuses.
 */

/** Hidden names the engine creates inside the data dir; never backed up, never swapped. */
export const STAGING_PREFIX = '.synapse-restore-';
export const PREVIOUS_PREFIX = '.pre-restore-';
export const SNAPSHOT_NAME = '.synapse-backup-snapshot.db';

/** `script`'s lines as `sh -c`, with `args` as $1, $2, ... (never spliced into the text). */
export function sh(script: string[], ...args: string[]): string[] {
  return ['sh', '-c', script.join('\n'), 'synapse-backup', ...args];
}

/** Removes leftovers of interrupted runs: snapshot files and staging dirs (never previous copies). */
export function removeLeftoversCommand(dataDir: string): string[] {
  return sh(
    [
      'cd -- "$1" || exit 0',
      `rm -f -- ${SNAPSHOT_NAME}`,
      `for d in ${STAGING_PREFIX}*; do [ -d "$d" ] && rm -rf -- "$d"; done`,
      'exit 0',
    ],
    dataDir,
  );
}

/** Prints a small file (homeserver.yaml, a signing key), at most 1 MiB. */
export function readSmallFileCommand(path: string): string[] {
  return ['head', '-c', '1048576', '--', path];
}
