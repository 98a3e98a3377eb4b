import { randomInt } from 'node:crypto';
import { posix } from 'node:path';
import { isBookkeepingName } from '../scripts/common';
import { BackupError } from '../../errors';
import {
  ArchiveRejectedError,
  type EntryPolicy,
  type SkipKind,
  type TarEntry,
  display,
} from './header';

/**
 * The restore policy: every entry must land inside the extraction root.
 * Rejects absolute paths, `..`, device nodes and FIFOs, symlinks that point
 * outside, hard links to anything but an earlier regular file, and entries
 * whose path runs through a name that was a symlink earlier in the archive,
 * even if a later entry replaced it: whether an extracting tar removes the
 * symlink first (GNU tar does) or keeps it (busybox, --keep-directory-symlink)
 * is not ours to know. A top-level name the engine uses for its own
 * bookkeeping (`.synapse-restore-*`, `.pre-restore-*`, the snapshot, the swap
 * journal) is refused too: the swap would skip it, or take it for its own.
 *
 * Entries under `@external/` (paths outside the data dir, issue #15) are
 * confined to the manifest's `roots` (archive names, `@external/<path>`): one
 * outside them is refused, and so is a symlink leading from one root, or from
 * the data dir, into another (each lands on its own filesystem).
 *
 * Symlink targets are checked lexically, which is exact only without
 * symlinks inside them, so a ".." after a name ("d/s/..", where d/s may be a
 * symlink) is refused; leading ".." climb from the symlink's real directory.
 *
 * With `leaveOutNoData` (create's policy, createEntryPolicy), FIFOs and device
 * nodes, and hard links to them, are left out instead: their SkipKind is returned.
 * With `ownTar` (create's: the archive is the engine's own GNU tar reading the
 * filesystem, which writes a hard link only to a member it archived earlier) a
 * hard link's target is checked by kind alone (not a symlink; a left-out one is
 * left out), without keeping every file's name: 35-40 MB at 200k files. Restore and
 * verify keep a 53-bit hash of each regular file's name (seeded at random for each
 * archive read) instead of the name: about 8 MB at 200k files. A hard link's target
 * must be among those hashes and not a symlink (symlink names are kept exactly), so
 * a collision can only let through a hard link to a directory or to a name the
 * archive does not hold, which link(2) refuses and tar -x fails on; or refuse a valid
 * hard link after a directory of a colliding name, which the next read (another seed)
 * accepts. Unkeyed odds at 200k names are about 2e-6 a read.
 */
export function confinedEntryPolicy(
  options: { leaveOutNoData?: boolean; ownTar?: boolean; roots?: readonly string[] } = {},
): EntryPolicy {
  const symlinks = new Set<string>();
  const regularFiles = new NameHashSet(randomInt(0x7fffffff));
  /** Symlinks that a later file or hard link of the same name replaced: a hard link may target those. */
  const nowFiles = new Set<string>();
  const roots = options.roots ?? [];
  /** Create's left-out entries, by name: a hard link to one is left out too. */
  const leftOut = new Map<string, SkipKind>();
  const leaveOut = (name: string, kind: SkipKind, refusal: string): SkipKind => {
    if (!options.leaveOutNoData) throw new ArchiveRejectedError(refusal);
    leftOut.set(name, kind);
    return kind;
  };
  return (entry) => {
    const name = normalizeMemberName(entry.name);
    refuseOutsideRoots(name, entry.name, roots);
    const slash = name.indexOf('/');
    const top = slash === -1 ? name : name.slice(0, slash);
    if (isBookkeepingName(top)) {
      throw new ArchiveRejectedError(
        `entry ${display(entry.name)} has a name the restore uses for its own bookkeeping (${display(top)}): refused`,
      );
    }
    if (symlinks.size > 0) refuseInsideSymlink(name, entry.name, symlinks);
    switch (entry.type) {
      case 'file':
        if (!options.ownTar) regularFiles.add(name);
        if (symlinks.has(name)) nowFiles.add(name);
        return;
      case 'directory':
        if (!options.ownTar) regularFiles.delete(name);
        return;
      case 'symlink':
        checkSymlink(name, entry.name, entry.linkname);
        refuseLinkAcrossRoots(
          name,
          posix.normalize(posix.join(posix.dirname(name), entry.linkname)),
          display(entry.name),
          roots,
        );
        symlinks.add(name);
        nowFiles.delete(name);
        if (!options.ownTar) regularFiles.delete(name);
        return;
      case 'hardlink': {
        const target = normalizeMemberName(entry.linkname, 'hard link target');
        const targetKind = leftOut.get(target);
        if (targetKind) return leaveOut(name, targetKind, '');
        const notSymlink = !symlinks.has(target) || nowFiles.has(target);
        const earlierFile = notSymlink && (options.ownTar || regularFiles.has(target));
        if (!earlierFile) {
          throw new ArchiveRejectedError(
            `hard link ${display(entry.name)} points to ${display(entry.linkname)}, which is not a file earlier in the archive: refused`,
          );
        }
        if (!options.ownTar) regularFiles.add(name);
        if (symlinks.has(name)) nowFiles.add(name);
        return;
      }
      case 'device': {
        const kind = entry.typeflag === '3' ? 'character-device' : 'block-device';
        return leaveOut(name, kind, `entry ${display(entry.name)} is a device node: refused`);
      }
      case 'fifo':
        return leaveOut(name, 'fifo', `entry ${display(entry.name)} is a FIFO: refused`);
      default:
        throw new ArchiveRejectedError(
          `entry ${display(entry.name)} has the unsupported tar type '${entry.typeflag}': refused`,
        );
    }
  };
}

