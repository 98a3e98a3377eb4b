import { posix } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { BackupError } from '../errors';

const BLOCK = 512;
/** pax and GNU long-name records are small; a bigger one is hostile. */
const MAX_META_BYTES = 1024 * 1024;
/** Linux PATH_MAX. */
const MAX_NAME_BYTES = 4096;
/** Metadata headers held back for one entry (a pax header plus GNU long name and link). */
const MAX_PENDING_META_BYTES = 4 * MAX_META_BYTES;

export type EntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'device' | 'fifo' | 'other';

export interface TarEntry {
  /** Path as stored (bytes decoded as latin1 so every byte maps to one char). */
  name: string;
  type: EntryType;
  typeflag: string;
  linkname: string;
  size: number;
}

/** Decides whether an entry may pass; throws a BackupError('archive-rejected') when not. */
export type EntryPolicy = (entry: TarEntry) => void;

export class ArchiveRejectedError extends BackupError {
  constructor(message: string) {
    super('archive-rejected', message);
    this.name = 'ArchiveRejectedError';
  }
}

function display(latin1: string): string {
  const text = Buffer.from(latin1, 'latin1').toString('utf8');
  const clipped = text.length > 200 ? `${text.slice(0, 200)}… (${text.length} characters)` : text;
  return JSON.stringify(clipped);
}

/**
 * A pass-through that parses tar headers as the bytes flow (ustar, GNU long
 * names, pax), counts entries and lets each header through only after the
 * policy accepted it, so a rejected entry never reaches the extracting tar:
 * the bytes of an entry's headers (its pax and GNU long-name records too) are
 * held back until the entry is accepted, even when they span chunks.
 * Our own scanner rather than tar-stream's Extract: that one is a streamx
 * Writable with no per-chunk callback to gate bytes on.
 *
 * Where readers disagree on an archive's layout (GNU tar lists a symlink's
 * data but extracts it as headers; it ignores a malformed pax size, applies a
 * global one to every entry) the scanner refuses it rather than guess.
 */
export class TarScanner extends Transform {
  entries = 0;
  files = 0;
  /** Bytes of regular-file content. */
  contentBytes = 0;
  private header = Buffer.alloc(BLOCK);
  private headerFill = 0;
  /** Bytes of entry data (plus padding) still to pass before the next header. */
  private skip = 0;
  /** Collects pax / GNU long-name payloads. */
  private meta: { kind: string; size: number; chunks: Buffer[]; fill: number } | null = null;
  private metaPadding = 0;
  private pax: Record<string, string> = {};
  private globalPax: Record<string, string> = {};
  private longName: string | null = null;
  private longLink: string | null = null;
  private ended = false;
  private offset = 0;
  /** True from the first byte of an entry's headers until the policy accepts it. */
  private holding = false;
  /** Bytes of earlier chunks that `holding` kept back. */
  private held: Buffer[] = [];
  private pendingMetaBytes = 0;

  constructor(private readonly policy?: EntryPolicy) {
    super({ highWaterMark: 1024 * 1024 });
  }

  /** True when the end-of-archive marker was seen. */
  get complete(): boolean {
    return this.ended;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    let release: number;
    try {
      release = this.scan(chunk);
    } catch (err) {
      this.held = [];
      done(err as Error);
      return;
    }
    // Once anything of this chunk is released, so is everything held before it.
    let out: Buffer | undefined;
    if (release > 0) {
      const head = release === chunk.length ? chunk : chunk.subarray(0, release);
      out = this.held.length > 0 ? Buffer.concat([...this.held, head]) : head;
      this.held = [];
    }
    if (release < chunk.length) this.held.push(Buffer.from(chunk.subarray(release)));
    done(null, out);
  }

  override _flush(done: TransformCallback): void {
    if (!this.ended) {
      done(
        new ArchiveRejectedError(
          'the archive ends without an end-of-archive marker: it is truncated',
        ),
      );
      return;
    }
    done();
  }

