/**
 * The restore's swap over the backup's ITEMS (format 2 of the swap journal):
 * only what the backup selects is replaced; everything else in the data dir
 * (homeserver.log, an operator's files, remote media caches) stays in place.
 *
 * An item is one selected root, as the archive names it:
 * - `item` / `db`: a name relative to the data dir (`homeserver.yaml`,
 *   `media_store/local_content`); live at `./NAME`, staged at `$staging/NAME`,
 *   previous at `$previous/NAME`;
 * - `root` / `rootdb`: an absolute path outside the data dir (`@external/...` in
 *   the archive); staged and previous beside it, on its filesystem, as
 *   `DIR/$staging-BASE` and `DIR/$previous-BASE~` (see externalPaths; an
 *   earlier engine's `DIR/$previous-BASE` is still found).
 * `db`/`rootdb` are SQLite databases: their `-wal`, `-shm` and `-journal`
 * siblings go with them both ways (an old WAL beside a restored database
 * corrupts it).
 *
 * The journal (journal.ts) lists the items as `KIND=NAME` lines after
 * `format=2`; the swap, its rollback and the journal's reader all walk that
 * list. A name never holds a newline (create refuses one; restore too).
 */
import { posix } from 'node:path';
import { JOURNAL_NAME, JOURNAL_TEMP_NAME, sh } from './common';
import { SET_PHASE_FUNCTION } from './journal';

/** One selected root of a backup, as the swap moves it. */
export interface SwapItem {
  kind: 'item' | 'db' | 'root' | 'rootdb';
  /** Relative to the data dir (item, db) or absolute (root, rootdb). */
  name: string;
}

/** The journal's `KIND=NAME` lines of `items`. */
export function itemLines(items: readonly SwapItem[]): string {
  return items.map((i) => `${i.kind}=${i.name}\n`).join('');
}

/**
 * The end of a kept (previous) external copy's name, so that the loaders of the
 * directory it sits in skip it: Synapse reads only `*.yaml` from a config
 * directory (a Debian `conf.d`), dot-files included; nginx and systemd only
 * `*.conf`; logrotate and sudoers skip names ending in `~` (a backup copy).
 */
export const KEPT_SUFFIX = '~';

/**
 * Where an external root's staged and previous copies are: beside it, on its
 * filesystem, so that the swap is a rename (`/mnt/media/local_content` →
 * `/mnt/media/.synapse-restore-T-local_content`, the live one to
 * `/mnt/media/.pre-restore-T-local_content~`). The same rule as ITEM_FUNCTIONS'
 * item_paths; `legacyPrevious`: the previous copy's name before KEPT_SUFFIX, which
 * an earlier engine's interrupted swap may have left.
 */
export function externalPaths(
  path: string,
  staging: string,
  previous: string,
): { staged: string; previous: string; legacyPrevious: string } {
  const dir = posix.dirname(path);
  const base = posix.basename(path);
  return {
    staged: posix.join(dir, `${staging}-${base}`),
    previous: posix.join(dir, `${previous}-${base}${KEPT_SUFFIX}`),
    legacyPrevious: posix.join(dir, `${previous}-${base}`),
  };
}

/** A SQLite database's companion files, which go where it goes. */
export const DATABASE_SIBLINGS = ['-wal', '-shm', '-journal'];

/**
 * The staged and previous copies of `items` outside the data dir, as absolute
 * paths; `companions`: where a database's -wal, -shm and -journal would be kept
 * beside its previous copy (removed with it); `legacy`: the previous copies (and
 * companions) as an engine before KEPT_SUFFIX named them (for a journal it left).
 */
