/**
 * The tar header codec: parses the 512-byte headers of ustar, GNU (long names,
 * base-256 numbers) and pax archives, and the metadata records they carry.
 * Every malformed field is an ArchiveRejectedError naming its offset.
 */
import { BackupError } from '../../errors';

export const BLOCK = 512;
/** pax and GNU long-name records are small; a bigger one is hostile. */
export const MAX_META_BYTES = 1024 * 1024;
/** Linux PATH_MAX. */
export const MAX_NAME_BYTES = 4096;
/** Metadata headers held back for one entry (a pax header plus GNU long name and link). */
export const MAX_PENDING_META_BYTES = 4 * MAX_META_BYTES;

export type EntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'device' | 'fifo' | 'other';

export interface TarEntry {
  /** Path as stored (bytes decoded as latin1 so every byte maps to one char). */
  name: string;
  type: EntryType;
  typeflag: string;
  linkname: string;
  size: number;
}

/**
 * What create leaves out of a backup, by kind: entries with no data that a restore
 * refuses (`socket` comes from tar's stderr, which never archives one).
 */
export type SkipKind = 'fifo' | 'character-device' | 'block-device' | 'socket';

/**
 * Decides whether an entry may pass: returns nothing to keep it, a SkipKind to
 * leave it out (create's policy only: the scanner drops its headers), or throws
 * a BackupError (`archive-rejected` at restore, `unrestorable-entry` at create).
 */
export type EntryPolicy = (entry: TarEntry) => SkipKind | void;

/** GNU tar's sparse-file records: restore refuses them. */
export const SPARSE_PREFIX = 'GNU.sparse';

export class ArchiveRejectedError extends BackupError {
  constructor(message: string) {
    super('archive-rejected', message);
    this.name = 'ArchiveRejectedError';
  }
}

/** An entry's name for a message: UTF-8 if it decodes, JSON-quoted, clipped to 200 characters. */
export function display(latin1: string): string {
  const text = Buffer.from(latin1, 'latin1').toString('utf8');
  const clipped = text.length > 200 ? `${text.slice(0, 200)}… (${text.length} characters)` : text;
  return JSON.stringify(clipped);
}

