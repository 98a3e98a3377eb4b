/**
 * What the create script's exit status and stderr mean (scripts/create.ts):
 * success, the empty selection, the failed snapshot, tar's failure, or a live
 * server's media that changed or vanished while tar read them, which is no
 * failure (Synapse writes each media file once; a file still being written
 * belongs to an upload the earlier database snapshot does not reference).
 */
import { BackupError } from '../errors';
import { TailCollector, commandFailure } from '../workload/command';
import type { ExecProcess } from '../workload/workload';
import type { EngineContext } from './context';
import {
  EMPTY_SELECTION_EXIT,
  SELECTED_GLOBS,
  SELECTED_PATHS,
  SNAPSHOT_FAILED_EXIT,
  TAR_DIFFERS_EXIT,
  TAR_FAILED_EXIT,
} from './scripts';
import { TarComplaints } from './tar-complaints';
import { EXTERNAL_PREFIX } from './items';
import { ROOT_LINK_NAME } from './scripts/common';
import { BoundedList, type EntryWarning, type SkippedEntry } from './notes';
import type { TarScanner } from './tar';

/** The selection as an operator reads it, for the empty selection's message. */
export const SELECTION_DESCRIPTION = [
  ...SELECTED_GLOBS,
  'homeserver.db',
  ...SELECTED_PATHS.map((p) => `${p}/`),
].join(', ');

/**
 * The empty selection: `what` says what was found instead of a file, if anything;
 * `lookedAt` (Selection.lookedAt) names the paths this run selected and what was
 * at each (without it, the selection's rules). Remedy `data-dir`.
 */
export function emptySelection(
  dataDir: string,
  what = '',
  lookedAt?: readonly string[],
): BackupError {
  const looked = lookedAt
    ? `what this run selected (${lookedAt.join('; ')})`
    : `the selection (${SELECTION_DESCRIPTION})`;
  return new BackupError(
    'empty-selection',
    `nothing to back up in ${dataDir}: no regular file in ${looked}${what}`,
    { remedy: { kind: 'data-dir' } },
  );
}

/**
 * Watches the create script `proc` (its stderr from now on) and returns the check
 * of its exit: `check()` resolves when it succeeded, or when tar's only complaints
 * (status 1 or 2) were of media paths that changed or vanished: at or below one of
 * `mediaRoots`, as tar names them (relative to the data dir, where tar runs, or
 * absolute for a path tar was given absolute; default SELECTED_PATHS)
 * (`complaints.warnings` lists them); else it rejects with `empty-selection`, the
 * failed snapshot (the last lines of its stderr) or tar's own failure
 * (`workload-command`, quoting its other complaints). Sockets tar ignored are in
 * `complaints.sockets` either way.
 */
export function watchCreateScript(
  ctx: EngineContext,
  proc: ExecProcess,
  mediaRoots: readonly string[] = SELECTED_PATHS,
): { check: () => Promise<void>; complaints: TarComplaints } {
  const stderr = new TailCollector(proc.stderr);
  const complaints = new TarComplaints(proc.stderr, mediaRoots);
  const check = async (): Promise<void> => {
    const status = await proc.wait();
    const code = status.exitCode;
    if (code === EMPTY_SELECTION_EXIT) throw emptySelection(ctx.dataDir);
    if (code === SNAPSHOT_FAILED_EXIT) {
      const lines = stderr.text().split('\n').filter(Boolean).slice(-2);
      throw new BackupError('workload-command', lines.join(': ') || 'the database snapshot failed');
    }
    if (code === TAR_DIFFERS_EXIT || code === TAR_FAILED_EXIT) {
      if (complaints.onlyMediaChanged) return;
      const tarStatus = { exitCode: code === TAR_DIFFERS_EXIT ? 1 : 2 };
      throw commandFailure(
        `tar in ${ctx.workload.description}`,
        tarStatus,
        complaints.otherText() || stderr.text(),
      );
    }
    if (code !== 0) {
      throw commandFailure(`tar in ${ctx.workload.description}`, status, stderr.text());
    }
  };
  return { check, complaints };
}

/** What create left out (the scanner's FIFOs and devices, tar's sockets) and warns of. */
export interface CreateNotes {
  skipped: BoundedList<SkippedEntry>;
  warnings: BoundedList<EntryWarning>;
}

export function notesOf(scanner: TarScanner, complaints: TarComplaints): CreateNotes {
  const skipped = new BoundedList<SkippedEntry>();
  for (const item of scanner.skipped.items) skipped.add(item);
  for (const item of complaints.sockets.items) skipped.add(asArchived(item));
  skipped.count = scanner.skipped.count + complaints.sockets.count;
  const warnings = new BoundedList<EntryWarning>();
  for (const item of complaints.warnings.items) warnings.add(asArchived(item));
  warnings.count = complaints.warnings.count;
  return { skipped, warnings };
}

/**
 * tar's complaints name a path outside the data dir as it was given it
 * (`.synapse-backup-root/<path>`, scripts/common.ts); the archive, the scanner and
 * the operator know it as `@external/<path>` (selection.ts).
 */
function asArchived<T extends { path: string }>(item: T): T {
  const link = `${ROOT_LINK_NAME}/`;
  return item.path.startsWith(link)
    ? { ...item, path: `${EXTERNAL_PREFIX}/${item.path.slice(link.length)}` }
    : item;
}

/** "; only N sockets, FIFOs or device nodes, which a backup leaves out" when there were any. */
export function leftOutNote(skipped: BoundedList<SkippedEntry>): string {
  if (skipped.count === 0) return '';
  return `, only ${skipped.count} socket(s), FIFO(s) or device node(s), which a backup leaves out (${skipped.items[0].path}${skipped.count > 1 ? ', ...' : ''})`;
}
