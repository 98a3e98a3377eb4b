/**
 * A small zip reader for tests (the packed .charm is a zip): lists entries with
 * their Unix modes and extracts them, in plain Node (no unzip binary needed).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';

export interface ZipEntry {
  name: string;
  /** Unix mode from the external attributes (e.g. 0o100755), 0 when not made on Unix. */
  mode: number;
  madeBy: number;
  method: number;
  compressedSize: number;
  size: number;
  crc32: number;
  localHeaderOffset: number;
}

export function readZipEntries(zip: Buffer): ZipEntry[] {
  let eocd = -1;
  for (let i = zip.length - 22; i >= Math.max(0, zip.length - 22 - 65535); i--) {
    if (zip.readUInt32LE(i) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error('not a zip: no end of central directory');
  const count = zip.readUInt16LE(eocd + 10);
  let p = zip.readUInt32LE(eocd + 16);
  const entries: ZipEntry[] = [];
  for (let i = 0; i < count; i++) {
    if (zip.readUInt32LE(p) !== 0x02014b50) throw new Error(`bad central directory entry ${i}`);
    const nameLen = zip.readUInt16LE(p + 28);
    const extraLen = zip.readUInt16LE(p + 30);
    const commentLen = zip.readUInt16LE(p + 32);
    const madeBy = zip.readUInt16LE(p + 4) >> 8;
    entries.push({
      name: zip.toString('utf8', p + 46, p + 46 + nameLen),
      madeBy,
      mode: madeBy === 3 ? zip.readUInt32LE(p + 38) >>> 16 : 0,
      method: zip.readUInt16LE(p + 10),
      crc32: zip.readUInt32LE(p + 16),
      compressedSize: zip.readUInt32LE(p + 20),
      size: zip.readUInt32LE(p + 24),
      localHeaderOffset: zip.readUInt32LE(p + 42),
    });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

export function entryData(zip: Buffer, e: ZipEntry): Buffer {
  const p = e.localHeaderOffset;
  if (zip.readUInt32LE(p) !== 0x04034b50) throw new Error(`${e.name}: bad local header`);
  const start = p + 30 + zip.readUInt16LE(p + 26) + zip.readUInt16LE(p + 28);
  const raw = zip.subarray(start, start + e.compressedSize);
  const data = e.method === 8 ? zlib.inflateRawSync(raw) : e.method === 0 ? raw : undefined;
  if (!data) throw new Error(`${e.name}: unsupported compression method ${e.method}`);
  if (data.length !== e.size) throw new Error(`${e.name}: size mismatch`);
  if (zlib.crc32(data) >>> 0 !== e.crc32) throw new Error(`${e.name}: CRC mismatch`);
  return data;
}

/** Extracts every entry below `dest`, applying the permission bits it carries. */
export function extractZip(file: string, dest: string): ZipEntry[] {
  const zip = fs.readFileSync(file);
  const entries = readZipEntries(zip);
  for (const e of entries) {
    const target = path.resolve(dest, e.name);
    if (!target.startsWith(path.resolve(dest) + path.sep))
      throw new Error(`${e.name}: escapes ${dest}`);
    if (e.name.endsWith('/')) {
      fs.mkdirSync(target, { recursive: true });
      continue;
    }
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, entryData(zip, e));
    fs.chmodSync(target, e.mode & 0o7777 || 0o644);
  }
  return entries;
}
