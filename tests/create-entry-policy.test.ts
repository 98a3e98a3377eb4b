/**
 * Create's side of the shared entry policy, without S3: the scanner with
 * createEntryPolicy drops the entries it leaves out (FIFOs, device nodes, hard links
 * to them; their pax headers too) from archives GNU tar wrote, whatever the chunking,
 * and fails on what a restore refuses otherwise; TarComplaints sorts GNU tar's stderr.
 */
import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { BoundedList, LISTED_LIMIT, summarizeNotes } from '../src/backup/notes';
import { TarScanner, createEntryPolicy } from '../src/backup/tar';
import { TarComplaints, unquote } from '../src/backup/tar-complaints';
import { buildTar } from './support/backups';
import { tmpDir } from './support/peers';

const IS_ROOT = process.getuid?.() === 0;
const DEVICES = IS_ROOT || process.env.CI === 'true';

/** Runs `archive` through a create scanner in chunks of `size` bytes. */
async function scanInChunks(
  archive: Buffer,
  size: number,
): Promise<{ out: Buffer; scanner: TarScanner; error?: unknown }> {
  const scanner = new TarScanner(createEntryPolicy());
  const out: Buffer[] = [];
  scanner.on('data', (b: Buffer) => out.push(b));
  const ended = new Promise<unknown>((resolve) => {
    scanner.on('end', () => resolve(undefined));
    scanner.on('error', resolve);
  });
  for (let i = 0; i < archive.length; i += size) {
    if (scanner.destroyed) break;
    if (!scanner.write(archive.subarray(i, i + size))) {
      await Promise.race([new Promise((resolve) => scanner.once('drain', resolve)), ended]);
    }
  }
  if (!scanner.destroyed) scanner.end();
  const error = await ended;
  return { out: Buffer.concat(out), scanner, error };
}

function gnuList(archive: Buffer): string[] {
  const r = spawnSync('tar', ['-t', '-f', '-'], { input: archive, encoding: 'utf8' });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return r.stdout.split('\n').filter(Boolean);
}

function pythonList(archive: Buffer): string[] {
  const r = spawnSync(
    'python3',
    [
      '-c',
      'import sys, tarfile\nwith tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as t:\n    for m in t: print(m.name + ("/" if m.isdir() else ""))',
    ],
    { input: archive, encoding: 'utf8' },
  );
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return r.stdout.split('\n').filter(Boolean);
}

