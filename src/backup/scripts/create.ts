/** The create script: the selection, the SQLite snapshot and the tar that streams them. */
import { ROOT_LINK_NAME, SNAPSHOT_NAME, sh } from './common';

/**
 * What the create script archives (src/backup/selection.ts builds it from
 * homeserver.yaml): names relative to the data dir (those outside it under
 * ROOT_LINK_NAME), the directories above them (stored without their
 * contents), and the SQLite database to snapshot with its name in the archive.
 * No name holds a newline.
 */
export interface TarSelection {
  tarNames: readonly string[];
  parents: readonly string[];
  database?: { path: string; archiveName: string };
}

/** Exit statuses the create script uses for its own failures. */
export const EMPTY_SELECTION_EXIT = 66;
export const SNAPSHOT_FAILED_EXIT = 67;
/**
 * tar's own "some files differ" (its status 1: a file changed or vanished while
 * read) and "failure" (2: also a named file that vanished, "Cannot stat"), with
 * dd and the snapshot fine: the engine reads tar's complaints to tell a live
 * server's media from a real failure (src/backup/tar-complaints.ts).
 */
export const TAR_DIFFERS_EXIT = 68;
export const TAR_FAILED_EXIT = 69;
/** The snapshot's python3 said why it failed (its last stderr line); the script adds nothing. */
const SNAPSHOT_EXPLAINED_EXIT = 3;

/**
 * A POSIX sh script run in the workload: snapshots the SQLite database with
 * SQLite's online backup API (never a raw copy of a file Synapse is writing)
 * and runs GNU tar over `selection`, storing the snapshot under the database's
 * archive name and paths under ROOT_LINK_NAME (a symlink to `/` made for the
 * run) as `@external/<path>`. tar reads the names it archives as they come
 * (`--files-from` a pipe): the selected paths once the snapshot's read of the
 * database has begun (so no media file is newer than the database's view), the
 * snapshot's once it is made: the copy is made while tar streams the media
 * instead of before (0.6 s of a 1 GiB backup here, 2 s of a 4 GiB one). A
 * failed snapshot fails the script with its own status after tar. The snapshot
 * file and the link are removed whether tar succeeds or not; if the script
 * itself is killed, the engine removes them afterwards. Every path arrives as
 * an argument, never interpolated, so odd characters cannot change the script;
 * `keepFreeBytes` ($1) is what the snapshot leaves free on the data dir's
 * filesystem for Synapse: it stops, failing the script, when the free space
 * falls below it (0: no watch; see src/backup/space.ts). tar writes 128 KiB
 * records (`--blocking-factor=256`; GNU tar's default is 10 KiB): fewer, larger
 * reads and writes, about 1 CPU s less of tar per 4 GiB here (README, tar's
 * record size).
 */
export function tarCreateCommand(
  dataDir: string,
  keepFreeBytes: number,
  selection: TarSelection,
): string[] {
  const snapshotPattern = SNAPSHOT_NAME.replace(/\./g, '\\.');
  const rootPattern = ROOT_LINK_NAME.replace(/\./g, '\\.');
  const script = [
    'set -e',
    'keep=$1',
    'cd -- "$2"',
    `snap=${SNAPSHOT_NAME} root=${ROOT_LINK_NAME}`,
    'db=$3 dbname=$4 names=$5',
    'shift 5',
    `[ -n "$names" ] || [ -n "$db" ] || { echo "nothing to back up in $PWD: no homeserver.yaml, signing key, homeserver.db or local media" >&2; exit ${EMPTY_SELECTION_EXIT}; }`,
    'rm -f -- "$snap" "$root"',
    `if printf '%s' "$names" | grep -q '^${rootPattern}/'; then ln -s / "$root"; fi`,
    ...namesAsTheyCome(),
    `archive() { names | tar --create --file=- --blocking-factor=256 --format=posix --numeric-owner "--transform=s|^${snapshotPattern}$|$dbname|S" '--transform=s|^${rootPattern}/|@external/|S' --no-recursion . "$@" --recursion --null --verbatim-files-from --files-from=- 3>&-; }`,
    ...REBLOCKED_ARCHIVE,
    'rm -f -- "$snap" "$root"',
    // 141: the snapshot's script met a broken pipe because tar had failed: tar's status says why.
    'if [ "$snap_status" != 0 ] && { [ "$snap_status" != 141 ] || [ "$status" = 0 ]; }; then',
    '  case "$snap_status" in',
    `    ${SNAPSHOT_EXPLAINED_EXIT}) ;;`,
    `    127) echo "cannot snapshot $db: the workload has no python3 (SQLite's online backup API needs python3 with sqlite3)" >&2 ;;`,
    `    *) echo "cannot snapshot $db with SQLite's online backup API (python3 exited with status $snap_status)" >&2 ;;`,
    '  esac',
    `  exit ${SNAPSHOT_FAILED_EXIT}`,
    'fi',
    // Only with dd and the snapshot fine (141 above: tar may have stopped before naming the copy).
    `if [ "$dd_status" = 0 ] && [ "$snap_status" = 0 ]; then case "$tar_status" in 1) exit ${TAR_DIFFERS_EXIT} ;; 2) exit ${TAR_FAILED_EXIT} ;; esac; fi`,
    'exit "$status"',
  ].join('\n');
  return [
    'sh',
    '-c',
    script,
    'synapse-backup',
    String(keepFreeBytes),
    dataDir,
    databaseArgument(selection),
    transformReplacement(selection.database?.archiveName ?? 'homeserver.db'),
    selection.tarNames.map((n) => `${n}\n`).join(''),
    ...selection.parents,
  ];
}

