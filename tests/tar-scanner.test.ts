import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  ArchiveRejectedError,
  TarScanner,
  confinedEntryPolicy,
  createEntryPolicy,
} from '../src/backup/tar';
import { parseNumber, parsePax, verifyChecksum } from '../src/backup/tar/header';
import { buildTar } from './support/backups';
import { tmpDir } from './support/peers';

// ---------------------------------------------------------------- a tiny tar writer

const BLOCK = 512;
const END = Buffer.alloc(2 * BLOCK);

interface HeaderFields {
  name: string | Buffer;
  /** Type flag: '0' file, '1' hard link, '2' symlink, '5' directory, '6' FIFO, 'x', 'g', 'L'... */
  type?: string;
  size?: number;
  linkname?: string;
  mode?: number;
  /** 'ustar' (POSIX), 'gnu' (GNU's "ustar  ") or 'v7' (none). */
  magic?: 'ustar' | 'gnu' | 'v7';
  prefix?: string;
  /** Stored instead of the right checksum. */
  checksum?: number;
}

/** One 512-byte header with a correct checksum unless told otherwise. */
function header(f: HeaderFields): Buffer {
  const b = Buffer.alloc(BLOCK);
  const put = (text: string | Buffer, at: number, len: number) => {
    const bytes = typeof text === 'string' ? Buffer.from(text, 'utf8') : text;
    if (bytes.length > len) throw new Error(`${bytes.length} bytes do not fit in ${len}`);
    bytes.copy(b, at);
  };
  const num = (n: number, at: number, len: number) =>
    put(`${n.toString(8).padStart(len - 1, '0')}\0`, at, len);
  put(f.name, 0, 100);
  num(f.mode ?? (f.type === '5' ? 0o755 : 0o644), 100, 8);
  num(0, 108, 8);
  num(0, 116, 8);
  num(f.size ?? 0, 124, 12);
  num(1_700_000_000, 136, 12);
  put(f.type ?? '0', 156, 1);
  put(f.linkname ?? '', 157, 100);
  const magic = f.magic ?? 'ustar';
  if (magic === 'ustar') put('ustar\x0000', 257, 8);
  if (magic === 'gnu') put('ustar  \0', 257, 8);
  if (f.prefix) put(f.prefix, 345, 155);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  put(`${(f.checksum ?? sum).toString(8).padStart(6, '0')}\0 `, 148, 8);
  return b;
}

function padded(data: Buffer): Buffer {
  const rest = data.length % BLOCK;
  return rest === 0 ? data : Buffer.concat([data, Buffer.alloc(BLOCK - rest)]);
}

/** A regular file: header plus padded content. */
function file(name: string, content = '', extra: Partial<HeaderFields> = {}): Buffer {
  const data = Buffer.from(content);
  return Buffer.concat([header({ name, size: data.length, ...extra }), padded(data)]);
}

/** pax records, each "<length> <key>=<value>\n" with the length counting itself. */
function paxData(records: [string, string][]): Buffer {
  return Buffer.concat(
    records.map(([key, value]) => {
      const body = Buffer.from(` ${key}=${value}\n`, 'utf8');
      let length = body.length + 1;
      while (String(length).length + body.length !== length) {
        length = String(length).length + body.length;
      }
      return Buffer.concat([Buffer.from(String(length)), body]);
    }),
  );
}

/** A pax extended ('x') or global ('g') header; `raw` replaces the records. */
function pax(records: [string, string][], type: 'x' | 'g' = 'x', raw?: Buffer): Buffer {
  const data = raw ?? paxData(records);
  return Buffer.concat([
    header({ name: 'PaxHeaders/entry', type, size: data.length }),
    padded(data),
  ]);
}

/** A GNU long name ('L') or long link ('K') record. */
function gnuLong(type: 'L' | 'K', value: string): Buffer {
  const data = Buffer.from(`${value}\0`, 'utf8');
  return Buffer.concat([
    header({ name: '././@LongLink', type, size: data.length, magic: 'gnu' }),
    padded(data),
  ]);
}

// ---------------------------------------------------------------- driving the scanner

interface ScanResult {
  scanner: TarScanner;
  /** Every byte the scanner handed downstream, in order. */
  emitted: Buffer;
  error?: Error;
}

/** Cuts `input` into chunks of the given sizes, cycling through them. */
function cut(input: Buffer, sizes: number[]): Buffer[] {
  const chunks: Buffer[] = [];
  let pos = 0;
  for (let i = 0; pos < input.length; i++) {
    const size = sizes[i % sizes.length];
    chunks.push(input.subarray(pos, pos + size));
    pos += size;
  }
  return chunks;
}

/** A small deterministic PRNG (mulberry32), so that a failure can be replayed. */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomSizes(seed: number, count = 200): number[] {
  const next = random(seed);
  const menu = [1, 2, 100, 511, 512, 513, 1023, 1024, 4096, 65536];
  return Array.from({ length: count }, () =>
    next() < 0.6 ? menu[Math.floor(next() * menu.length)] : 1 + Math.floor(next() * 70_000),
  );
}

const CHUNKINGS: [string, number[]][] = [
  ['whole', [Number.MAX_SAFE_INTEGER]],
  ['1-byte', [1]],
  ['511-byte', [511]],
  ['512-byte', [512]],
  ['513-byte', [513]],
  ['64 KiB', [65536]],
  ['random (seed 1)', randomSizes(1)],
  ['random (seed 2)', randomSizes(2)],
];