/** The entry type of a header's typeflag (byte 156; NUL is an old-style regular file). */
export function entryType(flag: string): EntryType {
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

/** A NUL-terminated field (bytes `start` to `end` of `block`), as latin1 (one char per byte). */
export function cString(block: Buffer, start = 0, end = block.length): string {
  // Most headers' link name and prefix are empty.
  if (block[start] === 0) return '';
  let nul = start;
  while (nul < end && block[nul] !== 0) nul += 1;
  return block.toString('latin1', start, nul);
}

/**
 * A numeric header field (bytes `start` to `end` of `block`): octal text, or GNU
 * base-256; `offset` (bytes) names the header in errors.
 */
export function parseNumber(
  block: Buffer,
  what: string,
  offset: number,
  start = 0,
  end = block.length,
): number {
  if (block[start] & 0x80) {
    // GNU base-256: big-endian, first byte's high bit set.
    let value = block[start] & 0x7f;
    for (let i = start + 1; i < end; i++) value = value * 256 + block[i];
    if (!Number.isSafeInteger(value)) {
      throw new ArchiveRejectedError(`tar header at offset ${offset}: ${what} is too large`);
    }
    return value;
  }
  // Octal digits up to the first NUL, with blanks around them (what trim() drops in latin1).
  let last = start;
  while (last < end && block[last] !== 0) last += 1;
  let first = start;
  while (first < last && isBlank(block[first])) first += 1;
  while (last > first && isBlank(block[last - 1])) last -= 1;
  let value = 0;
  for (let i = first; i < last; i++) {
    const digit = block[i] - 0x30;
    if (digit < 0 || digit > 7) {
      throw new ArchiveRejectedError(
        `not a tar archive: the header at offset ${offset} has an invalid ${what}`,
      );
    }
    value = value * 8 + digit;
  }
  return value;
}

/** Tab, newline, vertical tab, form feed, carriage return, space, no-break space. */
function isBlank(byte: number): boolean {
  return (byte >= 0x09 && byte <= 0x0d) || byte === 0x20 || byte === 0xa0;
}

/**
 * Refuses a header whose checksum (unsigned or, as old tars wrote it, signed) does not match.
 * The header is the 512 bytes of `buf` from `base` (read in place: no view per header).
 */
export function verifyChecksum(buf: Buffer, offset: number, base = 0): void {
  const stored = parseNumber(buf, 'checksum', offset, base + 148, base + 156);
  // The sum with the checksum field (148-155) counted as 8 spaces.
  let unsigned = blockSum(buf, base) + 8 * 0x20;
  for (let i = base + 148; i < base + 156; i++) unsigned -= buf[i];
  if (stored !== unsigned && stored !== signedSum(buf, base)) {
    throw new ArchiveRejectedError(
      `not a tar archive, or a damaged one: header checksum mismatch at offset ${offset}`,
    );
  }
}

/**
 * The 32-bit view of the last ArrayBuffer a header was summed in (chunks hold many headers).
 * It keeps that buffer alive until the next one or forgetChecksumView (a scanner's end).
 */
let wordsOf: { buffer: ArrayBufferLike; words: Uint32Array } | undefined;

/** Lets go of the buffer the checksum's 32-bit view was made for. */
export function forgetChecksumView(): void {
  wordsOf = undefined;
}

/**
 * The sum of a block's 512 bytes. Four at a time when the block is 4-byte aligned
 * (as a stream's chunks nearly always are): two 16-bit lanes of byte pairs, which
 * 128 words cannot overflow (at most 128 * 2 * 255). The 32-bit view is made once
 * per underlying ArrayBuffer, not per header (a view per header was a fifth of the
 * scanner's time at 400,000 headers, most of it garbage).
 */
function blockSum(buf: Buffer, base: number): number {
  let sum = 0;
  const at = buf.byteOffset + base;
  if ((at & 3) !== 0) {
    for (let i = base; i < base + BLOCK; i++) sum += buf[i];
    return sum;
  }
  if (wordsOf?.buffer !== buf.buffer) {
    const buffer = buf.buffer;
    wordsOf = { buffer, words: new Uint32Array(buffer, 0, buffer.byteLength >>> 2) };
  }
  const words = wordsOf.words;
  const first = at >>> 2;
  for (let i = first; i < first + BLOCK / 4; i++) {
    const w = words[i];
    sum += (w & 0x00ff00ff) + ((w >>> 8) & 0x00ff00ff);
  }
  return (sum & 0xffff) + (sum >>> 16);
}

/** The sum old tars wrote: each byte as a signed char, the checksum field as 8 spaces. */
function signedSum(buf: Buffer, base: number): number {
  let sum = 8 * 0x20;
  for (let i = 0; i < BLOCK; i++) {
    const byte = buf[base + i];
    if (i < 148 || i >= 156) sum += byte > 127 ? byte - 256 : byte;
  }
  return sum;
}

/**
 * Records "<length> <key>=<value>\n" in bytes `start` to `stop` of `data`; GNU tar
 * drops what follows a malformed one, so refuse it. With `wanted`, only those
 * keywords (and any GNU.sparse one) are returned: the others (a create's mtime,
 * atime, ctime) are checked but not decoded. Format: POSIX.1-2017 pax, "pax Header Block".
 */
export function parsePax(
  data: Buffer,
  wanted?: ReadonlySet<string>,
  start = 0,
  stop = data.length,
): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = start;
  // GNU tar stops at a NUL where a record should start (padding some writers leave).
  while (pos < stop && data[pos] !== 0) {
    // The length: 1-10 decimal digits, then a space.
    let space = pos;
    let length = 0;
    while (space - pos < 10 && data[space] >= 0x30 && data[space] <= 0x39) {
      length = length * 10 + data[space] - 0x30;
      space += 1;
    }
    const end = pos + length - 1;
    if (
      space === pos ||
      data[space] !== 0x20 ||
      !(length > space - pos + 1) ||
      pos + length > stop ||
      data[end] !== 0x0a
    ) {
      throw new ArchiveRejectedError('the archive has a malformed pax header');
    }
    let eq = space + 1;
    while (eq < end && data[eq] !== 0x3d) eq += 1;
    // GNU tar skips blanks before the keyword: " size" would be its "size".
    const first = data[space + 1];
    if (eq >= end || eq === space + 1 || first === 0x20 || first === 0x09)
      throw new ArchiveRejectedError('the archive has a malformed pax header');
    // GNU tar's time records (one of each per file) are checked above, never decoded.
    if (!(wanted && isTimeKey(data, space + 1, eq) && !wanted.has(timeKey(first)))) {
      const key = data.toString('utf8', space + 1, eq);
      if (!wanted || wanted.has(key) || key.startsWith(SPARSE_PREFIX)) {
        out[key] = data.toString('utf8', eq + 1, end);
      }
    }
    pos += length;
  }
  return out;
}

/** "atime", "ctime" or "mtime" by the keyword's first byte. */
function timeKey(first: number): string {
  return first === 0x61 ? 'atime' : first === 0x63 ? 'ctime' : 'mtime';
}

/** Whether bytes `from` to `to` of `data` are "atime", "ctime" or "mtime". */
function isTimeKey(data: Buffer, from: number, to: number): boolean {
  const first = data[from];
  return (
    to - from === 5 &&
    (first === 0x61 || first === 0x63 || first === 0x6d) &&
    data[from + 1] === 0x74 &&
    data[from + 2] === 0x69 &&
    data[from + 3] === 0x6d &&
    data[from + 4] === 0x65
  );
}