export function externalCopiesOf(
  items: readonly SwapItem[],
  staging: string,
  previous: string,
): { staged: string[]; previous: string[]; companions: string[]; legacy: string[] } {
  const out = {
    staged: [] as string[],
    previous: [] as string[],
    companions: [] as string[],
    legacy: [] as string[],
  };
  for (const item of items) {
    if (item.kind !== 'root' && item.kind !== 'rootdb') continue;
    const copies = externalPaths(item.name, staging, previous);
    out.staged.push(copies.staged);
    out.previous.push(copies.previous);
    out.legacy.push(copies.legacyPrevious);
    if (item.kind === 'rootdb') {
      out.companions.push(...DATABASE_SIBLINGS.map((s) => `${copies.previous}${s}`));
      out.legacy.push(...DATABASE_SIBLINGS.map((s) => `${copies.legacyPrevious}${s}`));
    }
  }
  return out;
}

/**
 * sh functions over the items; expects the data dir as cwd and $staging,
 * $previous set. `each FN` calls `FN KIND NAME` for every item line of the
 * journal ($J), in order, stopping at the first failure.
 */
const ITEM_FUNCTIONS = [
  'there() { [ -e "$1" ] || [ -L "$1" ]; }',
  // $1 or one of a database's siblings of it is there.
  `any_there() { for s in '' ${DATABASE_SIBLINGS.join(' ')}; do there "$1$s" && return 0; done; return 1; }`,
  // Sets L (live), S (staged), V (previous) of item $2 of kind $1; kind in $kind. An
  // earlier engine's swap kept an external copy without KEPT_SUFFIX: found by that name.
  'item_paths() {',
  '  kind=$1',
  '  case $1 in',
  `    root|rootdb) d=\${2%/*}; b=\${2##*/}; L=$2; S=$d/$staging-$b; V=$d/$previous-$b'${KEPT_SUFFIX}'`,
  '      if ! any_there "$V" && any_there "$d/$previous-$b"; then V=$d/$previous-$b; fi ;;',
  '    *) L=./$2; S=$staging/$2; V=$previous/$2 ;;',
  '  esac',
  '}',
  'each() {',
  '  while IFS= read -r line; do',
  '    case $line in',
  '      item=*|db=*|root=*|rootdb=*) "$1" "${line%%=*}" "${line#*=}" </dev/null || return 1 ;;',
  '    esac',
  '  done < "$J"',
  '}',
  // A database's -wal, -shm and -journal from $1 to $2 (never over an existing file).
  'siblings() {',
  '  case $kind in db|rootdb) ;; *) return 0 ;; esac',
  `  for s in ${DATABASE_SIBLINGS.join(' ')}; do`,
  '    there "$1$s" || continue',
  '    ! there "$2$s" && mv -- "$1$s" "$2$s" || return 1',
  '  done',
  '}',
  // Live → previous (with its siblings, also when the database itself is missing).
  'move_out() {',
  '  item_paths "$1" "$2"',
  '  mkdir -p -- "${V%/*}" || return 1',
  '  if there "$L"; then mv -- "$L" "$V" || return 1; fi',
  '  siblings "$L" "$V"',
  '}',
  // Staged → live; never into or over something there (mv would nest a directory).
  'move_in() {',
  '  item_paths "$1" "$2"',
  '  there "$S" || return 0',
  '  ! there "$L" && mkdir -p -- "${L%/*}" && mv -- "$S" "$L"',
  '}',
  // Rollback: a restored item (moved in: not staged any more) back into staging, with
  // the siblings it made since (the one-time keys' removal opens the database).
  'back_in() {',
  '  item_paths "$1" "$2"',
  '  if ! there "$S" && there "$L"; then',
  '    mkdir -p -- "${S%/*}" && mv -- "$L" "$S" && siblings "$L" "$S" || return 1',
  '  fi',
  '}',
  // Rollback: the previous item (and its siblings) back in place.
  'back_out() {',
  '  item_paths "$1" "$2"',
  '  if there "$V"; then',
  '    ! there "$L" && mkdir -p -- "${L%/*}" && mv -- "$V" "$L" || return 1',
  '  fi',
  '  siblings "$V" "$L"',
  '}',
  'drop_staged() { item_paths "$1" "$2"; case $1 in root|rootdb) rm -rf -- "$S" ;; esac; }',
  // The previous copies must be gone (moved back): only empty directories are removed.
  'drop_previous() {',
  '  item_paths "$1" "$2"',
  '  case $1 in root|rootdb) ! there "$V" ;; esac',
  '}',
  'rm_empty() { [ -d "$1" ] || return 0; find "$1" -depth -type d -exec rmdir -- {} + 2>/dev/null; ! there "$1"; }',
];

