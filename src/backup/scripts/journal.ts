/**
 * The swap journal's scripts: writing a phase, reading the journal back, and
 * removing it. The journal, `<data dir>/.synapse-swap.journal`, is a few
 * `key=value` lines (staging, previous, backup, keep, phase) that the swap
 * writes and fsyncs before its first rename; see src/backup/swap-journal.ts.
 */
import { JOURNAL_NAME, JOURNAL_TEMP_NAME, sh } from './common';
import { COUNT_STAGED_ITEMS } from './swap';

/**
 * The phases of a swap, in order: `moving-out` (live files going into the
 * previous dir), `moving-in` (staged files coming into the data dir), `moved`
 * (all staged files are in), `keys-removed` (the one-time keys are gone).
 * A rollback goes through `rolling-back` (restored files going back into the
 * staging dir) and then `moving-out` again (the previous files returning).
 */
export type SwapPhase = 'moving-out' | 'moving-in' | 'moved' | 'keys-removed' | 'rolling-back';

/** Flushes $J (the file) and the data dir's entries (`sync FILE` needs coreutils 8.24; else all). */
const FLUSH = `sync -- "$J" 2>/dev/null || sync`;

/**
 * sh lines defining `journal PHASE`, which (re)writes the journal atomically:
 * a temporary copy, flushed, renamed over it, the rename flushed. Expects
 * the cwd to be the data dir and $staging, $previous, $backup, $keep set.
 */
export const JOURNAL_FUNCTION = [
  `J=${JOURNAL_NAME}`,
  `JT=${JOURNAL_TEMP_NAME}`,
  'journal() {',
  `  printf 'staging=%s\\nprevious=%s\\nbackup=%s\\nkeep=%s\\nphase=%s\\n' "$staging" "$previous" "$backup" "$keep" "$1" > "$JT" || return 1`,
  `  J="$JT"; ${FLUSH}; J=${JOURNAL_NAME}`,
  '  mv -f -- "$JT" "$J" || return 1',
  `  sync -f -- . 2>/dev/null || sync`,
  '}',
];

/**
 * sh lines defining `set_phase PHASE`: rewrites the journal's phase line
 * atomically (flushed); nothing without a journal. Expects the data dir as cwd.
 */
export const SET_PHASE_FUNCTION = [
  `J=${JOURNAL_NAME}`,
  `JT=${JOURNAL_TEMP_NAME}`,
  'set_phase() {',
  '  [ -f "$J" ] || return 0',
  `  sed 's/^phase=.*/phase='"$1"'/' -- "$J" > "$JT" || return 1`,
  `  J="$JT"; ${FLUSH}; J=${JOURNAL_NAME}`,
  '  mv -f -- "$JT" "$J" || return 1',
  '  sync -f -- . 2>/dev/null || sync',
  '}',
];

/** Sets the journal's phase to `phase` (atomically, flushed). Fails when there is no journal. */
export function journalPhaseCommand(dataDir: string, phase: SwapPhase): string[] {
  return sh(
    [
      'set -eu',
      'cd -- "$1"',
      ...SET_PHASE_FUNCTION,
      '[ -f "$J" ] || { echo "no swap journal in $PWD" >&2; exit 1; }',
      'set_phase "$2"',
    ],
    dataDir,
    phase,
  );
}

/**
 * Prints the journal (its first 64 KiB) and a last line `staged=N`: how many
 * of its items are still staged (format 2, swap.ts; a format-1 journal: how
 * many entries its staging dir still holds), -1 when the staging dir is
 * missing. Prints nothing without a journal.
 */
export function readJournalCommand(dataDir: string): string[] {
  return sh(
    [
      'cd -- "$1" 2>/dev/null || exit 0',
      `J=${JOURNAL_NAME}`,
      '[ -f "$J" ] || exit 0',
      'head -c 65536 -- "$J"',
      // Format 2 (swap.ts) lists its items: those still staged.
      'if grep -qx \'format=2\' -- "$J"; then',
      ...COUNT_STAGED_ITEMS.map((line) => `  ${line}`),
      '  exit 0',
      'fi',
      `s=$(sed -n 's/^staging=//p' -- "$J")`,
      'n=-1',
      'if [ -n "$s" ] && [ -d "$s" ]; then',
      '  n=0',
      '  for f in "$s"/* "$s"/.[!.]* "$s"/..?*; do { [ -e "$f" ] || [ -L "$f" ]; } && n=$((n+1)); done',
      'fi',
      'echo "staged=$n"',
    ],
    dataDir,
  );
}

/** Removes the journal (and its temporary copy), the removal flushed. */
export function removeJournalCommand(dataDir: string): string[] {
  return sh(
    [
      'cd -- "$1" || exit 1',
      `rm -f -- ${JOURNAL_NAME} ${JOURNAL_TEMP_NAME} || exit 1`,
      'sync -f -- . 2>/dev/null || sync',
    ],
    dataDir,
  );
}
