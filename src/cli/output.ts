/** The CLI's output: one line or JSON object on stdout, a progress line on stderr. */
import { type SwapRecovery, describeSwapRecovery } from '../backup/swap-journal';
import { summarizeNotes } from '../backup/notes';
import { describeStaleConfigPaths, staleKeysOf } from '../backup/stale-paths';
import type { CreateResult, Progress, PruneResult, RestoreResult } from '../backup/types';
import { counted, formatBytes, formatFirst } from '../format';

/** Set once a progress line has been drawn on stderr (which then needs a newline). */
let progressShown = false;

export function endProgressLine(): void {
  if (progressShown) process.stderr.write('\n');
  progressShown = false;
}

export function showProgress(p: Progress): void {
  progressShown = true;
  process.stderr.write(
    `\r${p.phase}: ${formatBytes(p.bytes)} in ${p.elapsedSeconds.toFixed(0)} s (${formatBytes(p.bytesPerSecond)}/s)   `,
  );
}

/** Writes a result: `human` as text, or `data` as JSON with kebab-case keys when `json`. */
export function printer(json: boolean): (human: string, data: unknown) => void {
  return (human, data) => {
    endProgressLine();
    process.stdout.write(json ? `${JSON.stringify(kebabKeys(data))}\n` : `${human}\n`);
  };
}

/**
 * Warns on stderr (`synapse-backup: warning: ...`) when the operation first
 * completed or rolled back a restore's interrupted swap (swap-journal.ts).
 */
export function warnSwapRecovery(r: { swapRecovery?: SwapRecovery }): void {
  if (!r.swapRecovery) return;
  endProgressLine();
  process.stderr.write(`synapse-backup: warning: ${describeSwapRecovery(r.swapRecovery)}\n`);
}

/** create's lines after its summary: what it left out, and media that changed while read. */
export function createNoteLines(r: CreateResult): string[] {
  const lines: string[] = [];
  if (r.skippedCount > 0) {
    lines.push(
      `left out ${r.skippedCount === 1 ? '1 entry a restore refuses (it holds' : `${r.skippedCount} entries a restore refuses (they hold`} no data): ${summarizeNotes(r.skipped, r.skippedCount)}`,
    );
  }
  if (r.archivedOutside) {
    lines.push(
      `also archived, outside the data dir (homeserver.yaml names them; a restore replaces them there): ${formatFirst(r.archivedOutside)}`,
    );
  }
  if (r.warningsCount > 0) {
    lines.push(
      `warning: ${counted(r.warningsCount, 'media file')} changed or vanished while being read (a live server): ${summarizeNotes(r.warnings, r.warningsCount)}`,
    );
  }
  return lines;
}

/**
 * Warns on stderr, one line each, about what homeserver.yaml names that a backup
 * does not hold: missing paths, a PostgreSQL database (pg_dump).
 */
export function warnSelection(r: {
  missing?: string[];
  notIncluded?: string[];
  noHomeserverYaml?: string;
}): void {
  const noConfig = noHomeserverYamlWarning(r);
  const lines = [...(r.notIncluded ?? []), ...(r.missing ?? []), ...(noConfig ? [noConfig] : [])];
  if (lines.length === 0) return;
  endProgressLine();
  for (const line of lines) process.stderr.write(`synapse-backup: warning: ${line}\n`);
}

/**
 * create's warning when the data dir had no homeserver.yaml, with the CLI's fix:
 * `no homeserver.yaml in /d: backed up media_store alone, ...; if Synapse's config
 * lives elsewhere, pass --data-dir the directory that holds its homeserver.yaml`.
 */
export function noHomeserverYamlWarning(r: { noHomeserverYaml?: string }): string | undefined {
  if (!r.noHomeserverYaml) return undefined;
  return `${r.noHomeserverYaml}; if Synapse's config lives elsewhere, pass --data-dir the directory that holds its homeserver.yaml`;
}

/**
 * restore's warning when homeserver.yaml still names the backup's other data dir
 * (stale-paths.ts), with the CLI's fixes: edit those keys, or restore into the old
 * dir; or, when a container mounts the new dir as the old one, --config-root.
 */
export function staleConfigWarning(r: RestoreResult): string | undefined {
  const s = r.staleConfigPaths;
  if (!s) return undefined;
  const [old, dir] = [s.oldDataDir, s.dataDir];
  return `${describeStaleConfigPaths(s, r.backupId)}: edit ${staleKeysOf(s)} in ${dir}/homeserver.yaml to name ${dir} instead of ${old}, or restore into ${old} (--data-dir ${old}); if Synapse runs in a container that mounts ${dir} as ${old}, nothing is wrong (--config-root ${old} says so)`;
}

/** What prune removed in the workload, for the human output (none in a dry run). */
export function workloadCleanupLines(r: PruneResult, dataDir: string | undefined): string[] {
  if (r.dryRun) return [];
  const lines: string[] = [];
  if (r.leftoversRemoved)
    lines.push(`removed what interrupted runs left in ${dataDir}, if anything`);
  if (r.leftoversError) {
    lines.push(`could not remove what interrupted runs left in ${dataDir}: ${r.leftoversError}`);
  }
  if (r.staleRemoved.length > 0) lines.push(`removed stale files: ${r.staleRemoved.join(', ')}`);
  if (r.staleError) lines.push(`could not remove stale files: ${r.staleError}`);
  return lines;
}

/** JSON output uses kebab-case keys throughout, as create's contract does. */
function kebabKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(kebabKeys);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value).map(([k, v]) => [
      k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`),
      kebabKeys(v),
    ]),
  );
}
