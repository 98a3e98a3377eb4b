import { Transform, type TransformCallback } from 'node:stream';
import {
  ArchiveRejectedError,
  BLOCK,
  type EntryPolicy,
  MAX_META_BYTES,
  MAX_NAME_BYTES,
  MAX_PENDING_META_BYTES,
  type TarEntry,
  cString,
  display,
  forgetChecksumView,
  entryType,
  parseNumber,
  SPARSE_PREFIX,
  parsePax,
  verifyChecksum,
} from './header';
import { BoundedList, type SkippedEntry, reportedPath } from '../notes';

/** The end-of-archive marker is two of these. */
const ZERO_BLOCK = Buffer.alloc(BLOCK);
/** The pax records the scanner reads (a global header's are refused; GNU.sparse ones too). */
const PAX_KEYS_READ: ReadonlySet<string> = new Set(['path', 'linkpath', 'size']);
/** Whether the header at `base` has POSIX ustar's magic "ustar\0" (bytes 257-262); GNU's is "ustar  ". */
function isUstar(block: Buffer, base: number): boolean {
  return (
    block[base + 257] === 0x75 &&
    block[base + 258] === 0x73 &&
    block[base + 259] === 0x74 &&
    block[base + 260] === 0x61 &&
    block[base + 261] === 0x72 &&
    block[base + 262] === 0
  );
}