describe('the create scanner leaves out entries restore refuses that hold no data', () => {
  let archive: Buffer;
  let leftOut: { path: string; kind: string }[];
  const longFifo = `${'fifo-with-a-long-name-'.repeat(6)}ü`;

  beforeAll(async () => {
    const dir = (await tmpDir('left-out')).path;
    const m = path.join(dir, 'm');
    await fsp.mkdir(m);
    await fsp.writeFile(path.join(m, 'a'), Buffer.alloc(1500, 'a'));
    const script = [
      'mkfifo p',
      'ln p p2',
      `mkfifo '${longFifo}'`,
      ...(DEVICES ? ['mknod c c 1 3', 'mknod b b 7 0'] : []),
      'ln -s a rel-link',
      'printf zzz > z',
    ].join(' && ');
    const made = spawnSync('sh', ['-c', script], { cwd: m, encoding: 'utf8' });
    expect(made.stderr).toBe('');
    const tar = spawnSync('tar', ['--create', '--file=-', '--format=posix', '--sort=name', 'm'], {
      cwd: dir,
      maxBuffer: 1 << 26,
    });
    expect(tar.status).toBe(0);
    archive = tar.stdout;
    const kinds: [string, string][] = [
      ['b', 'block-device'],
      ['c', 'character-device'],
      [longFifo, 'fifo'],
      ['p', 'fifo'],
      ['p2', 'fifo'],
    ];
    leftOut = kinds
      .filter(([n]) => DEVICES || (n !== 'b' && n !== 'c'))
      .map(([n, kind]) => ({ path: `m/${n}`, kind }));
    // The FIFO with a long name does come with a pax header in GNU tar's archive.
    expect(archive.includes(Buffer.from('PaxHeaders'))).toBe(true);
  });

  test.each([1, 100, 511, 512, 513, 4096, 10240, 1 << 30])(
    'in chunks of %i bytes: the same archive, listed alike by GNU tar and Python, without them',
    async (size) => {
      const whole = await scanInChunks(archive, 1 << 30);
      const { out, scanner, error } = await scanInChunks(archive, size);
      expect(error).toBeUndefined();
      expect(out.equals(whole.out)).toBe(true);
      expect(out.length).toBeLessThan(archive.length);
      expect(gnuList(out)).toEqual(['m/', 'm/a', 'm/rel-link', 'm/z']);
      expect(pythonList(out)).toEqual(gnuList(out));
      expect(scanner.skipped.items).toEqual(leftOut);
      expect(scanner.skipped.count).toBe(leftOut.length);
      expect(scanner.entries).toBe(4);
      expect(scanner.files).toBe(2);
      // The files' data is intact.
      const z = spawnSync('tar', ['-x', '-O', '-f', '-', 'm/z'], { input: out, encoding: 'utf8' });
      expect(z.stdout).toBe('zzz');
    },
  );

  test('what restore refuses otherwise fails the create, naming the entry (a hard link to a symlink, a bookkeeping name)', async () => {
    // Hard-linked symlinks: GNU tar writes the second as a hard link to the first,
    // which restore refuses (not a file).
    const dir = (await tmpDir('hardlinked-symlink')).path;
    const made = spawnSync('sh', ['-c', 'mkdir m && echo a > m/a && ln -s a m/s && ln m/s m/t'], {
      cwd: dir,
      encoding: 'utf8',
    });
    expect(made.stderr).toBe('');
    const tar = spawnSync('tar', ['--create', '--file=-', '--format=posix', '--sort=name', 'm'], {
      cwd: dir,
    });
    const r1 = await scanInChunks(tar.stdout, 512);
    expect(r1.error).toMatchObject({
      code: 'unrestorable-entry',
      message:
        'cannot back up: hard link "m/t" points to "m/s", which is not a file earlier in the archive; a restore refuses such an entry, so no backup was stored',
      remedy: {
        kind: 'advice',
        text: 'replace the hard link with a copy of the file, then create the backup again',
      },
    });
    // Nothing of a refused entry passes.
    expect(r1.out.includes(Buffer.from('m/t'))).toBe(false);
    const snapshot = await buildTar([{ name: '.synapse-restore-20260101/x', content: 'x' }]);
    const r2 = await scanInChunks(snapshot, 512);
    expect(r2.error).toMatchObject({
      code: 'unrestorable-entry',
      message: expect.stringContaining('has a name the restore uses for its own bookkeeping'),
      remedy: { kind: 'advice', text: 'rename or remove that entry, then create the backup again' },
    });
  });

  test('hard links to earlier files, as GNU tar writes them, pass', async () => {
    const dir = (await tmpDir('hardlinked-files')).path;
    spawnSync('sh', ['-c', 'mkdir m && echo a > m/a && ln m/a m/b && ln m/a m/c'], { cwd: dir });
    const tar = spawnSync('tar', ['--create', '--file=-', '--format=posix', '--sort=name', 'm'], {
      cwd: dir,
    });
    const { out, error, scanner } = await scanInChunks(tar.stdout, 1000);
    expect(error).toBeUndefined();
    expect(out.equals(tar.stdout)).toBe(true);
    expect(scanner.entries).toBe(4);
  });
});

