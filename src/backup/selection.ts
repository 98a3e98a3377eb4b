/**
 * What to back up, after Synapse's backup guide: signing keys, config files,
 * the SQLite database, and local (not remote or cached) media. Paths are
 * relative to the data directory. Everything under media_store other than the
 * two local folders (remote_content, remote_thumbnails, url_cache,
 * url_cache_thumbnails) is left out: Synapse refetches or regenerates it.
 */
export const SELECTED_GLOBS = ['*.key', '*.yaml', '*.yml', '*.log.config'];
export const SELECTED_PATHS = [
  'homeserver.db',
  'media_store/local_content',
  'media_store/local_thumbnails',
];

/** Exit status the selection script uses for "nothing to back up". */
export const EMPTY_SELECTION_EXIT = 66;

/**
 * A POSIX sh script run in the workload: picks the existing selected paths and
 * execs GNU tar on them. The data dir arrives as $1, never interpolated, so
 * odd characters in it cannot change the command.
 */
export function tarCreateCommand(dataDir: string): string[] {
  const script = [
    'set -e',
    'cd -- "$1"',
    'set --',
    `for f in ${SELECTED_GLOBS.join(' ')}; do [ -f "$f" ] && set -- "$@" "$f"; done`,
    `for f in ${SELECTED_PATHS.join(' ')}; do [ -e "$f" ] && set -- "$@" "$f"; done`,
    `[ "$#" -gt 0 ] || { echo "nothing to back up in $PWD: no homeserver.yaml, signing key, homeserver.db or local media" >&2; exit ${EMPTY_SELECTION_EXIT}; }`,
    'exec tar --create --file=- --format=posix --numeric-owner -- "$@"',
  ].join('\n');
  return ['sh', '-c', script, 'synapse-backup', dataDir];
}

/** GNU tar extracting stdin into `dir`, which must exist. */
export function tarExtractCommand(dir: string): string[] {
  return [
    'tar',
    '--extract',
    '--file=-',
    '--numeric-owner',
    '--preserve-permissions',
    '--delay-directory-restore',
    '-C',
    dir,
  ];
}