/**
 * The database as the script names it (its messages too): relative to the data dir
 * (the script's cwd) when it is in it, else its absolute path; '' without one.
 */
function databaseArgument(selection: TarSelection): string {
  const db = selection.database;
  if (!db) return '';
  return db.archiveName.startsWith('@external/') ? db.path : db.archiveName;
}

/** `name` as the replacement of a tar --transform s-expression delimited by `|`. */
function transformReplacement(name: string): string {
  return name.replace(/[\\&|]/g, (c) => `\\${c}`);
}

/**
 * Prints `<database bytes> <free bytes> <filesystem bytes>` for the data dir ($1):
 * the database ($2, '' for none) and its -wal (0 without a database), and df's
 * space available to unprivileged writers and total size of the data dir's
 * filesystem, where the snapshot is written; nothing when the data dir does not
 * exist (the create script then fails with its own message). df's status.
 */
export function snapshotSpaceCommand(dataDir: string, database = ''): string[] {
  return sh(
    [
      'set -e',
      // No data dir: nothing to snapshot here; the create script itself says what is wrong.
      '[ -d "$1" ] || exit 0',
      'cd -- "$1"',
      'db=0',
      'if [ -n "$2" ]; then',
      '  for f in "$2" "$2-wal"; do [ -f "$f" ] && db=$((db + $(wc -c < "$f"))); done',
      'fi',
      `df -Pk -- . | awk -v db="$db" 'NR==2 { print db, $4 * 1024, $2 * 1024 }'`,
    ],
    dataDir,
    database,
  );
}

/**
 * `names` writes the selected names ($names, one a line) for tar, NUL-terminated.
 * With a database ($db), the snapshot's script writes them: it begins a read of the
 * database first (the copy is of that moment), then names the selected paths, so tar
 * streams the media while the copy is made and finds no file newer than the
 * database's view of it; then it names the copy. Its status goes out as
 * `snap=<status>` on fd 3.
 */
function namesAsTheyCome(): string[] {
  return [
    'names() {',
    `  [ -n "$db" ] || { printf '%s' "$names" | tr '\\n' '\\0'; return; }`,
    `  st=0; python3 -c "${SNAPSHOT_AND_NAMES}" "$db" "$snap" "$keep" "$names" 3>&- || st=$?`,
    '  echo "snap=$st" >&3',
    '}',
  ];
}

/**
 * Runs `archive "$@"` and sets `status` (and `snap_status`, from `names`). Its output
 * goes out in 1 MiB blocks (dd with iflag=fullblock) through a 1 MiB pipe (F_SETPIPE_SZ
 * is 1031): Pebble's exec relay sends one websocket message per read of its stdout
 * pipe, up to 128 KiB, and tar writes 10 KiB records, so without this a GiB crosses in
 * 20-25 thousand messages, with it in about 8 thousand, which halves Pebble's CPU and
 * the engine's per-message work. The bytes are the same. POSIX sh has no pipefail:
 * tar's and dd's exit statuses come back on fd 3, tagged, and either failing fails the
 * backup. Without a dd that knows iflag=fullblock, tar writes straight to stdout, and
 * so it does when stdout is a socket (the direct path, src/workload/pebble/direct-stream.ts):
 * no relay counts messages there, and dd would only add a copy (0.5 CPU s per GiB).
 */