/**
 * FNV-1a over the name's UTF-16 code units in two 32-bit lanes (the second started
 * from `seed`), folded into 53 bits: 32 from the first lane, 21 from the second.
 */
function nameHash(name: string, seed: number): number {
  let a = 0x811c9dc5;
  let b = seed ^ 0x050c5d1f;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x01000193) ^ (b >>> 15);
  }
  b ^= b >>> 16;
  return (a >>> 0) * 0x200000 + ((b >>> 0) & 0x1fffff);
}

/** A set of names kept as nameHash values (numbers), not strings. */
class NameHashSet {
  private readonly hashes = new Set<number>();
  constructor(private readonly seed: number) {}
  add(name: string): void {
    this.hashes.add(nameHash(name, this.seed));
  }
  delete(name: string): void {
    this.hashes.delete(nameHash(name, this.seed));
  }
  has(name: string): boolean {
    return this.hashes.has(nameHash(name, this.seed));
  }
}

/** Refuses an entry below a name the archive made a symlink (it would be written through it). */
function refuseInsideSymlink(name: string, raw: string, symlinks: ReadonlySet<string>): void {
  const parts = name.split('/');
  for (let i = 1; i < parts.length; i++) {
    const parent = parts.slice(0, i).join('/');
    if (symlinks.has(parent)) {
      throw new ArchiveRejectedError(
        `entry ${display(raw)} is inside ${display(parent)}, which the archive made a symlink: refused`,
      );
    }
  }
}

/** Refuses a symlink whose target is absolute, or leads (or could lead) outside the root. */
function checkSymlink(name: string, raw: string, linkname: string): void {
  if (linkname.startsWith('/')) {
    throw new ArchiveRejectedError(
      `symlink ${display(raw)} points to the absolute path ${display(linkname)}: refused`,
    );
  }
  const steps = linkname.split('/').filter((p) => p !== '' && p !== '.');
  const firstName = steps.findIndex((p) => p !== '..');
  if (firstName !== -1 && steps.indexOf('..', firstName) !== -1) {
    throw new ArchiveRejectedError(
      `symlink ${display(raw)} has ".." after a directory name in its target (${display(linkname)}), which another symlink could lead outside: refused`,
    );
  }
  const resolved = posix.normalize(posix.join(posix.dirname(name), linkname));
  if (resolved === '..' || resolved.startsWith('../')) {
    throw new ArchiveRejectedError(
      `symlink ${display(raw)} points outside the data directory (${display(linkname)}): refused`,
    );
  }
}