  /** Parses `chunk`; returns how many of its leading bytes may pass (see `holding`). */
  private scan(chunk: Buffer): number {
    let pos = 0;
    let release = 0;
    while (pos < chunk.length) {
      if (!this.holding) release = pos;
      if (this.ended) {
        for (let i = pos; i < chunk.length; i++) {
          if (chunk[i] !== 0) {
            throw new ArchiveRejectedError(
              `the archive has data after its end-of-archive marker (offset ${this.offset + i - pos})`,
            );
          }
        }
        this.offset += chunk.length - pos;
        return chunk.length;
      }
      if (this.meta) {
        const take = Math.min(this.meta.size - this.meta.fill, chunk.length - pos);
        this.meta.chunks.push(chunk.subarray(pos, pos + take));
        this.meta.fill += take;
        pos += take;
        this.offset += take;
        if (this.meta.fill === this.meta.size) this.finishMeta();
        continue;
      }
      if (this.skip > 0) {
        const take = Math.min(this.skip, chunk.length - pos);
        this.skip -= take;
        pos += take;
        this.offset += take;
        continue;
      }
      this.holding = true;
      const take = Math.min(BLOCK - this.headerFill, chunk.length - pos);
      chunk.copy(this.header, this.headerFill, pos, pos + take);
      this.headerFill += take;
      pos += take;
      this.offset += take;
      if (this.headerFill === BLOCK) {
        this.headerFill = 0;
        this.onHeader(this.header);
      }
    }
    return this.holding ? release : chunk.length;
  }

  private onHeader(block: Buffer): void {
    if (block.every((b) => b === 0)) {
      this.ended = true;
      this.holding = false;
      return;
    }
    verifyChecksum(block, this.offset - BLOCK);
    const typeflag = block[156] === 0 ? '0' : String.fromCharCode(block[156]);
    const size = parseNumber(block.subarray(124, 136), 'size', this.offset - BLOCK);
    const padded = Math.ceil(size / BLOCK) * BLOCK;
    if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
      if (size > MAX_META_BYTES) {
        throw new ArchiveRejectedError(`the archive has a ${size}-byte metadata header: refused`);
      }
      this.pendingMetaBytes += BLOCK + padded;
      if (this.pendingMetaBytes > MAX_PENDING_META_BYTES) {
        throw new ArchiveRejectedError(
          `the archive has more than ${MAX_PENDING_META_BYTES} bytes of metadata headers before an entry: refused`,
        );
      }
      this.meta = { kind: typeflag, size, chunks: [], fill: 0 };
      this.metaPadding = padded - size;
      if (size === 0) this.finishMeta();
      return;
    }
    const entry = this.buildEntry(block, typeflag);
    // GNU tar ignores a pax size that is not plain digits (" 512", "0x200") and
    // uses the header's: refuse rather than read a different layout than it does.
    const paxSize = this.pax.size;
    const dataSize =
      paxSize === undefined ? size : /^[0-9]+$/.test(paxSize) ? Number(paxSize) : NaN;
    if (!Number.isSafeInteger(dataSize)) {
      throw new ArchiveRejectedError(`entry ${display(entry.name)} has an invalid size`);
    }
    // Hard links, symlinks, directories, devices and FIFOs store no data, yet
    // GNU tar skips a symlink's or FIFO's declared size when listing, not when
    // extracting: a size there could hide a header from one reader or the other.
    if (dataSize > 0 && entry.type !== 'file' && entry.type !== 'other') {
      throw new ArchiveRejectedError(
        `entry ${display(entry.name)} is a ${entry.type} with ${dataSize} bytes of data: refused`,
      );
    }
    entry.size = entry.type === 'file' ? dataSize : 0;
    this.pax = {};
    this.longName = null;
    this.longLink = null;
    if (entry.name.length > MAX_NAME_BYTES || entry.linkname.length > MAX_NAME_BYTES) {
      throw new ArchiveRejectedError(
        `entry ${display(entry.name)} has a name longer than ${MAX_NAME_BYTES} bytes: refused`,
      );
    }
    this.policy?.(entry);
    this.holding = false;
    this.pendingMetaBytes = 0;
    this.entries += 1;
    if (entry.type === 'file') {
      this.files += 1;
      this.contentBytes += dataSize;
    }
    this.skip = Math.ceil(dataSize / BLOCK) * BLOCK;
  }

  private finishMeta(): void {
    const meta = this.meta;
    if (!meta) return;
    this.meta = null;
    this.skip = this.metaPadding;
    const data = Buffer.concat(meta.chunks);
    if (meta.kind === 'L' || meta.kind === 'K') {
      const end = data.indexOf(0);
      const value = data.subarray(0, end === -1 ? data.length : end).toString('latin1');
      if (meta.kind === 'L') this.longName = value;
      else this.longLink = value;
      return;
    }
    const records = parsePax(data);
    if (Object.keys(records).some((k) => k.startsWith('GNU.sparse'))) {
      throw new ArchiveRejectedError('the archive contains sparse files, which restore refuses');
    }
    if (meta.kind === 'g') {
      // GNU tar applies a global header's records to every entry after it.
      if ('path' in records || 'linkpath' in records || 'size' in records) {
        throw new ArchiveRejectedError(
          'the archive has a global header that renames or resizes entries: refused',
        );
      }
      this.globalPax = { ...this.globalPax, ...records };
    } else {
      this.pax = { ...this.globalPax, ...records };
    }
  }

  private buildEntry(block: Buffer, typeflag: string): TarEntry {
    const magic = block.subarray(257, 263).toString('latin1');
    let name = cString(block.subarray(0, 100));
    // Only POSIX ustar has a prefix field; GNU keeps other data there.
    if (magic === 'ustar\0') {
      const prefix = cString(block.subarray(345, 500));
      if (prefix) name = `${prefix}/${name}`;
    }
    if (this.longName !== null) name = this.longName;
    if (this.pax.path !== undefined) name = Buffer.from(this.pax.path, 'utf8').toString('latin1');
    let linkname = cString(block.subarray(157, 257));
    if (this.longLink !== null) linkname = this.longLink;
    if (this.pax.linkpath !== undefined) {
      linkname = Buffer.from(this.pax.linkpath, 'utf8').toString('latin1');
    }
    return { name, linkname, typeflag, type: entryType(typeflag), size: 0 };
  }
}

