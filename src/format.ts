import type { BackupInfo } from './backup/types';

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** An aligned table: id, created, size, status. */
export function formatBackupTable(backups: BackupInfo[]): string {
  const rows = [
    ['backup-id', 'created', 'size', 'status'],
    ...backups.map((b) => [b.backupId, b.created, formatBytes(b.size), b.status]),
  ];
  const widths = rows[0].map((_, col) => Math.max(...rows.map((r) => r[col].length)));
  const lines = rows.map((r) =>
    r
      .map((cell, col) => cell.padEnd(widths[col]))
      .join('  ')
      .trimEnd(),
  );
  if (backups.length === 0) lines.push('(no backups)');
  return lines.join('\n');
}