async function scan(
  chunks: Buffer[],
  scanner = new TarScanner(confinedEntryPolicy()),
): Promise<ScanResult> {
  const emitted: Buffer[] = [];
  // Spy on push: what the scanner hands on, whether or not a teardown drops it later.
  const push = scanner.push.bind(scanner);
  scanner.push = (chunk: unknown, encoding?: BufferEncoding) => {
    if (Buffer.isBuffer(chunk)) emitted.push(Buffer.from(chunk));
    return push(chunk, encoding);
  };
  const sink = new Writable({ write: (_chunk, _enc, done) => done() });
  let error: Error | undefined;
  try {
    await pipeline(Readable.from(chunks), scanner, sink);
  } catch (err) {
    error = err as Error;
  }
  return { scanner, emitted: Buffer.concat(emitted), error };
}

/** Offset where the chunk holding byte `offset` starts. */
function chunkStartOf(chunks: Buffer[], offset: number): number {
  let start = 0;
  for (const chunk of chunks) {
    if (offset < start + chunk.length) return start;
    start += chunk.length;
  }
  return start;
}

// ---------------------------------------------------------------- archives from real tar writers

/** What a tree holds, counted the way a tar of it has it: hard links count once. */
interface TreeCounts {
  entries: number;
  files: number;
  contentBytes: number;
}

async function countTree(root: string): Promise<TreeCounts> {
  const seen = new Set<string>();
  const counts: TreeCounts = { entries: 0, files: 0, contentBytes: 0 };
  const walk = async (p: string) => {
    const st = await fsp.lstat(p);
    counts.entries += 1;
    if (st.isFile() && !seen.has(`${st.dev}:${st.ino}`)) {
      seen.add(`${st.dev}:${st.ino}`);
      counts.files += 1;
      counts.contentBytes += st.size;
    }
    if (st.isDirectory()) {
      for (const name of await fsp.readdir(p)) await walk(path.join(p, name));
    }
  };
  await walk(root);
  return counts;
}

/**
 * A tree with the awkward cases. `ustar` leaves out what that format cannot
 * hold (GNU tar would skip it with an error): names longer than 255 bytes or
 * not splittable at a slash, and link targets over 100 bytes.
 */
async function makeTree(root: string, ustar: boolean): Promise<void> {
  const w = (rel: string, data: string | Buffer) => fsp.writeFile(path.join(root, rel), data);
  await fsp.mkdir(path.join(root, 'dir', 'sub', 'empty-dir'), { recursive: true });
  await w('short.txt', 'hello\n');
  await w('empty', '');
  await w('exact-512', Buffer.alloc(512, 0x61));
  await w('exact-1536', Buffer.alloc(1536, 0x62));
  await w('big.bin', Buffer.from(Array.from({ length: 70_001 }, (_, i) => (i * 7919) % 251)));
  await w('ünïcødé-日本語.txt', 'non-ASCII name\n');
  await w('new\nline', 'a newline in the name\n');
  await fsp.link(path.join(root, 'short.txt'), path.join(root, 'dir', 'hard-link'));
  // 5 + 90 + 1 + 64 bytes: over 100, but ustar's prefix field can hold the directory part.
  const mid = path.join('d'.repeat(90), `${'m'.repeat(60)}.txt`);
  await fsp.mkdir(path.join(root, 'd'.repeat(90)));
  await w(mid, 'a name over 100 bytes\n');
  await fsp.symlink('short.txt', path.join(root, 'dir', 'dangling-link'));
  if (!ustar) {
    await w(`${'n'.repeat(150)}.txt`, 'one 154-byte component\n');
    const deep = path.join('a'.repeat(200), 'b'.repeat(200));
    await fsp.mkdir(path.join(root, deep), { recursive: true });
    await w(path.join(deep, 'c'.repeat(100)), 'a name over 500 bytes\n');
    // A relative target of 500 bytes, inside the tree.
    await fsp.symlink(path.join(deep, 'c'.repeat(100)), path.join(root, 'long-target-link'));
  }
}

function runTar(format: 'posix' | 'gnu' | 'ustar', parent: string): Buffer {
  const result = spawnSync('tar', [`--format=${format}`, '-c', '-f', '-', '-C', parent, 'tree'], {
    env: { ...process.env, LC_ALL: 'C.UTF-8' },
    maxBuffer: 64 * 1024 * 1024,
  });
  if (result.status !== 0) {
    throw new Error(`tar --format=${format} failed (${result.status}): ${result.stderr}`);
  }
  return result.stdout;
}

function runPythonTarfile(parent: string): Buffer {
  const script = [
    'import sys, tarfile',
    'with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:',
    '    assert tar.format == tarfile.PAX_FORMAT',
    '    tar.add(sys.argv[1], arcname="tree")',
  ].join('\n');
  const result = spawnSync('python3', ['-c', script, path.join(parent, 'tree')], {
    maxBuffer: 64 * 1024 * 1024,
  });
  if (result.status !== 0) throw new Error(`python3 tarfile failed: ${result.stderr}`);
  return result.stdout;
}

