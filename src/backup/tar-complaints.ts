/**
 * GNU tar's complaints on stderr during a create, sorted as they come: sockets
 * it ignored (left out of the backup), media that changed or vanished while it
 * read them (a live server: accepted, listed as warnings), and everything else
 * (a real failure). Bounded: the lists keep LISTED_LIMIT items and a count, and
 * of the other lines only the last few, for the error message.
 */
import type { Readable } from 'node:stream';
import { BoundedList, type EntryWarning, type SkippedEntry, type WarningKind } from './notes';

/** Longer lines are cut here (a name is at most 4096 bytes, quoted up to 4 times that). */
const MAX_LINE_BYTES = 20 * 1024;
/** Other lines kept for the error message. */
const OTHER_LINES_KEPT = 8;

/** tar's diagnostic suffixes (GNU tar 1.34, C locale) and what they mean for a media path. */
const MEDIA_COMPLAINTS: [suffix: string, kind: WarningKind][] = [
  [': file changed as we read it', 'changed'],
  [': File removed before we read it', 'removed'],
  // A name tar was given (not found by recursion) that vanished before it got there.
  [': Cannot stat: No such file or directory', 'removed'],
  [': Cannot open: No such file or directory', 'removed'],
];
const SOCKET_IGNORED = ': socket ignored';
/** tar's closing line after errors: says nothing of its own. */
const EXIT_NOTE = /^tar: Exiting with failure status due to previous errors$/;

export class TarComplaints {
  /** Sockets tar ignored: never in the archive. */
  readonly sockets = new BoundedList<SkippedEntry>();
  /** Media paths under `mediaRoots` that changed or vanished while tar read them. */
  readonly warnings = new BoundedList<EntryWarning>();
  /** Lines that are neither (tar's real errors, the snapshot's), counted. */
  otherCount = 0;
  private readonly otherTail: string[] = [];
  private partial: Buffer[] = [];
  private partialBytes = 0;

  /**
   * `stream` is the create script's stderr; `mediaRoots` are the selection's
   * media directories relative to the data dir (tar runs there), e.g.
   * `media_store/local_content`: complaints about paths at or below one are media's.
   */
  constructor(
    stream: Readable,
    private readonly mediaRoots: readonly string[],
  ) {
    stream.on('data', (chunk: Buffer) => this.add(chunk));
    stream.on('end', () => this.flushLine());
    stream.on('error', () => undefined);
  }

  /** True when tar complained of nothing but media that changed or vanished (and sockets). */
  get onlyMediaChanged(): boolean {
    this.flushLine();
    return this.otherCount === 0 && this.warnings.count > 0;
  }

  /** The last lines that were no media complaint, for an error message. */
  otherText(): string {
    this.flushLine();
    return this.otherTail.join('\n');
  }

  /** Sorts one line of stderr (without its newline). */
  classify(line: string): void {
    if (line === '' || EXIT_NOTE.test(line)) return;
    if (line.startsWith('tar: ') && line.endsWith(SOCKET_IGNORED)) {
      const path = unquote(line.slice(5, -SOCKET_IGNORED.length));
      this.sockets.add({ path, kind: 'socket' });
      return;
    }
    for (const [suffix, kind] of MEDIA_COMPLAINTS) {
      if (!line.startsWith('tar: ') || !line.endsWith(suffix)) continue;
      const path = unquote(line.slice(5, -suffix.length)).replace(/^(\.\/+)+/, '');
      if (this.isMedia(path)) {
        this.warnings.add({ path, kind });
        return;
      }
    }
    this.otherCount += 1;
    this.otherTail.push(line);
    if (this.otherTail.length > OTHER_LINES_KEPT) this.otherTail.shift();
  }

  private isMedia(path: string): boolean {
    const clean = path.replace(/\/+$/, '');
    return this.mediaRoots.some((root) => clean === root || clean.startsWith(`${root}/`));
  }

  private add(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
      this.keep(chunk.subarray(start, nl));
      this.flushLine();
      start = nl + 1;
    }
    this.keep(chunk.subarray(start));
  }

  /** Adds to the line being read, up to MAX_LINE_BYTES (the rest of a longer line is dropped). */
  private keep(part: Buffer): void {
    const room = MAX_LINE_BYTES - this.partialBytes;
    if (room <= 0 || part.length === 0) return;
    const taken = part.length > room ? part.subarray(0, room) : part;
    this.partial.push(Buffer.from(taken));
    this.partialBytes += taken.length;
  }

  private flushLine(): void {
    if (this.partial.length === 0) return;
    const line = Buffer.concat(this.partial).toString('utf8');
    this.partial = [];
    this.partialBytes = 0;
    this.classify(line);
  }
}

/**
 * A name as GNU tar quotes it in diagnostics (its default "escape" style: C
 * escapes such as `\n`, `\\` and `\ooo` octal bytes), back to the name.
 */
export function unquote(quoted: string): string {
  if (!quoted.includes('\\')) return quoted;
  const bytes: number[] = [];
  const raw = Buffer.from(quoted, 'utf8');
  const simple: Record<string, number> = { n: 10, t: 9, r: 13, f: 12, v: 11, b: 8, a: 7, '\\': 92 };
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] !== 0x5c || i + 1 >= raw.length) {
      bytes.push(raw[i]);
      continue;
    }
    const next = String.fromCharCode(raw[i + 1]);
    const octal = /^[0-7]{3}$/.exec(raw.subarray(i + 1, i + 4).toString('latin1'));
    if (octal) {
      bytes.push(parseInt(octal[0], 8) & 0xff);
      i += 3;
    } else if (next in simple) {
      bytes.push(simple[next]);
      i += 1;
    } else {
      bytes.push(raw[i]);
    }
  }
  return Buffer.from(bytes).toString('utf8');
}
