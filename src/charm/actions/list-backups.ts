import { createHash } from 'node:crypto';
import type { BackupInfo } from '../../backup/types';
import { isValidActionKeySegment, type ActionResults } from '../../juju/hook-tools';
import { formatBytes, formatTable } from '../format';
import { noServerLines } from '../../format';
import type { ActionHandler } from './context';

/** Most backups listed in the results (they travel in action-set's argv). */
export const MAX_LISTED = 300;

/**
 * The action-set key for a backup id. Ids like 20261126070000 are valid keys
 * as they are; others (uppercase, '_', '.') are lowercased and cleaned, with a
 * short hash so that different ids never share a key, and the result then
 * carries the real id in `backups.<key>.id`.
 */
export function resultKeyForId(id: string): string {
  if (isValidActionKeySegment(id)) return id;
  const cleaned = id
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '');
  const hash = createHash('sha256').update(id).digest('hex').slice(0, 8);
  return cleaned ? `${cleaned}-${hash}` : `id-${hash}`;
}

export const listBackups: ActionHandler = async (a) => {
  const { engine, setup } = await a.engine();
  const { backups, uploads } = await engine.list();
  const sorted = [...backups].sort((x, y) =>
    x.created === y.created
      ? x.backupId.localeCompare(y.backupId)
      : x.created.localeCompare(y.created),
  );
  const shown = sorted.slice(-MAX_LISTED);
  const hidden = sorted.length - shown.length;

  const lines: string[] = [];
  if (shown.length === 0) {
    lines.push(`no backups in ${setup.description}`);
  } else {
    lines.push(
      formatTable(
        ['backup-id', 'created', 'size', 'status'],
        shown.map((b) => [b.backupId, b.created, formatBytes(b.size), b.status]),
      ),
    );
    if (hidden > 0) lines.push(`(${hidden} older backups not shown)`);
    lines.push(...noServerLines(shown));
  }
  if (uploads.length > 0) {
    lines.push(
      `${uploads.length} unfinished upload(s): ` +
        uploads.map((u) => `${u.key}${u.initiated ? ` since ${u.initiated}` : ''}`).join(', '),
    );
  }

  const map: ActionResults = {};
  for (const b of shown) map[resultKeyForId(b.backupId)] = entry(b);
  const results: ActionResults = { formatted: lines.join('\n') };
  if (shown.length > 0) results.backups = map;
  return results;
};

function entry(b: BackupInfo): ActionResults {
  const e: ActionResults = { created: b.created, size: String(b.size), status: b.status };
  if (b.reason) e.reason = b.reason;
  if (!isValidActionKeySegment(b.backupId)) e.id = b.backupId;
  return e;
}