describe('TarScanner over archives from real tar writers', () => {
  const writers: [string, boolean, (parent: string) => Buffer][] = [
    ['GNU tar --format=posix', false, (p) => runTar('posix', p)],
    ['GNU tar --format=gnu', false, (p) => runTar('gnu', p)],
    ['GNU tar --format=ustar', true, (p) => runTar('ustar', p)],
    ["Python's tarfile (pax)", false, runPythonTarfile],
  ];

  test.each(writers)(
    '%s: accepted whole in any chunking, counted right, passed through unchanged',
    async (_name, ustar, write) => {
      const dir = await tmpDir('tar-scanner');
      try {
        const root = path.join(dir.path, 'tree');
        await fsp.mkdir(root);
        await makeTree(root, ustar);
        const expected = await countTree(root);
        const archive = write(dir.path);
        for (const [label, sizes] of CHUNKINGS) {
          const { scanner, emitted, error } = await scan(cut(archive, sizes));
          const got = {
            chunking: label,
            error: error?.message,
            entries: scanner.entries,
            files: scanner.files,
            contentBytes: scanner.contentBytes,
            complete: scanner.complete,
            identical: emitted.equals(archive),
          };
          expect(got).toEqual({
            chunking: label,
            error: undefined,
            ...expected,
            complete: true,
            identical: true,
          });
        }
      } finally {
        await dir.cleanup();
      }
    },
  );

  test('GNU tar and the scanner agree on the awkward names (they reach the policy intact)', async () => {
    const dir = await tmpDir('tar-scanner');
    try {
      const root = path.join(dir.path, 'tree');
      await fsp.mkdir(root);
      await makeTree(root, false);
      for (const format of ['posix', 'gnu'] as const) {
        const names: string[] = [];
        const links: string[] = [];
        const policy = confinedEntryPolicy();
        const scanner = new TarScanner((entry) => {
          names.push(Buffer.from(entry.name, 'latin1').toString('utf8'));
          if (entry.type === 'symlink') links.push(entry.linkname);
          policy(entry);
        });
        const { error } = await scan([runTar(format, dir.path)], scanner);
        expect(error).toBeUndefined();
        expect(names).toEqual(
          expect.arrayContaining([
            'tree/ünïcødé-日本語.txt',
            'tree/new\nline',
            `tree/${'n'.repeat(150)}.txt`,
            `tree/${'a'.repeat(200)}/${'b'.repeat(200)}/${'c'.repeat(100)}`,
          ]),
        );
        expect(links).toContain(`${'a'.repeat(200)}/${'b'.repeat(200)}/${'c'.repeat(100)}`);
      }
    } finally {
      await dir.cleanup();
    }
  });
});

// ---------------------------------------------------------------- hostile and invalid archives

interface HostileCase {
  archive: Buffer;
  /** Where each earlier entry starts: its first 512 bytes are its header. */
  entryStarts: number[];
  /** Where the refused entry's first header (pax / long-name records included) starts. */
  refusedAt: number;
  /** The byte whose arrival makes the scanner refuse (the end of the block or record that does). */
  trigger: number;
  message: RegExp;
}

/**
 * Builds archive = before + refused + after, locating the refused part. Each
 * buffer of `before` is one entry whose header is its first 512 bytes (or the
 * end-of-archive marker).
 */
function hostile(
  before: Buffer[],
  refused: Buffer[],
  message: RegExp,
  options: { after?: Buffer[]; trigger?: number } = {},
): HostileCase {
  const head = Buffer.concat(before);
  const bad = Buffer.concat(refused);
  const entryStarts: number[] = [];
  before.reduce((start, part) => (entryStarts.push(start), start + part.length), 0);
  return {
    archive: Buffer.concat([head, bad, ...(options.after ?? [END])]),
    entryStarts,
    refusedAt: head.length,
    // By default the last header of the refused part decides: its last byte.
    trigger: head.length + (options.trigger ?? bad.length) - 1,
    message,
  };
}

/** A pax header's record bytes end `data.length` after its header block: the decisive byte. */
function paxTrigger(records: Buffer): number {
  return BLOCK + records.length;
}

const okFiles = [file('ok/one.txt', 'one\n'), file('ok/two.bin', 'x'.repeat(1500))];

const sparseRecords = paxData([
  ['GNU.sparse.major', '1'],
  ['GNU.sparse.minor', '0'],
  ['GNU.sparse.name', 'sparse.img'],
  ['GNU.sparse.realsize', '1048576'],
]);
const globalPathRecords = paxData([['path', 'renamed']]);
const globalSizeRecords = paxData([['size', '512']]);
const badSizeRecords = paxData([['size', ' 512']]);
const noNewline = Buffer.from('13 size=5120X');
const blankKeyword = Buffer.from('13  size=512\n');

/** pax headers one after the other, never an entry: the scanner holds 4 MiB of them at most. */
function endlessPax(): HostileCase {
  const one = pax([['comment', 'c'.repeat(600_000)]]);
  const refusedOne = Math.floor((4 * 1024 * 1024) / one.length) + 1;
  return hostile(okFiles, Array<Buffer>(refusedOne + 2).fill(one), /metadata headers/, {
    trigger: (refusedOne - 1) * one.length + BLOCK,
  });
}