/**
 * Create's policy: the restore's (confinedEntryPolicy), so that nothing a restore
 * would refuse enters a backup. FIFOs and device nodes (and hard links to them),
 * which hold no data, are left out (the scanner drops their headers and lists
 * them); anything else the restore refuses fails the create with
 * `unrestorable-entry`, naming the entry, with an `advice` remedy saying what to do.
 * `options` are the restore's (what the restore of this backup will be given).
 */
export function createEntryPolicy(
  options: Parameters<typeof confinedEntryPolicy>[0] = {},
): EntryPolicy {
  const restorePolicy = confinedEntryPolicy({ ...options, leaveOutNoData: true, ownTar: true });
  return (entry) => {
    try {
      return restorePolicy(entry);
    } catch (err) {
      if (!(err instanceof ArchiveRejectedError)) throw err;
      throw new BackupError(
        'unrestorable-entry',
        `cannot back up: ${err.message.replace(/: refused$/, '')}; a restore refuses such an entry, so no backup was stored`,
        { remedy: { kind: 'advice', text: adviceFor(entry.type) } },
      );
    }
  };
}

function adviceFor(type: TarEntry['type']): string {
  switch (type) {
    case 'symlink':
      return 'replace the symlink with a copy of what it points to (or a relative link that stays inside the data directory), or remove it, then create the backup again';
    case 'hardlink':
      return 'replace the hard link with a copy of the file, then create the backup again';
    default:
      return 'rename or remove that entry, then create the backup again';
  }
}

/** Whether `path` has an empty, "." or ".." step (what /(^|\/)\.{0,2}(\/|$)/ matches). */
function hasOddStep(path: string): boolean {
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i < path.length && path.charCodeAt(i) !== 0x2f) continue;
    const length = i - start;
    if (length === 0) return true;
    if (length <= 2 && path.charCodeAt(start) === 0x2e) {
      if (length === 1 || path.charCodeAt(start + 1) === 0x2e) return true;
    }
    start = i + 1;
  }
  return false;
}

function normalizeMemberName(raw: string, what = 'entry'): string {
  if (raw.includes('\0') || raw === '') {
    throw new ArchiveRejectedError(`the archive has an ${what} with an empty or invalid name`);
  }
  if (raw.startsWith('/')) {
    throw new ArchiveRejectedError(`${what} ${display(raw)} has an absolute path: refused`);
  }
  // Most names have no empty, "." or ".." step: they are their own normal form, and
  // so is a directory's (tar writes "a/b/") without its one trailing slash.
  if (!hasOddStep(raw)) return raw;
  if (raw.endsWith('/')) {
    const dir = raw.slice(0, -1);
    if (!hasOddStep(dir)) return dir;
  }
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) {
    throw new ArchiveRejectedError(`${what} ${display(raw)} contains "..": refused`);
  }
  return parts.join('/') || '.';
}

/** The archive's top-level name for paths outside the data dir (src/backup/items.ts). */
const EXTERNAL = '@external';

/** The root (`@external/...`) holding `name`, '' for the data dir; undefined when none does. */
function rootOf(name: string, roots: readonly string[]): string | undefined {
  if (name !== EXTERNAL && !name.startsWith(`${EXTERNAL}/`)) return '';
  return roots.find((r) => name === r || name.startsWith(`${r}/`));
}

/** Refuses an `@external/...` entry outside the manifest's roots. */
function refuseOutsideRoots(name: string, raw: string, roots: readonly string[]): void {
  if (rootOf(name, roots) === undefined) {
    throw new ArchiveRejectedError(
      `entry ${display(raw)} is outside the data directory and not one of the paths the backup's manifest lists: refused`,
    );
  }
}

/** Refuses a symlink whose target (`resolved`, lexically) is not within its own root. */
function refuseLinkAcrossRoots(
  name: string,
  resolved: string,
  shown: string,
  roots: readonly string[],
): void {
  const from = rootOf(name, roots);
  const to = rootOf(resolved, roots);
  if (from !== to) {
    throw new ArchiveRejectedError(
      `symlink ${shown} points out of ${from ? display(from) : 'the data directory'}: refused`,
    );
  }
}