/**
 * A pass-through that parses tar headers as the bytes flow (ustar, GNU long
 * names, pax), counts entries and lets each header through only after the
 * policy accepted it, so a rejected entry never reaches the extracting tar:
 * the bytes of an entry's headers (its pax and GNU long-name records too) are
 * held back until the entry is accepted, even when they span chunks, and
 * dropped when the policy leaves it out (create's: the archive stored then
 * never holds it, and the counts and SHA-256 describe what is stored).
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
  /** Entries the policy left out (create's: FIFOs, device nodes), whose headers were dropped. */
  readonly skipped = new BoundedList<SkippedEntry>();
  private header = Buffer.alloc(BLOCK);
  private headerFill = 0;
  /** Bytes of entry data (plus padding) still to pass before the next header. */
  private skip = 0;
  /** Collects pax / GNU long-name payloads. */
  private meta: { kind: string; size: number; chunks: Buffer[]; fill: number } | null = null;
  private metaPadding = 0;
  private pax: Record<string, string> = {};
  private globalPax: Record<string, string> | null = null;
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
    let parts: Buffer[];
    try {
      parts = this.scan(chunk);
    } catch (err) {
      this.held = [];
      done(err as Error);
      return;
    }
    // Each part as it is: joining them would copy every chunk that released held bytes.
    for (const part of parts) this.push(part);
    done();
  }

  override _destroy(err: Error | null, done: (error: Error | null) => void): void {
    forgetChecksumView();
    done(err);
  }

  override _flush(done: TransformCallback): void {
    forgetChecksumView();
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

  /**
   * Parses `chunk`; returns the parts of it (after what `holding` kept back of
   * earlier chunks, once released) that pass. An entry the policy leaves out
   * loses its headers (pax and long-name records too); such entries have no data.
   */
  private scan(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    /** Start of this chunk's bytes not yet passed or dropped. */
    let from = 0;
    /** Where this entry's headers begin in this chunk (0: in an earlier one). */
    let holdStart = 0;
    let pos = 0;
    while (pos < chunk.length) {
      if (this.ended) {
        for (let i = pos; i < chunk.length; i++) {
          if (chunk[i] !== 0) {
            throw new ArchiveRejectedError(
              `the archive has data after its end-of-archive marker (offset ${this.offset + i - pos})`,
            );
          }
        }
        this.offset += chunk.length - pos;
        break;
      }
      if (this.meta) {
        const take = this.takeMeta(this.meta, chunk, pos);
        pos += take;
        this.offset += take;
        continue;
      }
      if (this.skip > 0) {
        const take = Math.min(this.skip, chunk.length - pos);
        this.skip -= take;
        pos += take;
        this.offset += take;
        continue;
      }
      if (!this.holding) {
        this.holding = true;
        holdStart = pos;
      }
      let block: Buffer = this.header;
      let base = 0;
      if (this.headerFill === 0 && chunk.length - pos >= BLOCK) {
        // The whole header is in this chunk: read it where it is.
        block = chunk;
        base = pos;
        pos += BLOCK;
        this.offset += BLOCK;
      } else {
        const take = Math.min(BLOCK - this.headerFill, chunk.length - pos);
        chunk.copy(this.header, this.headerFill, pos, pos + take);
        this.headerFill += take;
        pos += take;
        this.offset += take;
        if (this.headerFill < BLOCK) continue;
        this.headerFill = 0;
      }
      const outcome = this.onHeader(block, base);
      if (outcome === 'passed') {
        // What earlier chunks held goes first; this chunk's bytes follow from `from`.
        out.push(...this.held);
        this.held = [];
      } else if (outcome === 'dropped') {
        this.held = [];
        if (holdStart > from) out.push(chunk.subarray(from, holdStart));
        from = pos;
      }
    }
    if (this.holding) {
      if (holdStart > from) out.push(chunk.subarray(from, holdStart));
      // Streams hand each chunk over for good: a view of it is enough.
      this.held.push(chunk.subarray(Math.max(from, holdStart)));
    } else if (from < chunk.length) {
      out.push(from === 0 ? chunk : chunk.subarray(from));
    }
    return out;
  }

  /**
   * Parses one header block (the 512 bytes of `block` from `base`): its entry passes,
   * is dropped (left out), or is still held.
   */
  private onHeader(block: Buffer, base: number): 'passed' | 'dropped' | 'held' {
    // A block whose first byte is not NUL is no zero block: one byte decides for most headers.
    if (block[base] === 0 && block.compare(ZERO_BLOCK, 0, BLOCK, base, base + BLOCK) === 0) {
      this.ended = true;
      this.holding = false;
      return 'passed';
    }
    verifyChecksum(block, this.offset - BLOCK, base);
    const flag = block[base + 156];
    const typeflag = flag === 0 ? '0' : String.fromCharCode(flag);
    const size = parseNumber(block, 'size', this.offset - BLOCK, base + 124, base + 136);
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
      if (size === 0) this.finishHeldMeta();
      return 'held';
    }
    const entry = this.buildEntry(block, base, typeflag);
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
    const leftOut = this.policy?.(entry);
    this.holding = false;
    this.pendingMetaBytes = 0;
    if (leftOut) {
      // Only entries without data are left out: nothing follows the header.
      this.skipped.add({ path: reportedPath(entry.name), kind: leftOut });
      return 'dropped';
    }
    this.entries += 1;
    if (entry.type === 'file') {
      this.files += 1;
      this.contentBytes += dataSize;
    }
    this.skip = Math.ceil(dataSize / BLOCK) * BLOCK;
    return 'passed';
  }

  /** Takes what `chunk` holds of the metadata record being read from `pos`; returns how many bytes. */
  private takeMeta(meta: NonNullable<TarScanner['meta']>, chunk: Buffer, pos: number): number {
    if (meta.fill === 0 && chunk.length - pos >= meta.size) {
      // The whole record is in this chunk (nearly always): parse it where it is.
      this.finishMeta(chunk, pos, pos + meta.size);
      return meta.size;
    }
    const take = Math.min(meta.size - meta.fill, chunk.length - pos);
    meta.chunks.push(chunk.subarray(pos, pos + take));
    meta.fill += take;
    if (meta.fill === meta.size) this.finishHeldMeta();
    return take;
  }

  /** Ends a metadata record collected over several chunks (or an empty one). */
  private finishHeldMeta(): void {
    const chunks = this.meta?.chunks ?? [];
    const data = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    this.finishMeta(data, 0, data.length);
  }

  /** Reads the current metadata record: bytes `start` to `end` of `data`. */
  private finishMeta(data: Buffer, start: number, end: number): void {
    const meta = this.meta;
    if (!meta) return;
    this.meta = null;
    this.skip = this.metaPadding;
    if (meta.kind === 'L' || meta.kind === 'K') {
      const nul = data.indexOf(0, start);
      const value = data.toString('latin1', start, nul === -1 || nul > end ? end : nul);
      if (meta.kind === 'L') this.longName = value;
      else this.longLink = value;
      return;
    }
    const records = parsePax(data, PAX_KEYS_READ, start, end);
    for (const key in records) {
      if (key.startsWith(SPARSE_PREFIX)) {
        throw new ArchiveRejectedError('the archive contains sparse files, which restore refuses');
      }
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
      // Most archives have no global header: then an entry's records are its own.
      this.pax = this.globalPax ? { ...this.globalPax, ...records } : records;
    }
  }

  private buildEntry(block: Buffer, base: number, typeflag: string): TarEntry {
    let name = cString(block, base, base + 100);
    // Only POSIX ustar has a prefix field; GNU keeps other data there.
    if (isUstar(block, base)) {
      const prefix = cString(block, base + 345, base + 500);
      if (prefix) name = `${prefix}/${name}`;
    }
    if (this.longName !== null) name = this.longName;
    if (this.pax.path !== undefined) name = Buffer.from(this.pax.path, 'utf8').toString('latin1');
    let linkname = cString(block, base + 157, base + 257);
    if (this.longLink !== null) linkname = this.longLink;
    if (this.pax.linkpath !== undefined) {
      linkname = Buffer.from(this.pax.linkpath, 'utf8').toString('latin1');
    }
    return { name, linkname, typeflag, type: entryType(typeflag), size: 0 };
  }
}