const HOSTILE: [string, HostileCase][] = [
  [
    'a header with a bad checksum',
    hostile(okFiles, [header({ name: 'bad', checksum: 1234 })], /checksum/),
  ],
  [
    'a 100,000-character name in a pax path',
    hostile(
      okFiles,
      [pax([['path', `deep/${'n'.repeat(100_000)}`]]), header({ name: 'short' })],
      /longer than 4096 bytes/,
    ),
  ],
  [
    'a GNU.sparse pax header',
    hostile(okFiles, [pax([], 'x', sparseRecords), header({ name: 'sparse.img' })], /sparse/, {
      trigger: paxTrigger(sparseRecords),
    }),
  ],
  [
    'a global pax header that renames',
    hostile(okFiles, [pax([], 'g', globalPathRecords), file('f')], /global header/, {
      trigger: paxTrigger(globalPathRecords),
    }),
  ],
  [
    // GNU tar applies a global size to every later entry: it would read "ok" as data of
    // "f" and extract the symlink the scanner saw as data of "ok".
    'a global pax size that shifts GNU tar off the scanner',
    hostile(
      okFiles,
      [
        pax([], 'g', globalSizeRecords),
        header({ name: 'f' }),
        header({ name: 'ok', size: 512 }),
        header({ name: 'esc', type: '2', linkname: '/etc' }),
      ],
      /global header/,
      { trigger: paxTrigger(globalSizeRecords) },
    ),
  ],
  [
    // GNU tar ignores "size= 512" (and uses the header's 0); Number(' 512') is 512.
    'a pax size GNU tar ignores',
    hostile(okFiles, [pax([], 'x', badSizeRecords), header({ name: 'f' })], /invalid size/, {
      after: [header({ name: 'esc', type: '2', linkname: '/etc' }), END],
    }),
  ],
  [
    'a pax record without its newline',
    hostile(okFiles, [pax([], 'x', noNewline), header({ name: 'f' })], /malformed pax/, {
      trigger: paxTrigger(noNewline),
    }),
  ],
  [
    'a pax keyword after two blanks (GNU tar skips them)',
    hostile(okFiles, [pax([], 'x', blankKeyword), header({ name: 'f' })], /malformed pax/, {
      trigger: paxTrigger(blankKeyword),
    }),
  ],
  [
    // GNU tar skips a symlink's size when listing but not when extracting.
    'a symlink with data',
    hostile(
      okFiles,
      [header({ name: 'link', type: '2', linkname: 'ok', size: 512 })],
      /symlink with 512 bytes/,
      { after: [header({ name: 'hidden' }), END] },
    ),
  ],
  ['a FIFO', hostile(okFiles, [header({ name: 'ok/fifo', type: '6' })], /FIFO/)],
  ['a character device', hostile(okFiles, [header({ name: 'ok/null', type: '3' })], /device node/)],
  [
    'a/../../b in a pax path',
    hostile(okFiles, [pax([['path', 'a/../../b']]), file('harmless', 'x')], /contains "\.\."/, {
      trigger: 2 * BLOCK + BLOCK,
    }),
  ],
  [
    'a GNU long name of ../x',
    hostile(okFiles, [gnuLong('L', '../x'), file('harmless', 'x', { magic: 'gnu' })], /"\.\."/, {
      trigger: 3 * BLOCK,
    }),
  ],
  [
    'an absolute ustar name',
    hostile(okFiles, [file('/etc/cron.d/x', 'x')], /absolute path/, { trigger: BLOCK }),
  ],
  [
    'an absolute name in the ustar prefix',
    hostile(okFiles, [file('passwd', 'x', { prefix: '/etc' })], /absolute path/, {
      trigger: BLOCK,
    }),
  ],
  [
    'a symlink out of the tree',
    hostile(okFiles, [header({ name: 'ok/up', type: '2', linkname: '../../x' })], /outside/),
  ],
  [
    'a symlink to an absolute path',
    hostile(okFiles, [header({ name: 'etc', type: '2', linkname: '/etc' })], /absolute path/),
  ],
  [
    // d/s -> .. is the root; x -> d/s/.. is "d" read lexically but the root's parent on disk.
    'a symlink that climbs through another symlink',
    hostile(
      [
        ...okFiles,
        header({ name: 'd/', type: '5' }),
        header({ name: 'd/s', type: '2', linkname: '..' }),
      ],
      [header({ name: 'x', type: '2', linkname: 'd/s/..' })],
      /after a directory name/,
    ),
  ],
  [
    'a file under a symlink',
    hostile(
      [...okFiles, header({ name: 's', type: '2', linkname: 'ok' })],
      [file('s/one.txt', 'overwritten through the link')],
      /which the archive made a symlink/,
      { trigger: BLOCK },
    ),
  ],
  [
    'a hard link under a symlink',
    hostile(
      [...okFiles, header({ name: 's', type: '2', linkname: 'ok' })],
      [header({ name: 's/new', type: '1', linkname: 'ok/one.txt' })],
      /which the archive made a symlink/,
    ),
  ],
  [
    'a hard link whose target runs through a symlink',
    hostile(
      [...okFiles, header({ name: 's', type: '2', linkname: 'ok' })],
      [header({ name: 'h', type: '1', linkname: 's/one.txt' })],
      /not a file earlier in the archive/,
    ),
  ],
  [
    'a hard link to a symlink',
    hostile(
      [...okFiles, header({ name: 's', type: '2', linkname: 'ok/one.txt' })],
      [header({ name: 'h', type: '1', linkname: 's' })],
      /not a file earlier in the archive/,
    ),
  ],
  [
    'a hard link to a file not in the archive',
    hostile(okFiles, [header({ name: 'h', type: '1', linkname: 'etc-shadow' })], /not a file/),
  ],
  [
    // GNU tar replaces the symlink with a directory, but an extractor that keeps directory
    // symlinks (busybox, --keep-directory-symlink) would write through it: refused either way.
    'a symlink replaced by a directory, then a file inside',
    hostile(
      [
        ...okFiles,
        header({ name: 's', type: '2', linkname: 'ok' }),
        header({ name: 's/', type: '5' }),
      ],
      [file('s/f', 'x')],
      /which the archive made a symlink/,
      { trigger: BLOCK },
    ),
  ],
  ['endless pax headers (held back, so bounded)', endlessPax()],
  [
    'data after the end-of-archive marker',
    hostile([...okFiles, END], [Buffer.from('trailing garbage')], /after its end-of-archive/, {
      after: [],
      trigger: 1,
    }),
  ],
];

