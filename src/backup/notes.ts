/**
 * What a create reports beside its counts: the entries it left out of the
 * backup (`skipped`) and the media that changed or vanished while tar read them
 * on a live server (`warnings`). Both are bounded lists: the first
 * LISTED_LIMIT items and the total, so a million FIFOs cannot fill memory, a
 * manifest or an action's results.
 */
import type { SkipKind } from './tar';

/** How many items a list keeps; `count` goes on counting past it. */
export const LISTED_LIMIT = 1000;

/** An entry create left out: its path relative to the data dir, and why (its kind). */
export interface SkippedEntry {
  path: string;
  kind: SkipKind;
}

/** What tar said of a media path on a live server (see backup/tar-complaints.ts). */
export type WarningKind = 'changed' | 'removed';

/** A media path that changed or vanished while tar read it: in the backup as tar found it, or not at all. */
export interface EntryWarning {
  path: string;
  kind: WarningKind;
}

/** The first `limit` items added and how many were added in all. */
export class BoundedList<T> {
  readonly items: T[] = [];
  count = 0;

  constructor(private readonly limit = LISTED_LIMIT) {}

  add(item: T): void {
    this.count += 1;
    if (this.items.length < this.limit) this.items.push(item);
  }
}

/**
 * A path as reported: the latin1 tar name (one char per byte) decoded as UTF-8,
 * without a leading `./`.
 */
export function reportedPath(latin1: string): string {
  return Buffer.from(latin1, 'latin1')
    .toString('utf8')
    .replace(/^(\.\/+)+/, '');
}

/**
 * One line for an operator: the first `shown` items as "path (kind)", each path
 * clipped to 200 characters, then "and N more" when there are more (the manifest
 * lists up to LISTED_LIMIT). Bounded whatever the count: for action results and logs.
 */
export function summarizeNotes(
  items: readonly { path: string; kind: string }[],
  count: number,
  shown = 20,
): string {
  const listed = items
    .slice(0, shown)
    .map(({ path, kind }) => `${path.length > 200 ? `${path.slice(0, 200)}…` : path} (${kind})`);
  const more = count - listed.length;
  return more > 0 ? `${listed.join(', ')} and ${more} more` : listed.join(', ');
}
