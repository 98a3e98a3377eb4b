/** The restore's scripts: free space, staging, extraction, the swap and its rollback, one-time keys. */
import { PREVIOUS_PREFIX, STAGING_PREFIX, sh } from './common';
import { LOCK_NAME } from './lock';

/** Prints the bytes available to unprivileged writers on the data dir's filesystem. */
export function freeSpaceCommand(dataDir: string): string[] {
  return sh(['set -e', `df -Pk -- "$1" | awk 'NR==2 { print $4 * 1024 }'`], dataDir);
}

/** Creates an empty directory; fails if it exists. */
export function makeDirCommand(path: string): string[] {
  return ['mkdir', '-m', '0700', '--', path];
}

/** Removes a tree the engine created (staging, a previous copy). */
export function removeTreeCommand(path: string): string[] {
  return ['rm', '-rf', '--', path];
}

/**
 * Flushes the filesystem that holds `path` to disk (syncfs; all filesystems where
 * `sync -f` is missing). Renames and deletions reach the disk in the journal's
 * order, but the data of newly written files may not: without this, a crash soon
 * after a restore could leave restored files empty with the previous ones deleted.
 */
export function syncCommand(path: string): string[] {
  return sh(['sync -f -- "$1" 2>/dev/null || sync'], path);
}

const MOVE_TOP_LEVEL = [
  // move_all FROM TO: moves every entry of FROM (dotfiles too) into TO, skipping the engine's own dirs.
  'move_all() {',
  '  for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do',
  '    [ -e "$f" ] || [ -L "$f" ] || continue',
  '    case "${f##*/}" in',
  `      ${STAGING_PREFIX}*|${PREVIOUS_PREFIX}*|${LOCK_NAME}) continue ;;`,
  '    esac',
  '    mv -- "$f" "$2"/',
  '  done',
  '}',
];

/**
 * The swap: current files into $3 (previous), staged files from $2 into the
 * data dir ($1). Renames on one filesystem. On any failure it moves back what
 * it moved and exits non-zero. With `rootFromArchive` ($4 = 1) the data dir then
 * takes the staging dir's owner, group and mode, which the archive's `./` entry set.
 */
export function swapCommand(
  dataDir: string,
  staging: string,
  previous: string,
  options: { rootFromArchive?: boolean } = {},
): string[] {
  return sh(
    [
      'set -u',
      ...MOVE_TOP_LEVEL,
      'cd -- "$1" || exit 1',
      'mkdir -m 0700 -- "$3" || exit 1',
      'if ! move_all . "$3"; then move_all "$3" .; rmdir -- "$3"; exit 1; fi',
      'if ! move_all "$2" .; then',
      '  move_all . "$2"; move_all "$3" .; rmdir -- "$3"; exit 1',
      'fi',
      // The archive's `./` entry gave the staging dir the data dir's owner, group and mode
      // at backup time: the data dir takes them (best effort: renames are what matter).
      'if [ "$4" = 1 ]; then',
      '  chown --reference="$2" -- . 2>/dev/null || true',
      '  chmod --reference="$2" -- . 2>/dev/null || true',
      'fi',
      'rmdir -- "$2"',
    ],
    dataDir,
    staging,
    previous,
    options.rootFromArchive ? '1' : '0',
  );
}

/** Undoes a completed swap: restored files go back into $2 (to be removed), previous ones return. */
export function rollbackCommand(dataDir: string, staging: string, previous: string): string[] {
  return sh(
    [
      'set -eu',
      ...MOVE_TOP_LEVEL,
      'cd -- "$1"',
      'mkdir -p -m 0700 -- "$2"',
      'move_all . "$2"',
      'move_all "$3" .',
      'rmdir -- "$3"',
      'rm -rf -- "$2"',
    ],
    dataDir,
    staging,
    previous,
  );
}

/**
 * Synapse's backup guide: restored one-time keys cause decryption errors, so
 * they are deleted from the restored database. A database without the table
 * (a fresh or Postgres-backed server) is left alone.
 */
export function removeOneTimeKeysCommand(dbPath: string): string[] {
  return [
    'python3',
    '-c',
    [
      'import sqlite3, sys',
      'db = sqlite3.connect(sys.argv[1])',
      'tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type=\'table\'")}',
      'if "e2e_one_time_keys_json" in tables:',
      '    n = db.execute("DELETE FROM e2e_one_time_keys_json").rowcount',
      '    db.commit()',
      '    print(n)',
      'db.close()',
    ].join('\n'),
    dbPath,
  ];
}

/**
 * GNU tar extracting stdin into `dir`, which must exist. Without
 * `--delay-directory-restore`: tar sets a directory's mode and mtime once it
 * has left the directory, which is right for archives in tar's own order (ours);
 * the option keeps every directory until the end and is quadratic in their
 * number (40,000 media directories here: 66 s with it, 15 s without, the same
 * modes and mtimes). An archive in another order can only fail the extraction
 * (a file under a read-only directory), before anything is swapped.
 */
export function tarExtractCommand(dir: string): string[] {
  return ['tar', '--extract', '--file=-', '--numeric-owner', '--preserve-permissions', '-C', dir];
}