/**
 * How much of the archive may have passed when the chunk at `chunkStart` brought
 * the refusal: everything before it, but a header (of an accepted entry) that
 * chunk completed was still held back, and nothing of the refused entry passes.
 */
function releasedBefore(c: HostileCase, chunkStart: number): number {
  if (chunkStart >= c.refusedAt) return c.refusedAt;
  const cutHeader = c.entryStarts.find((s) => s < chunkStart && chunkStart < s + BLOCK);
  return cutHeader ?? chunkStart;
}

describe('TarScanner with confinedEntryPolicy refuses hostile archives', () => {
  test.each(HOSTILE)(
    '%s: refused, and nothing from the refused entry on reaches downstream',
    async (_name, c) => {
      // Sanity of the case: the refused part comes after complete, valid entries.
      expect(c.refusedAt % BLOCK).toBe(0);
      expect(c.trigger).toBeGreaterThanOrEqual(c.refusedAt);
      expect(c.trigger).toBeLessThan(c.archive.length);
      for (const [label, sizes] of [...CHUNKINGS, ['7-byte', [7]] as [string, number[]]]) {
        if (c.archive.length / sizes[0] > 100_000) continue;
        const chunks = cut(c.archive, sizes);
        const { emitted, error } = await scan(chunks);
        expect({ label, error }).toEqual({ label, error: expect.any(ArchiveRejectedError) });
        expect(error?.message).toMatch(c.message);
        expect((error as ArchiveRejectedError).code).toBe('archive-rejected');
        // Passed on: a prefix of the archive that ends before the refused entry's headers
        // and before the chunk that held the deciding byte: exactly the earlier entries
        // whose headers had arrived whole in earlier chunks.
        const expectedLength = releasedBefore(c, chunkStartOf(chunks, c.trigger));
        expect({ label, emitted: emitted.length }).toEqual({ label, emitted: expectedLength });
        expect(emitted.equals(c.archive.subarray(0, expectedLength))).toBe(true);
      }
    },
  );

  test('the layout tricks are real: GNU tar lists the symlink that hides from a naive reader', () => {
    const byName = new Map(HOSTILE);
    for (const name of [
      'a global pax size that shifts GNU tar off the scanner',
      'a pax size GNU tar ignores',
    ]) {
      const listing = spawnSync('tar', ['-t', '-v', '-f', '-'], {
        input: byName.get(name)?.archive,
      });
      expect({ name, listing: listing.stdout.toString() }).toEqual({
        name,
        listing: expect.stringMatching(/ esc -> \/etc\n/),
      });
    }
  });

  test('the refused header gates wherever the chunks split it (every split point)', async () => {
    const before = Buffer.concat([...okFiles, file('ok/three', 'y'.repeat(700))]);
    const refused = Buffer.concat([pax([['path', 'ok/../../escape']]), file('x', 'z')]);
    const archive = Buffer.concat([before, refused, END]);
    const trigger = before.length + 3 * BLOCK - 1; // the last byte of the ustar header
    for (let split = before.length - 600; split <= trigger + 1; split++) {
      const chunks = [archive.subarray(0, split), archive.subarray(split)];
      const { emitted, error } = await scan(chunks);
      expect(error?.message).toMatch(/contains "\.\."/);
      expect({ split, emitted: emitted.length }).toEqual({
        split,
        emitted: Math.min(before.length, chunkStartOf(chunks, trigger)),
      });
      expect(emitted.equals(archive.subarray(0, emitted.length))).toBe(true);
    }
    // Three pieces: the middle one ends inside the refused ustar header.
    const next = random(7);
    for (let i = 0; i < 300; i++) {
      const a = before.length - 700 + Math.floor(next() * 1400);
      const b = a + 1 + Math.floor(next() * (trigger - a));
      const chunks = [archive.subarray(0, a), archive.subarray(a, b), archive.subarray(b)];
      const { emitted } = await scan(chunks);
      expect({ a, b, emitted: emitted.length }).toEqual({
        a,
        b,
        emitted: Math.min(before.length, chunkStartOf(chunks, trigger)),
      });
    }
  });

  test('a truncated archive (no end-of-archive marker) is an error that says so', async () => {
    const whole = Buffer.concat([...okFiles, END]);
    const cuts = [
      okFiles[0].length + okFiles[1].length, // after the last entry, before the marker
      okFiles[0].length + BLOCK + 100, // inside the data of the second file
      okFiles[0].length + 300, // inside the second header
      okFiles[0].length + okFiles[1].length + 300, // inside the marker
    ];
    for (const at of cuts) {
      for (const [, sizes] of CHUNKINGS) {
        const chunks = cut(whole.subarray(0, at), sizes);
        const { scanner, emitted, error } = await scan(chunks);
        expect({ at, message: error?.message }).toEqual({
          at,
          message: expect.stringMatching(/truncated/),
        });
        expect(scanner.complete).toBe(false);
        // A header cut short never went downstream.
        expect(emitted.length).toBeLessThanOrEqual(at);
        expect(emitted.equals(whole.subarray(0, emitted.length))).toBe(true);
        if (at === okFiles[0].length + 300) expect(emitted.length).toBe(okFiles[0].length);
      }
    }
  });

  test('tar-stream: a FIFO and a hard link to a symlink are refused, a hard link to a file is not', async () => {
    const fifo = await buildTar([
      { name: 'a.txt', content: 'a' },
      { name: 'pipe', type: 'fifo' },
    ]);
    expect((await scan([fifo])).error?.message).toMatch(/"pipe" is a FIFO/);

    const toSymlink = await buildTar([
      { name: 'a.txt', content: 'a' },
      { name: 's', type: 'symlink', linkname: 'a.txt' },
      { name: 'h', type: 'link', linkname: 's' },
    ]);
    expect((await scan([toSymlink])).error?.message).toMatch(
      /hard link "h" points to "s", which is not a file earlier/,
    );

    const toFile = await buildTar([
      { name: 'dir', type: 'directory' },
      { name: 'dir/a.txt', content: 'a' },
      { name: 'dir/h', type: 'link', linkname: './dir//a.txt' },
      { name: 'dir/up', type: 'symlink', linkname: '../dir/a.txt' },
    ]);
    const ok = await scan(cut(toFile, [513]));
    expect(ok.error).toBeUndefined();
    expect([ok.scanner.entries, ok.scanner.files, ok.scanner.contentBytes]).toEqual([4, 1, 1]);
    expect(ok.emitted.equals(toFile)).toBe(true);
  });

  test('what stays allowed: leading ".." that stay inside, replacing a symlink by a file', async () => {
    const archive = Buffer.concat([
      header({ name: 'a/', type: '5' }),
      header({ name: 'a/b/', type: '5' }),
      header({ name: 'a/b/up', type: '2', linkname: '../../x/./y' }),
      header({ name: 'a/b/self', type: '2', linkname: './' }),
      header({ name: 's', type: '2', linkname: 'a' }),
      // The same name again as a file: GNU tar unlinks the symlink first; nothing goes under it.
      file('s', 'now a file'),
      header({ name: 'h', type: '1', linkname: 's' }),
      END,
    ]);
    const { scanner, error } = await scan(cut(archive, [100]));
    expect(error).toBeUndefined();
    expect([scanner.entries, scanner.files]).toEqual([7, 1]);
  });

  test('a directory that replaced a regular file is no hard link target', async () => {
    const archive = Buffer.concat([
      file('f', 'x'),
      header({ name: 'f/', type: '5' }),
      header({ name: 'h', type: '1', linkname: 'f' }),
      END,
    ]);
    expect((await scan([archive])).error?.message).toMatch(/not a file earlier/);
  });

  test.each([
    ['.synapse-restore-20260101/homeserver.yaml', '.synapse-restore-20260101'],
    ['./.pre-restore-x', '.pre-restore-x'],
    ['.pre-restore-x/', '.pre-restore-x'],
    ['.synapse-backup-snapshot.db', '.synapse-backup-snapshot.db'],
    ['.synapse-swap.journal', '.synapse-swap.journal'],
    ['.synapse-swap.journal.new', '.synapse-swap.journal.new'],
    ['.synapse-backup.lock/holder', '.synapse-backup.lock'],
  ])("the engine's bookkeeping name %s is refused, nothing of it passes", async (name, top) => {
    const archive = Buffer.concat([...okFiles, file(name, 'x'), END]);
    // In 512-byte chunks, so the entries before it pass and only it is held back.
    const { emitted, error } = await scan(cut(archive, [512]));
    expect(error?.message).toBe(
      `entry ${JSON.stringify(name)} has a name the restore uses for its own bookkeeping (${JSON.stringify(top)}): refused`,
    );
    expect(emitted.length).toBe(Buffer.concat(okFiles).length);
  });

  test('bookkeeping names below the top level, and look-alikes, stay allowed', async () => {
    const archive = Buffer.concat([
      file('media_store/.pre-restore-x', 'x'),
      file('media_store/.synapse-restore-y/f', 'x'),
      file('pre-restore-x', 'x'),
      file('.synapse-backup-snapshot.db-wal', 'x'),
      END,
    ]);
    const { error } = await scan([archive]);
    expect(error).toBeUndefined();
  });

  test('without a policy the scanner only counts (the backup side)', async () => {
    const archive = Buffer.concat([
      ...okFiles,
      header({ name: '../fifo', type: '6' }),
      header({ name: '/abs', type: '2', linkname: '/etc' }),
      END,
    ]);
    const { scanner, emitted, error } = await scan(cut(archive, [511]), new TarScanner());
    expect(error).toBeUndefined();
    expect([scanner.entries, scanner.files, scanner.contentBytes]).toEqual([4, 2, 1504]);
    expect(emitted.equals(archive)).toBe(true);
  });
});

