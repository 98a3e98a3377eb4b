/** Formatting shared by the CLI, the engine and the charm's actions: sizes, lists and tables. */
import type { BackupInfo } from './backup/types';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** `bytes` in binary units, one decimal above bytes: "0 B", "1.5 KiB", "5.0 GiB". */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return `${bytes} B`;
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

/**
 * `n` and the noun for that many: "1 file", "0 files", "2 media files";
 * `many` when the plural is not `one` + "s".
 */
export function counted(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** Paths a message or an action result lists at most; the rest are counted. */
export const PATHS_SHOWN = 10;

/**
 * The first `shown` of `items`, comma-separated, then ` (N more)` when there are
 * more: "a, b (3 more)".
 */
export function formatFirst(items: readonly string[], shown = PATHS_SHOWN): string {
  const more = items.length - shown;
  return `${items.slice(0, shown).join(', ')}${more > 0 ? ` (${more} more)` : ''}`;
}

/** Left-aligned columns separated by two spaces; trailing spaces trimmed. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

/**
 * An aligned table: id, created, size, status; "(no backups)" under the header
 * when empty; then a line "backup <id> is unreadable: <reason>" for each backup
 * that has a reason.
 */
export function formatBackupTable(backups: BackupInfo[]): string {
  const table = formatTable(
    ['backup-id', 'created', 'size', 'status'],
    backups.map((b) => [b.backupId, b.created, formatBytes(b.size), b.status]),
  );
  const reasons = backups.flatMap((b) =>
    b.reason ? [`backup ${b.backupId} is unreadable: ${b.reason}`] : [],
  );
  const table0 = backups.length === 0 ? `${table}\n(no backups)` : table;
  return [table0, ...reasons, ...noServerLines(backups)].join('\n');
}

/**
 * A line for each complete backup whose manifest names no server (it was made where
 * there was no homeserver.yaml: Synapse's default paths, or a wrong data dir).
 */
export function noServerLines(backups: readonly BackupInfo[]): string[] {
  return backups.flatMap((b) =>
    b.status === 'complete' && !b.serverName
      ? [
          `backup ${b.backupId} names no server: its homeserver.yaml had no server_name, or there was none (Synapse's default paths)`,
        ]
      : [],
  );
}