const REBLOCKED_ARCHIVE = [
  'exec 4>&1',
  'if [ ! -S /dev/stdout ] && dd bs=1M iflag=fullblock status=none </dev/null >/dev/null 2>&1; then',
  `  python3 -c 'import fcntl; fcntl.fcntl(1, 1031, 1 << 20)' 2>/dev/null || true`,
  '  statuses=$( { { st=0; archive "$@" 4>&- || st=$?; echo "tar=$st" >&3; } | { st=0; dd bs=1M iflag=fullblock status=none >&4 3>&- 4>&- || st=$?; echo "dd=$st" >&3; }; } 3>&1 )',
  'else',
  '  statuses=$( { st=0; archive "$@" >&4 4>&- || st=$?; echo "tar=$st dd=0" >&3; } 3>&1 )',
  'fi',
  'exec 4>&-',
  // A status that never came is a failure (snap: only when there is a database).
  'tar_status=1 dd_status=1 snap_status=0',
  '[ -z "$db" ] || snap_status=1',
  'for s in $statuses; do case "$s" in tar=*) tar_status=${s#tar=} ;; dd=*) dd_status=${s#dd=} ;; snap=*) snap_status=${s#snap=} ;; esac; done',
  'status=$tar_status',
  '[ "$status" != 0 ] || status=$dd_status',
];

const BACKUP_CALL = 'src.backup(dst)';

/**
 * One consistent copy in a single backup step, waiting up to 60 s for a writer's lock. The
 * copy is written without a journal or fsync: it is a scratch file that tar reads at once and
 * that is removed whatever happens, and syncing it cost 1.4 s of a 4 GiB backup. The
 * copy is made private (umask 077) and then given the database's mode and, when root, its
 * owner: tar stores the snapshot's, and a restored database owned by root, or readable by
 * all, would break Synapse or leak it. `src` is open on the database (argv[1]); the copy
 * goes to argv[2]. (Spliced into sh in double quotes: no " $ ` \.)
 */
const SNAPSHOT_COPY = [
  'dst = sqlite3.connect(sys.argv[2])',
  "dst.execute('PRAGMA journal_mode=OFF')",
  "dst.execute('PRAGMA synchronous=OFF')",
  BACKUP_CALL,
  'dst.close()',
  'src.close()',
  'st = os.stat(sys.argv[1])',
  'os.chmod(sys.argv[2], st.st_mode & 0o7777)',
  'os.geteuid() == 0 and os.chown(sys.argv[2], st.st_uid, st.st_gid)',
];

/** The copy alone, as one line (the bench times it). */
export const SQLITE_SNAPSHOT = [
  'import os, sqlite3, sys',
  'os.umask(0o077)',
  'src = sqlite3.connect(sys.argv[1], timeout=60)',
  ...SNAPSHOT_COPY,
].join('; ');

/**
 * The create script's copy: in steps of 4096 pages (16 MiB at SQLite's default
 * page size), checking between them that the data dir's filesystem keeps argv[3]
 * bytes free; below that it stops (other writers filled the volume meanwhile).
 */
const WATCHED_COPY = [
  'keep = int(sys.argv[3])',
  'def room(status, remaining, total):',
  "    st = os.statvfs('.')",
  '    if keep and st.f_bavail * st.f_frsize < keep:',
  "        raise OSError('the free space in the data volume fell below ' + str(keep >> 20) + ' MiB: stopped to leave it to Synapse')",
  'try:',
  ...SNAPSHOT_COPY.map((line) =>
    line === BACKUP_CALL ? '    src.backup(dst, pages=4096, progress=room)' : `    ${line}`,
  ),
  'except Exception as e:',
  "    sys.stderr.write('cannot snapshot ' + sys.argv[1] + ' with SQLite' + chr(39) + 's online backup API: ' + str(e) + chr(10))",
  `    sys.exit(${SNAPSHOT_EXPLAINED_EXIT})`,
];

/**
 * The create script's: begins a read (the copy is of this moment), writes the names in
 * argv[4] (one a line) for tar, NUL-terminated (also when the database cannot be read: the script then
 * fails with the snapshot's status, and tar ends normally), makes the copy and names it.
 * A broken pipe (tar gone) ends it quietly, with status 141.
 */
const SNAPSHOT_AND_NAMES = [
  'import os, signal, sqlite3, sys',
  'signal.signal(signal.SIGPIPE, signal.SIG_DFL)',
  'os.umask(0o077)',
  'out = sys.stdout.buffer',
  'try:',
  '    src = sqlite3.connect(sys.argv[1], timeout=60)',
  "    src.execute('BEGIN')",
  "    src.execute('SELECT count(*) FROM sqlite_master').fetchall()",
  'finally:',
  '    out.write(bytes().join(os.fsencode(n) + bytes(1) for n in sys.argv[4].split(chr(10)) if n))',
  '    out.flush()',
  ...WATCHED_COPY,
  'out.write(os.fsencode(sys.argv[2]) + bytes(1))',
  'out.flush()',
].join('\n');
