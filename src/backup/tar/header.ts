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
  const text = cString(field).trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) {
    throw new ArchiveRejectedError(
      `not a tar archive: the header at offset ${offset} has an invalid ${what}`,
    );
  }
  return parseInt(text, 8);
}

/** Refuses a header whose checksum (unsigned or, as old tars wrote it, signed) does not match. */
export function verifyChecksum(block: Buffer, offset: number): void {
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
export function parsePax(data: Buffer): Record<string, string> {
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