/**
 * sh `rollback PHASE`: undoes a swap that reached PHASE. Unless it is
 * `moving-out`, restored items go back into staging (phase `rolling-back`,
 * then `moving-out`); then the previous items return. Then the staging copies
 * and the (now empty) previous dir go, and the journal. Non-zero at the first
 * failed step, the journal then still there, saying where it was.
 */
const ROLLBACK_FUNCTION = [
  'rollback() {',
  '  if [ "$1" != moving-out ]; then',
  '    set_phase rolling-back && each back_in && set_phase moving-out || return 1',
  '  fi',
  '  each back_out || return 1',
  '  each drop_staged && rm -rf -- "$staging" || return 1',
  '  each drop_previous && rm_empty "$previous" || return 1',
  '  sync -f -- . 2>/dev/null || sync',
  '  rm -f -- "$J" "$JT"',
  '}',
];

/**
 * sh `journal PHASE`: (re)writes the journal atomically, items included: a
 * temporary copy, flushed, renamed over it, the rename flushed.
 */
const JOURNAL_WITH_ITEMS = [
  `J=${JOURNAL_NAME}`,
  `JT=${JOURNAL_TEMP_NAME}`,
  'journal() {',
  `  printf 'staging=%s\\nprevious=%s\\nbackup=%s\\nkeep=%s\\nphase=%s\\nformat=2\\n%s' "$staging" "$previous" "$backup" "$keep" "$1" "$items" > "$JT" || return 1`,
  '  sync -- "$JT" 2>/dev/null || sync',
  '  mv -f -- "$JT" "$J" || return 1',
  '  sync -f -- . 2>/dev/null || sync',
  '}',
];

/**
 * sh `own_previous KIND NAME`: the directories the swap made in the previous dir
 * above a data-dir item (`$previous/media_store` for `media_store/local_content`)
 * take the owner and group of the live directory they stand for (else the data
 * dir's), so that Synapse's user can remove a kept previous dir; the items moved
 * into them keep their own. Run while `$previous` itself is still the engine's
 * (0700), with Synapse stopped; best effort, always 0.
 */
const OWN_PREVIOUS_FUNCTION = [
  'own_previous() {',
  '  case $1 in root|rootdb) return 0 ;; esac',
  '  p=$previous/$2',
  '  p=${p%/*}',
  '  while [ "$p" != "$previous" ]; do',
  '    r=./${p#"$previous"/}',
  '    [ -d "$r" ] || r=.',
  '    chown -h --reference="$r" -- "$p" 2>/dev/null || true',
  '    p=${p%/*}',
  '  done',
  '  return 0',
  '}',
];

/**
 * The swap: each item's live copy into the previous dir ($3) or beside it,
 * each staged copy from $2 (or beside it) into place; renames on one
 * filesystem, journaled (phases moving-out, moving-in, moved). `items` ($7:
 * itemLines) are those the archive holds. On a failure of its own it rolls
 * back what it moved and exits 1 (the journal gone; if the rollback itself
 * failed, the journal stays for the next operation). With `rootFromArchive`
 * ($4 = 1) the data dir takes the staging dir's owner, group and mode (the
 * archive's `./`); each directory of `parents` ($8, lines: the archive's
 * entries for the data-dir items' parents) takes its staged copy's. With
 * `keepPrevious` ($6 = 1) the previous dir and the directories made in it take
 * the (restored) data dir's owner and group (OWN_PREVIOUS_FUNCTION).
 */