// ---------------------------------------------------------------- chunk boundaries

/** An entry as GNU tar --format=posix writes it: a pax header (times), then its own header. */
function posixEntry(name: string, content?: string): Buffer {
  const times = pax([
    ['mtime', '1795984811.292736585'],
    ['atime', '1795985041.352291759'],
    ['ctime', '1795984811.292736585'],
  ]);
  const own = content === undefined ? header({ name, type: '5' }) : file(name, content);
  return Buffer.concat([times, own]);
}

/** GNU tar's record padding after the end-of-archive marker: zeros to 10 KiB. */
function recordPadded(archive: Buffer): Buffer {
  return padded(Buffer.concat([archive, Buffer.alloc(10240 - (archive.length % 10240))]));
}

describe('TarScanner at chunk boundaries (held headers are released as they came)', () => {
  const entries = [
    posixEntry('m/', undefined),
    posixEntry('m/empty', ''),
    posixEntry('m/a', 'a'.repeat(700)),
    posixEntry('m/b', 'b'.repeat(512)),
  ];
  const archive = recordPadded(Buffer.concat([...entries, END]));
  const markerAt = Buffer.concat(entries).length;

  test('two chunks, split at every byte: the same bytes out, counted right', async () => {
    for (let split = 0; split <= markerAt + 2 * BLOCK + 1; split++) {
      const chunks = [archive.subarray(0, split), archive.subarray(split)];
      const { scanner, emitted, error } = await scan(chunks);
      expect({ split, error: error?.message, complete: scanner.complete }).toEqual({
        split,
        error: undefined,
        complete: true,
      });
      expect([scanner.entries, scanner.files, scanner.contentBytes]).toEqual([4, 3, 1212]);
      expect({ split, identical: emitted.equals(archive) }).toEqual({ split, identical: true });
    }
  });

  test('headers at any byte offset of their ArrayBuffer, one ending at its last byte: read and checked alike', async () => {
    // Names with bytes over 127: there a wrong unsigned sum is not rescued by the signed one.
    const own = [posixEntry('m/', undefined), posixEntry('m/\u00e9t\u00e9', 'a'.repeat(700))];
    const last = posixEntry('m/\u00fc', 'b'.repeat(512));
    const body = Buffer.concat([...own, last]);
    const whole = recordPadded(Buffer.concat([body, END]));
    // The middle chunk runs from m/été's own header (after its pax header) to the end of
    // m/ü's header: the first header in it has high bytes, the last ends at its last byte.
    const from = own[0].length + 2 * BLOCK;
    const cutAt = body.length - BLOCK;
    const lastHeader = cutAt - BLOCK;
    for (const shift of [0, 1, 2, 3, 4, 8]) {
      for (const spare of [0, 1, 3]) {
        // Its bytes start `shift` bytes into an ArrayBuffer whose length is no multiple of 4:
        // four bytes at a time where a header is aligned in it, else byte by byte.
        const memory = new ArrayBuffer(shift + cutAt - from + spare);
        // Non-zero bytes around it: a sum off by a word would count them.
        new Uint8Array(memory).fill(0xff);
        const middle = Buffer.from(memory, shift, cutAt - from);
        whole.copy(middle, 0, from, cutAt);
        const chunks = [whole.subarray(0, from), middle, whole.subarray(cutAt)];
        const good = await scan(chunks);
        expect({ shift, spare, error: good.error?.message }).toEqual({
          shift,
          spare,
          error: undefined,
        });
        expect(good.emitted.equals(whole)).toBe(true);
        expect([good.scanner.entries, good.scanner.files]).toEqual([3, 2]);
        // The same bytes with m/ü's header damaged: refused wherever it lies.
        middle[lastHeader - from + 10] ^= 0x01;
        const bad = await scan(chunks);
        expect({ shift, spare, error: bad.error?.message }).toEqual({
          shift,
          spare,
          error: `not a tar archive, or a damaged one: header checksum mismatch at offset ${lastHeader}`,
        });
      }
    }
  });

  test('the end-of-archive marker cut into three pieces anywhere: complete, nothing lost', async () => {
    for (let a = markerAt - 1; a <= markerAt + 2 * BLOCK; a += 17) {
      for (let b = a + 1; b <= markerAt + 2 * BLOCK + 1; b += 31) {
        const chunks = [archive.subarray(0, a), archive.subarray(a, b), archive.subarray(b)];
        const { scanner, emitted, error } = await scan(chunks);
        expect({ a, b, error: error?.message, complete: scanner.complete }).toEqual({
          a,
          b,
          error: undefined,
          complete: true,
        });
        expect(emitted.equals(archive)).toBe(true);
      }
    }
  });

  test('a byte after the marker is refused wherever the chunks end', async () => {
    const bad = Buffer.from(archive);
    bad[markerAt + 2 * BLOCK + 3] = 1;
    for (const sizes of [[512], [1], [511], [markerAt + BLOCK + 1], [markerAt + 2 * BLOCK + 3]]) {
      const { error } = await scan(cut(bad, sizes));
      expect({ sizes, error: error?.message }).toEqual({
        sizes,
        error: expect.stringMatching(/data after its end-of-archive marker/),
      });
    }
  });

  test('chunks of exactly 512 bytes, aligned with the headers or one byte off', async () => {
    for (const sizes of [[512], [1, 512], [511, 512], [1024, 512]]) {
      const { scanner, emitted, error } = await scan(cut(archive, sizes));
      expect({ sizes, error: error?.message, entries: scanner.entries }).toEqual({
        sizes,
        error: undefined,
        entries: 4,
      });
      expect(emitted.equals(archive)).toBe(true);
    }
  });

  test("create's left-out entry loses its held headers at every split, the rest is intact", async () => {
    const fifo = Buffer.concat([pax([['mtime', '1.5']]), header({ name: 'm/p', type: '6' })]);
    const kept = Buffer.concat([entries[0], entries[2]]);
    const withFifo = Buffer.concat([entries[0], fifo, entries[2], END]);
    const expected = Buffer.concat([kept, END]);
    const start = entries[0].length - BLOCK;
    for (let split = start; split <= entries[0].length + fifo.length + BLOCK + 1; split++) {
      const chunks = [withFifo.subarray(0, split), withFifo.subarray(split)];
      const { scanner, emitted, error } = await scan(chunks, new TarScanner(createEntryPolicy()));
      expect({ split, error: error?.message, skipped: scanner.skipped.count }).toEqual({
        split,
        error: undefined,
        skipped: 1,
      });
      expect({ split, identical: emitted.equals(expected) }).toEqual({ split, identical: true });
    }
  });
});

