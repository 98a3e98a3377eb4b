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
  return (
    raw
      .split('/')
      .filter((p) => p !== '' && p !== '.')
      .join('/') || '.'
  );
}

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
    const parts = name.split('/');
    if (entry.type === 'directory' && parts.length <= 3 && this.dirs.size < MAX_DIRS) {
      this.dirs.add(name);
    }
    if (this.listed) {
      for (let i = 1; i <= Math.min(parts.length, this.depth); i++) {
        const prefix = parts.slice(0, i).join('/');
        if (this.listed.has(prefix)) this.present.add(prefix);
      }
    } else if (parts[0] === MEDIA_DIR && (parts.length > 1 || entry.type !== 'directory')) {
      this.derived.add(parts.slice(0, 2).join('/'));
    } else if (parts[0] !== MEDIA_DIR) {
      this.derived.add(parts[0]);
    }
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