export function itemSwapCommand(
  dataDir: string,
  staging: string,
  previous: string,
  options: {
    items: readonly SwapItem[];
    parents?: readonly string[];
    rootFromArchive?: boolean;
    backupId?: string;
    keepPrevious?: boolean;
  },
): string[] {
  return sh(
    [
      'set -u',
      'cd -- "$1" || exit 1',
      'staging=$2 previous=$3 backup=$5 keep=$6 items=$7 parents=$8',
      ...JOURNAL_WITH_ITEMS,
      ...SET_PHASE_FUNCTION.slice(2),
      ...ITEM_FUNCTIONS,
      ...ROLLBACK_FUNCTION,
      ...OWN_PREVIOUS_FUNCTION,
      'fail() { rollback "$1" || exit 1; exit 1; }',
      'journal moving-out || { rm -f -- "$J" "$JT"; exit 1; }',
      'mkdir -m 0700 -- "$previous" || { rm -f -- "$J" "$JT"; exit 1; }',
      'each move_out || fail moving-out',
      'journal moving-in || fail moving-in',
      'each move_in || fail moving-in',
      // Owner, group and mode from the archive (best effort: renames are what matter).
      'if [ "$4" = 1 ]; then',
      '  chown --reference="$staging" -- . 2>/dev/null || true',
      '  chmod --reference="$staging" -- . 2>/dev/null || true',
      'fi',
      'printf %s "$parents" | while IFS= read -r p; do',
      '  [ -d "$staging/$p" ] && [ -d "./$p" ] || continue',
      '  chown --reference="$staging/$p" -- "./$p" 2>/dev/null || true',
      '  chmod --reference="$staging/$p" -- "./$p" 2>/dev/null || true',
      'done',
      'if [ "$keep" = 1 ]; then',
      '  each own_previous',
      '  chown -h --reference=. -- "$previous" 2>/dev/null || true',
      'fi',
      // Only the items' parents are left in staging: it goes once the journal says so.
      'journal moved && rm -rf -- "$staging"',
      'exit 0',
    ],
    dataDir,
    staging,
    previous,
    options.rootFromArchive ? '1' : '0',
    options.backupId ?? '',
    options.keepPrevious ? '1' : '0',
    itemLines(options.items),
    (options.parents ?? []).map((p) => `${p}\n`).join(''),
  );
}

/**
 * Undoes a format-2 swap that reached `phase` (see ROLLBACK_FUNCTION), the
 * items read from the journal. Non-zero on the first failed step.
 */
export function itemRollbackCommand(
  dataDir: string,
  staging: string,
  previous: string,
  phase: string,
): string[] {
  return sh(
    [
      'set -u',
      'cd -- "$1" || exit 1',
      'staging=$2 previous=$3',
      ...SET_PHASE_FUNCTION,
      ...ITEM_FUNCTIONS,
      ...ROLLBACK_FUNCTION,
      '[ -f "$J" ] || { echo "no swap journal in $PWD" >&2; exit 1; }',
      'rollback "$4"',
    ],
    dataDir,
    staging,
    previous,
    phase,
  );
}

/**
 * Prints how many of a format-2 journal's items are still staged (-1 when the
 * data dir's staging dir is missing): sh lines for readJournalCommand, with
 * $J the journal and the data dir as cwd.
 */
export const COUNT_STAGED_ITEMS = [
  `staging=$(sed -n 's/^staging=//p' -- "$J") previous=$(sed -n 's/^previous=//p' -- "$J")`,
  ...ITEM_FUNCTIONS,
  'n=-1',
  'if [ -n "$staging" ] && [ -d "$staging" ]; then',
  '  n=0',
  '  count() { item_paths "$1" "$2"; if there "$S"; then n=$((n+1)); fi; }',
  '  each count',
  'fi',
  'echo "staged=$n"',
];
