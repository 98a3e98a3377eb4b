import { SNAPSHOT_NAME } from './workload-scripts';

/**
 * What to back up, after Synapse's backup guide: signing keys, config files,
 * the SQLite database, and local (not remote or cached) media. Paths are
 * relative to the data directory. Everything under media_store other than the
 * two local folders (remote_content, remote_thumbnails, url_cache,
 * url_cache_thumbnails) is left out: Synapse refetches or regenerates it.
 */
export const SELECTED_GLOBS = ['*.key', '*.yaml', '*.yml', '*.log.config'];
/** homeserver.db is added as a snapshot, not by name. */
export const SELECTED_PATHS = ['media_store/local_content', 'media_store/local_thumbnails'];

/** Exit statuses the create script uses for its own failures. */
export const EMPTY_SELECTION_EXIT = 66;
export const SNAPSHOT_FAILED_EXIT = 67;

/**
 * A POSIX sh script run in the workload: picks the existing selected paths,
 * snapshots homeserver.db with SQLite's online backup API (never a raw copy of
 * a file Synapse is writing), and runs GNU tar, storing the snapshot as
 * homeserver.db. The snapshot file is removed whether tar succeeds or not; if
 * the script itself is killed, the engine removes it afterwards. The data dir
 * arrives as $1, never interpolated, so odd characters cannot change the script.
 */
export function tarCreateCommand(dataDir: string): string[] {
  const snapshotPattern = SNAPSHOT_NAME.replace(/\./g, '\\.');
  const script = [
    'set -e',
    'cd -- "$1"',
    `snap=${SNAPSHOT_NAME}`,
    'set --',
    `for f in ${SELECTED_GLOBS.join(' ')}; do [ -f "$f" ] && set -- "$@" "$f"; done`,
    `for f in ${SELECTED_PATHS.join(' ')}; do [ -e "$f" ] && set -- "$@" "$f"; done`,
    'if [ -f homeserver.db ]; then',
    '  rm -f -- "$snap"',
    `  if ! python3 -c "${SQLITE_SNAPSHOT}" homeserver.db "$snap"; then`,
    '    rm -f -- "$snap"',
    `    echo "cannot snapshot homeserver.db with SQLite's online backup API (the workload needs python3 with sqlite3)" >&2`,
    `    exit ${SNAPSHOT_FAILED_EXIT}`,
    '  fi',
    '  set -- "$@" "$snap"',
    'fi',
    `[ "$#" -gt 0 ] || { echo "nothing to back up in $PWD: no homeserver.yaml, signing key, homeserver.db or local media" >&2; exit ${EMPTY_SELECTION_EXIT}; }`,
    'status=0',
    `tar --create --file=- --format=posix --numeric-owner --transform='s|^${snapshotPattern}$|homeserver.db|' -- "$@" || status=$?`,
    'rm -f -- "$snap"',
    'exit "$status"',
  ].join('\n');
  return ['sh', '-c', script, 'synapse-backup', dataDir];
}

/**
 * One consistent copy in a single backup step, waiting up to 60 s for a writer's lock. The
 * copy is made private (umask 077) and then given the database's mode and, when root, its
 * owner: tar stores the snapshot's, and a restored database owned by root, or readable by
 * all, would break Synapse or leak it. (Spliced into sh in double quotes: no " $ ` \.)
 */
const SQLITE_SNAPSHOT = [
  'import os, sqlite3, sys',
  'os.umask(0o077)',
  'src = sqlite3.connect(sys.argv[1], timeout=60)',
  'dst = sqlite3.connect(sys.argv[2])',
  'src.backup(dst)',
  'dst.close()',
  'src.close()',
  'st = os.stat(sys.argv[1])',
  'os.chmod(sys.argv[2], st.st_mode & 0o7777)',
  'os.geteuid() == 0 and os.chown(sys.argv[2], st.st_uid, st.st_gid)',
].join('; ');

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