describe('the header codec', () => {
  const headerOf = (name: string | Buffer) => header({ name, size: 3 });

  test('checksums: unsigned, and the signed sum old tars wrote for bytes over 127', () => {
    const name = Buffer.from('n\u00e9\u00ff', 'latin1');
    const unsigned = headerOf(name);
    expect(() => verifyChecksum(unsigned, 0)).not.toThrow();
    // The signed sum: each byte over 127 counts 256 less.
    const stored = parseNumber(unsigned.subarray(148, 156), 'checksum', 0);
    const signed = header({ name, size: 3, checksum: stored - 2 * 256 });
    expect(() => verifyChecksum(signed, 0)).not.toThrow();
    for (const wrong of [stored - 256, stored + 1, stored - 1]) {
      expect(() => verifyChecksum(header({ name, size: 3, checksum: wrong }), 512)).toThrow(
        /checksum mismatch at offset 512/,
      );
    }
  });

  test('checksums read alike wherever the block lies in memory (aligned or not)', () => {
    const good = headerOf(Buffer.from('n\u00e9\u00ff/\u0080', 'latin1'));
    const bad = header({ name: 'x', size: 3, checksum: 1 });
    for (const shift of [0, 1, 2, 3, 4, 5]) {
      const at = (block: Buffer) => {
        const backing = Buffer.alloc(BLOCK + 8, 0xff);
        block.copy(backing, shift);
        return backing.subarray(shift, shift + BLOCK);
      };
      expect(() => verifyChecksum(at(good), 0)).not.toThrow();
      expect(() => verifyChecksum(at(bad), 0)).toThrow(/checksum mismatch/);
      // A block of 0xff bytes: the largest sum a block can have.
      const full = Buffer.alloc(BLOCK, 0xff);
      full.fill(0x20, 148, 156);
      const sum = 504 * 0xff + 8 * 0x20;
      Buffer.from(`${sum.toString(8).padStart(6, '0')}\0 `).copy(full, 148);
      expect(() => verifyChecksum(at(full), 0)).not.toThrow();
    }
  });

  test('pax records: with the keywords wanted, the others are checked but not returned', () => {
    const data = Buffer.concat([
      paxData([
        ['mtime', '1.5'],
        ['path', 'a/\u00fc'],
        ['GNU.sparse.major', '1'],
      ]),
    ]);
    expect(parsePax(data, new Set(['path', 'size']))).toEqual({
      path: 'a/\u00fc',
      'GNU.sparse.major': '1',
    });
    const malformed = Buffer.concat([paxData([['path', 'p']]), Buffer.from('9 mtime=1\n')]);
    expect(() => parsePax(malformed, new Set(['path']))).toThrow('malformed pax header');
  });

  test('pax records: a time keyword is returned when wanted, and only the bytes from start to stop are read', () => {
    const records = paxData([
      ['atime', '2.5'],
      ['ctime', '3.5'],
      ['mtime', '1.5'],
      ['mtimes', 'x'],
    ]);
    expect(parsePax(records, new Set(['ctime', 'mtimes']))).toEqual({ ctime: '3.5', mtimes: 'x' });
    expect(parsePax(records)).toEqual({ atime: '2.5', ctime: '3.5', mtime: '1.5', mtimes: 'x' });
    const path = paxData([['path', 'inner']]);
    const framed = Buffer.concat([Buffer.from('garbage'), path, Buffer.from('7 junk')]);
    expect(parsePax(framed, new Set(['path']), 7, 7 + path.length)).toEqual({ path: 'inner' });
    // A record that runs past `stop` is malformed, whatever follows in the buffer.
    expect(() => parsePax(framed, new Set(['path']), 7, 7 + path.length - 1)).toThrow(
      'malformed pax header',
    );
  });

  test.each([
    ['00000000644\0', 0o644],
    ['  644 \0', 0o644],
    ['644\0garbage', 0o644],
    ['\t644\xa0', 0o644],
    ['\0\0\0', 0],
    ['   ', 0],
    ['77777777777\0', 0o77777777777],
  ])('octal field %j reads as %d', (text, value) => {
    expect(parseNumber(Buffer.from(text, 'latin1'), 'size', 0)).toBe(value);
  });

  test.each(['64 4\0', '648\0', '0x1f', '-1', '+7', '6\x85'])(
    'octal field %j is refused',
    (text) => {
      expect(() => parseNumber(Buffer.from(text, 'latin1'), 'size', 1024)).toThrow(
        'not a tar archive: the header at offset 1024 has an invalid size',
      );
    },
  );

  test.each([
    ['30 mtime=1795984811.292736585\n', { mtime: '1795984811.292736585' }],
    ['0011 a=b=c\n', { a: 'b=c' }],
    ['13 path=d/\u00fc\n', { path: 'd/\u00fc' }],
    ['6 k=v\n6 x=y\n\0\0', { k: 'v', x: 'y' }],
    ['5 k=\n', { k: '' }],
  ])('pax records %j parse', (text, records) => {
    expect(parsePax(Buffer.from(text, 'utf8'))).toEqual(records);
  });

  test.each([
    ['no space after the length', '6k=vv\n'],
    ['a letter in the length', '6a k=v\n'],
    ['no length', ' k=v\n'],
    ['11 digits of length', '00000000006 k=v\n'],
    ['a length past the data', '9 k=v\n'],
    ['no newline at the end', '6 k=vX'],
    ['no "="', '6 kvv\n'],
    ['an empty keyword', '6 =vv\n'],
    ['"=" only after the record', '6 kvv\n=\n'],
    ['a tab before the keyword', '7 \tk=v\n'],
    ['a length that covers only itself', '2 '],
  ])('a pax record with %s is refused', (_what, text) => {
    expect(() => parsePax(Buffer.from(text, 'utf8'))).toThrow(
      'the archive has a malformed pax header',
    );
  });
});
