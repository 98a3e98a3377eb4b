/**
 * A backup's items: the selected roots a restore replaces, and nothing else.
 * The manifest lists them (`items`, archive names: `homeserver.yaml`,
 * `media_store/local_content`, `@external/etc/synapse/x.signing.key`; its
 * SQLite databases in `databases`); for a backup without that list (older
 * manifests, the original Python charm's backups) they are derived from the
 * archive: its top-level names, and the children of `media_store`.
 */
import { ArchiveRejectedError, type TarEntry } from './tar';
import type { SwapItem } from './scripts/swap';

/** The archive's top-level name for paths outside the data dir: `@external/<absolute path>`. */
export const EXTERNAL_PREFIX = '@external';
/** The database a backup without an item list may hold (the seed's layout). */
const DEFAULT_DATABASE = 'homeserver.db';
/** Derived items: this directory's children are items, not the directory itself. */
const MEDIA_DIR = 'media_store';
/** Directory entries remembered as possible parents of items (bounds memory on odd archives). */
const MAX_DIRS = 10_000;

/** An entry's name without `./`, empty parts or a trailing slash ('.' for the root). */
export function memberName(raw: string): string {
  // Most names have no empty or "." step but a directory's trailing slash: no split.
  const body = raw.endsWith('/') ? raw.slice(0, -1) : raw;
  if (!ODD_STEP.test(body)) return body;
  return (
    raw
      .split('/')
      .filter((p) => p !== '' && p !== '.')
      .join('/') || '.'
  );
}

/** An empty or "." step of a path (a leading `./`, `//`, a trailing slash). */
const ODD_STEP = /(^|\/)\.?(\/|$)/;

/** The absolute path an `@external/...` archive name stands for; undefined for a data-dir name. */
export function externalPath(name: string): string | undefined {
  return name.startsWith(`${EXTERNAL_PREFIX}/`) ? name.slice(EXTERNAL_PREFIX.length) : undefined;
}

/**
 * Watches a restore's entries (call `see` from the scanner's policy) and then
 * says which items the archive holds.
 */
export class ItemTracker {
  /** The archive had a `./` entry: the data dir takes its owner, group and mode. */
  rootFromArchive = false;
  private readonly present = new Set<string>();
  private readonly derived = new Set<string>();
  private readonly dirs = new Set<string>();
  private readonly listed?: Set<string>;
  private readonly depth: number;

  /** `items`: the manifest's list, when it has one. */
  constructor(items?: readonly string[]) {
    if (items) this.listed = new Set(items);
    this.depth = Math.max(1, ...(items ?? []).map((i) => i.split('/').length));
  }

  see(entry: TarEntry): void {
    const name = memberName(entry.name);
    if (name === '.') {
      if (entry.type === 'directory') this.rootFromArchive = true;
      return;
    }
    // The ends of the name's first steps (no split: this runs for every entry).
    const first = name.indexOf('/');
    const second = first === -1 ? -1 : name.indexOf('/', first + 1);
    const third = second === -1 ? -1 : name.indexOf('/', second + 1);
    if (entry.type === 'directory' && third === -1 && this.dirs.size < MAX_DIRS) {
      this.dirs.add(name);
    }
    if (this.listed) {
      let end = first;
      for (let i = 1; i <= this.depth; i++) {
        const prefix = end === -1 ? name : name.slice(0, end);
        if (this.listed.has(prefix)) this.present.add(prefix);
        if (end === -1) break;
        end = name.indexOf('/', end + 1);
      }
      return;
    }
    const top = first === -1 ? name : name.slice(0, first);
    if (top !== MEDIA_DIR) this.derived.add(top);
    else if (first !== -1) this.derived.add(second === -1 ? name : name.slice(0, second));
    else if (entry.type !== 'directory') this.derived.add(name);
  }

  /**
   * The items to swap, in the manifest's order (or the archive's), and the
   * directories the archive holds above data-dir items (they take its owner
   * and mode). `databases`: the manifest's SQLite databases (default
   * homeserver.db). Throws ArchiveRejectedError for a name the swap cannot
   * carry (a newline).
   */
  items(databases: readonly string[] = [DEFAULT_DATABASE]): {
    items: SwapItem[];
    parents: string[];
  } {
    const names = this.listed
      ? [...this.listed].filter((n) => this.present.has(n))
      : [...this.derived];
    const items = names.map((name): SwapItem => {
      if (name.includes('\n')) {
        throw new ArchiveRejectedError(
          `entry ${JSON.stringify(name)} has a newline in its name, which the swap cannot carry: refused`,
        );
      }
      const db = databases.includes(name);
      const external = externalPath(name);
      if (external !== undefined) return { kind: db ? 'rootdb' : 'root', name: external };
      return { kind: db ? 'db' : 'item', name };
    });
    const parents = new Set<string>();
    for (const { kind, name } of items) {
      if (kind === 'root' || kind === 'rootdb') continue;
      const parts = name.split('/');
      for (let i = 1; i < parts.length; i++) {
        const parent = parts.slice(0, i).join('/');
        if (this.dirs.has(parent)) parents.add(parent);
      }
    }
    return { items, parents: [...parents] };
  }
}