function entryType(flag: string): EntryType {
  switch (flag) {
    case '0':
    case '7':
      return 'file';
    case '1':
      return 'hardlink';
    case '2':
      return 'symlink';
    case '3':
    case '4':
      return 'device';
    case '5':
      return 'directory';
    case '6':
      return 'fifo';
    default:
      return 'other';
  }
}

function cString(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.subarray(0, end === -1 ? buf.length : end).toString('latin1');
}

function parseNumber(field: Buffer, what: string, offset: number): number {
  if (field[0] & 0x80) {
    // GNU base-256: big-endian, first byte's high bit set.
    let value = field[0] & 0x7f;
    for (let i = 1; i < field.length; i++) value = value * 256 + field[i];
    if (!Number.isSafeInteger(value)) {
      throw new ArchiveRejectedError(`tar header at offset ${offset}: ${what} is too large`);
    }
    return value;
  }
  const text = cString(field).trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) {
    throw new ArchiveRejectedError(
      `not a tar archive: the header at offset ${offset} has an invalid ${what}`,
    );
  }
  return parseInt(text, 8);
}

function verifyChecksum(block: Buffer, offset: number): void {
  const stored = parseNumber(block.subarray(148, 156), 'checksum', offset);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : block[i];
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  if (stored !== unsigned && stored !== signed) {
    throw new ArchiveRejectedError(
      `not a tar archive, or a damaged one: header checksum mismatch at offset ${offset}`,
    );
  }
}

/** Records "<length> <key>=<value>\n"; GNU tar drops what follows a malformed one, so refuse it. */
function parsePax(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  // GNU tar stops at a NUL where a record should start (padding some writers leave).
  while (pos < data.length && data[pos] !== 0) {
    const space = data.indexOf(0x20, pos);
    const digits = space === -1 ? '' : data.subarray(pos, space).toString('latin1');
    const length = /^[0-9]{1,10}$/.test(digits) ? Number(digits) : NaN;
    if (
      !(length > space - pos + 1) ||
      pos + length > data.length ||
      data[pos + length - 1] !== 0x0a
    ) {
      throw new ArchiveRejectedError('the archive has a malformed pax header');
    }
    const record = data.subarray(space + 1, pos + length - 1).toString('utf8');
    const eq = record.indexOf('=');
    // GNU tar skips blanks before the keyword: " size" would be its "size".
    if (eq <= 0 || record[0] === ' ' || record[0] === '\t')
      throw new ArchiveRejectedError('the archive has a malformed pax header');
    out[record.slice(0, eq)] = record.slice(eq + 1);
    pos += length;
  }
  return out;
}

/**
 * The restore policy: every entry must land inside the extraction root.
 * Rejects absolute paths, `..`, device nodes and FIFOs, symlinks that point
 * outside, hard links to anything but an earlier regular file, and entries
 * whose path runs through a name that was a symlink earlier in the archive,
 * even if a later entry replaced it: whether an extracting tar removes the
 * symlink first (GNU tar does) or keeps it (busybox, --keep-directory-symlink)
 * is not ours to know.
 *
 * Symlink targets are checked lexically, which is exact only without
 * symlinks inside them, so a ".." after a name ("d/s/..", where d/s may be a
 * symlink) is refused; leading ".." climb from the symlink's real directory.
 */
export function confinedEntryPolicy(): EntryPolicy {
  const symlinks = new Set<string>();
  const regularFiles = new Set<string>();
  return (entry) => {
    const name = normalizeMemberName(entry.name);
    const shown = display(entry.name);
    const parts = name.split('/');
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