describe("TarComplaints sorts GNU tar's stderr", () => {
  const ROOTS = ['media_store/local_content', 'media_store/local_thumbnails'];
  const feed = async (text: string, chunk: number) => {
    const bytes = Buffer.from(text, 'utf8');
    const parts: Buffer[] = [];
    for (let i = 0; i < bytes.length; i += chunk) parts.push(bytes.subarray(i, i + chunk));
    const stream = Readable.from(parts);
    const complaints = new TarComplaints(stream, ROOTS);
    await new Promise((resolve) => stream.on('end', resolve));
    return complaints;
  };

  test.each([1, 7, 4096])(
    'media complaints, sockets and other lines, in chunks of %i bytes',
    async (chunk) => {
      const c = await feed(
        [
          'tar: media_store/local_content/ab/f1: file changed as we read it',
          'tar: media_store/local_content/ab/f2: File removed before we read it',
          'tar: media_store/local_thumbnails: Cannot stat: No such file or directory',
          'tar: media_store/local_content/ab/new\\nline\\377x: File removed before we read it',
          'tar: media_store/local_content/s\\\\q: socket ignored',
          'tar: Exiting with failure status due to previous errors',
          '',
        ].join('\n'),
        chunk,
      );
      expect(c.warnings.items).toEqual([
        { path: 'media_store/local_content/ab/f1', kind: 'changed' },
        { path: 'media_store/local_content/ab/f2', kind: 'removed' },
        { path: 'media_store/local_thumbnails', kind: 'removed' },
        {
          path: `media_store/local_content/ab/new\nline${Buffer.from([0xff, 0x78]).toString('utf8')}`,
          kind: 'removed',
        },
      ]);
      expect(c.sockets.items).toEqual([{ path: 'media_store/local_content/s\\q', kind: 'socket' }]);
      expect(c.otherCount).toBe(0);
      expect(c.onlyMediaChanged).toBe(true);
    },
  );

  test('a complaint outside the media roots (or a look-alike prefix), or of another kind, is a failure', async () => {
    const c = await feed(
      [
        'tar: media_store/local_content/a: file changed as we read it',
        'tar: homeserver.yaml: file changed as we read it',
        'tar: media_store/local_contentX/a: File removed before we read it',
        'tar: media_store/local_content/b: File shrank by 10 bytes; padding with zeros',
        'tar: media_store/local_content/c: Cannot open: Permission denied',
      ].join('\n'),
      3,
    );
    expect(c.warnings.count).toBe(1);
    expect(c.otherCount).toBe(4);
    expect(c.onlyMediaChanged).toBe(false);
    expect(c.otherText()).toBe(
      [
        'tar: homeserver.yaml: file changed as we read it',
        'tar: media_store/local_contentX/a: File removed before we read it',
        'tar: media_store/local_content/b: File shrank by 10 bytes; padding with zeros',
        'tar: media_store/local_content/c: Cannot open: Permission denied',
      ].join('\n'),
    );
  });

  test('no complaint at all is not "only media changed" (tar failed for another reason)', async () => {
    const c = await feed('tar: Exiting with failure status due to previous errors\n', 100);
    expect(c.onlyMediaChanged).toBe(false);
  });

  test('bounded: the first 1000 paths kept, all counted; a huge line is cut', async () => {
    const lines: string[] = [];
    for (let i = 0; i < LISTED_LIMIT + 500; i++) {
      lines.push(`tar: media_store/local_content/x/${i}: File removed before we read it`);
    }
    lines.push(`tar: ${'y'.repeat(100_000)}: Cannot open: Permission denied`);
    const c = await feed(`${lines.join('\n')}\n`, 65536);
    expect(c.warnings.items).toHaveLength(LISTED_LIMIT);
    expect(c.warnings.count).toBe(LISTED_LIMIT + 500);
    expect(c.otherCount).toBe(1);
    expect(c.otherText().length).toBeLessThanOrEqual(20 * 1024);
  });

  test("unquote reverses GNU tar's escape quoting", () => {
    expect(unquote('a\\nb\\tc\\\\d\\303\\251')).toBe('a\nb\tc\\dé');
    expect(unquote('plain')).toBe('plain');
  });
});

describe('what the action results and the CLI line list', () => {
  test('a million FIFOs: 1000 kept, all counted, 20 named in one bounded line', () => {
    const list = new BoundedList<{ path: string; kind: string }>();
    for (let i = 0; i < 1_000_000; i++)
      list.add({ path: `m/${'x'.repeat(300)}${i}`, kind: 'fifo' });
    expect(list.items).toHaveLength(LISTED_LIMIT);
    expect(list.count).toBe(1_000_000);
    const line = summarizeNotes(list.items, list.count);
    expect(line.endsWith(' and 999980 more')).toBe(true);
    expect(line.split(', ')).toHaveLength(20);
    expect(line.length).toBeLessThan(20 * 220);
    expect(summarizeNotes([{ path: 'a', kind: 'socket' }], 1)).toBe('a (socket)');
  });
});
