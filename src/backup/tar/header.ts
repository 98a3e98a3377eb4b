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

/** A NUL-terminated header field, as latin1 (one char per byte). */
export function cString(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.subarray(0, end === -1 ? buf.length : end).toString('latin1');
}

/** A numeric header field: octal text, or GNU base-256; `offset` (bytes) names the header in errors. */
export function parseNumber(field: Buffer, what: string, offset: number): number {
  if (field[0] & 0x80) {
    // GNU base-256: big-endian, first byte's high bit set.
    let value = field[0] & 0x7f;
    for (let i = 1; i < field.length; i++) value = value * 256 + field[i];
    if (!Number.isSafeInteger(value)) {
      throw new ArchiveRejectedError(`tar header at offset ${offset}: ${what} is too large`);
    }
    return value;
  }
  // Octal digits up to the first NUL, with blanks around them (what trim() drops in latin1).
  let end = 0;
  while (end < field.length && field[end] !== 0) end += 1;
  let start = 0;
  while (start < end && isBlank(field[start])) start += 1;
  while (end > start && isBlank(field[end - 1])) end -= 1;
  let value = 0;
  for (let i = start; i < end; i++) {
    const digit = field[i] - 0x30;
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

/** Refuses a header whose checksum (unsigned or, as old tars wrote it, signed) does not match. */
export function verifyChecksum(block: Buffer, offset: number): void {
  const stored = parseNumber(block.subarray(148, 156), 'checksum', offset);
  // The sum with the checksum field (148-155) counted as 8 spaces.
  let unsigned = 8 * 0x20;
  for (let i = 0; i < 148; i++) unsigned += block[i];
  for (let i = 156; i < BLOCK; i++) unsigned += block[i];
  if (stored !== unsigned && stored !== signedSum(block)) {
    throw new ArchiveRejectedError(
      `not a tar archive, or a damaged one: header checksum mismatch at offset ${offset}`,
    );
  }
}

/** The sum old tars wrote: each byte as a signed char, the checksum field as 8 spaces. */
function signedSum(block: Buffer): number {
  let sum = 8 * 0x20;
  for (let i = 0; i < BLOCK; i++) {
    if (i < 148 || i >= 156) sum += block[i] > 127 ? block[i] - 256 : block[i];
  }
  return sum;
}

/** Records "<length> <key>=<value>\n"; GNU tar drops what follows a malformed one, so refuse it. */
export function parsePax(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  // GNU tar stops at a NUL where a record should start (padding some writers leave).
  while (pos < data.length && data[pos] !== 0) {
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
      pos + length > data.length ||
      data[end] !== 0x0a
    ) {
      throw new ArchiveRejectedError('the archive has a malformed pax header');
    }
    const eq = data.indexOf(0x3d, space + 1);
    // GNU tar skips blanks before the keyword: " size" would be its "size".
    const first = data[space + 1];
    if (eq === -1 || eq >= end || eq === space + 1 || first === 0x20 || first === 0x09)
      throw new ArchiveRejectedError('the archive has a malformed pax header');
    out[data.toString('utf8', space + 1, eq)] = data.toString('utf8', eq + 1, end);
    pos += length;
  }
  return out;
}
