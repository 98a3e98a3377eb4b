import { posix } from 'node:path';
import { isBookkeepingName } from '../scripts/common';
import { ArchiveRejectedError, type EntryPolicy, display } from './header';

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
 */
export function confinedEntryPolicy(options: { roots?: readonly string[] } = {}): EntryPolicy {
  const symlinks = new Set<string>();
  const regularFiles = new Set<string>();
  const roots = options.roots ?? [];
  return (entry) => {
    const name = normalizeMemberName(entry.name);
    const shown = display(entry.name);
    const parts = name.split('/');
    refuseOutsideRoots(name, shown, roots);
    if (isBookkeepingName(parts[0])) {
      throw new ArchiveRejectedError(
        `entry ${shown} has a name the restore uses for its own bookkeeping (${display(parts[0])}): refused`,
      );
    }
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/');
      if (symlinks.has(parent)) {
        throw new ArchiveRejectedError(
          `entry ${shown} is inside ${display(parent)}, which the archive made a symlink: refused`,
        );
      }
    }
    switch (entry.type) {
      case 'file':
        regularFiles.add(name);
        return;
      case 'directory':
        regularFiles.delete(name);
        return;
      case 'symlink': {
        if (entry.linkname.startsWith('/')) {
          throw new ArchiveRejectedError(
            `symlink ${shown} points to the absolute path ${display(entry.linkname)}: refused`,
          );
        }
        const steps = entry.linkname.split('/').filter((p) => p !== '' && p !== '.');
        const firstName = steps.findIndex((p) => p !== '..');
        if (firstName !== -1 && steps.indexOf('..', firstName) !== -1) {
          throw new ArchiveRejectedError(
            `symlink ${shown} has ".." after a directory name in its target (${display(entry.linkname)}), which another symlink could lead outside: refused`,
          );
        }
        const resolved = posix.normalize(posix.join(posix.dirname(name), entry.linkname));
        if (resolved === '..' || resolved.startsWith('../')) {
          throw new ArchiveRejectedError(
            `symlink ${shown} points outside the data directory (${display(entry.linkname)}): refused`,
          );
        }
        refuseLinkAcrossRoots(name, resolved, shown, roots);
        symlinks.add(name);
        regularFiles.delete(name);
        return;
      }
      case 'hardlink': {
        const target = normalizeMemberName(entry.linkname, 'hard link target');
        if (!regularFiles.has(target)) {
          throw new ArchiveRejectedError(
            `hard link ${shown} points to ${display(entry.linkname)}, which is not a file earlier in the archive: refused`,
          );
        }
        regularFiles.add(name);
        return;
      }
      case 'device':
        throw new ArchiveRejectedError(`entry ${shown} is a device node: refused`);
      case 'fifo':
        throw new ArchiveRejectedError(`entry ${shown} is a FIFO: refused`);
      default:
        throw new ArchiveRejectedError(
          `entry ${shown} has the unsupported tar type '${entry.typeflag}': refused`,
        );
    }
  };
}

function normalizeMemberName(raw: string, what = 'entry'): string {
  if (raw.includes('\0') || raw === '') {
    throw new ArchiveRejectedError(`the archive has an ${what} with an empty or invalid name`);
  }
  if (raw.startsWith('/')) {
    throw new ArchiveRejectedError(`${what} ${display(raw)} has an absolute path: refused`);
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
function refuseOutsideRoots(name: string, shown: string, roots: readonly string[]): void {
  if (rootOf(name, roots) === undefined) {
    throw new ArchiveRejectedError(
      `entry ${shown} is outside the data directory and not one of the paths the backup's manifest lists: refused`,
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
