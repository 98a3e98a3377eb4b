/**
 * The create script (src/backup/scripts/create.ts) run by the host's sh, with fake
 * tar and dd on PATH where a failure must be provoked: tar's output is
 * reblocked through dd, and a failure of either must fail the script, since
 * POSIX sh has no pipefail and a lost status would seal a truncated archive.
 */
import { spawn, spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import {
  SNAPSHOT_FAILED_EXIT,
  TAR_DIFFERS_EXIT,
  TAR_FAILED_EXIT,
  tarCreateCommand,
} from '../src/backup/scripts';
import { tmpDir } from './support/peers';
import { selectionOf } from './support/selection';

interface Run {
  status: number | null;
  stdout: Buffer;
  stderr: string;
}

async function tree(): Promise<string> {
  const dir = (await tmpDir('selection')).path;
  await fsp.mkdir(path.join(dir, 'media_store/local_content'), { recursive: true });
  await fsp.writeFile(path.join(dir, 'homeserver.yaml'), 'server_name: example.org\n');
  // Larger than dd's 1 MiB block, so the output crosses several blocks.
  const media = Buffer.alloc(3 * 1024 * 1024 + 12345);
  for (let i = 0; i < media.length; i += 4096) media.writeUInt32BE(i, i);
  await fsp.writeFile(path.join(dir, 'media_store/local_content/a'), media);
  return dir;
}

/**
 * Runs the script; `fakes` are sh scripts put first on PATH under their names. Its
 * stdout is a pipe, as Pebble's exec gives (`stdout: 'socket'`: a socket, as the
 * direct path gives, and as Node gives a child by default).
 */
async function runScript(
  dataDir: string,
  fakes: Record<string, string> = {},
  stdout: 'pipe' | 'socket' = 'pipe',
): Promise<Run> {
  const bin = (await tmpDir('fake-bin')).path;
  for (const [name, body] of Object.entries(fakes)) {
    await fsp.writeFile(path.join(bin, name), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  }
  const script = tarCreateCommand(dataDir, 0, await selectionOf(dataDir));
  const [cmd, ...args] =
    stdout === 'pipe' ? ['bash', '-c', 'set -o pipefail; "$@" | cat', 'bash', ...script] : script;
  const out = spawnSync(cmd!, args, {
    env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` },
    maxBuffer: 64 * 1024 * 1024,
  });
  return { status: out.status, stdout: out.stdout, stderr: out.stderr.toString() };
}

/** The entries of a tar archive, as GNU tar lists them. */
function entries(archive: Buffer): string[] {
  const out = spawnSync('tar', ['-t', '-f', '-'], { input: archive });
  expect(out.status).toBe(0);
  return out.stdout.toString().trim().split('\n');
}

describe('the create script', () => {
  test("tar's output goes through dd in 1 MiB blocks, and the archive is whole", async () => {
    const dir = await tree();
    const realDd = spawnSync('sh', ['-c', 'command -v dd']).stdout.toString().trim();
    const log = path.join(dir, '..', `${path.basename(dir)}-dd.log`);
    const run = await runScript(dir, { dd: `echo "$*" >>'${log}'\nexec '${realDd}' "$@"` });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(entries(run.stdout)).toEqual([
      './',
      'media_store/',
      'homeserver.yaml',
      'media_store/local_content/',
      'media_store/local_content/a',
    ]);
    // The probe, then the pipeline.
    expect((await fsp.readFile(log, 'utf8')).trim().split('\n')).toEqual([
      'bs=1M iflag=fullblock status=none',
      'bs=1M iflag=fullblock status=none',
    ]);
    await fsp.rm(log);
  });

  test('when stdout is a socket (the direct path), tar writes to it without dd: the same archive', async () => {
    const dir = await tree();
    const realDd = spawnSync('sh', ['-c', 'command -v dd']).stdout.toString().trim();
    const log = path.join(dir, '..', `${path.basename(dir)}-dd.log`);
    const fakes = { dd: `echo "$*" >>'${log}'\nexec '${realDd}' "$@"` };
    const piped = await runScript(dir, fakes);
    await fsp.rm(log);
    const socket = await runScript(dir, fakes, 'socket');
    expect(socket.stderr).toBe('');
    expect(socket.status).toBe(0);
    expect(await fsp.stat(log).catch(() => 'no dd run')).toBe('no dd run');
    // (Not byte for byte: the pax headers carry each file's atime.)
    expect(socket.stdout.length).toBe(piped.stdout.length);
    expect(entries(socket.stdout)).toEqual(entries(piped.stdout));
  });

  test('without a dd that knows iflag=fullblock, tar writes the same archive itself', async () => {
    const dir = await tree();
    const reblocked = await runScript(dir);
    const plain = await runScript(dir, {
      dd: 'echo "dd: invalid input flag: fullblock" >&2; exit 1',
    });
    expect(plain.status).toBe(0);
    expect(plain.stderr).toBe('');
    expect(plain.stdout.length).toBe(reblocked.stdout.length);
    expect(entries(plain.stdout)).toEqual(entries(reblocked.stdout));
  });

  test("tar's failure (its status 2) is the script's TAR_FAILED_EXIT, for the engine to read its complaints", async () => {
    const dir = await tree();
    const run = await runScript(dir, {
      tar: 'head -c 50000 /dev/zero; echo "tar: a: Cannot open: Permission denied" >&2; exit 2',
    });
    expect(run.status).toBe(TAR_FAILED_EXIT);
    expect(run.stderr).toContain('Permission denied');
    expect(run.stdout.length).toBe(50000);
  });

  test('dd failing mid-stream fails the script even though tar wrote everything', async () => {
    const dir = await tree();
    // Passes the probe (stdin is /dev/null), then loses the rest of the stream.
    const run = await runScript(dir, {
      dd: [
        'if [ "$(readlink /proc/self/fd/0)" = /dev/null ]; then exit 0; fi',
        'head -c 4096',
        'cat >/dev/null',
        'echo "dd: error writing \'standard output\': No space left on device" >&2',
        'exit 1',
      ].join('\n'),
    });
    expect(run.stdout.length).toBe(4096);
    expect(run.status).toBe(1);
    expect(run.stderr).toContain('No space left on device');
  });

  /** Writes a SQLite database at `file` with `rows` KiB-sized rows. */
  function makeDb(file: string, rows: number): void {
    const made = spawnSync('python3', [
      '-c',
      'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute("create table t(x)"); c.executemany("insert into t values (?)", [(bytes(1000),)] * int(sys.argv[2])); c.commit()',
      file,
      String(rows),
    ]);
    expect(made.status).toBe(0);
  }

  /** A tree with a SQLite homeserver.db besides the media. */
  async function treeWithDb(): Promise<string> {
    const dir = await tree();
    makeDb(path.join(dir, 'homeserver.db'), 200);
    return dir;
  }

  test('the snapshot is taken while tar streams the media, and goes in last as homeserver.db', async () => {
    const dir = await treeWithDb();
    const release = path.join(dir, '..', `${path.basename(dir)}-release`);
    const realPython = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'])
      .stdout.toString()
      .trim();
    const bin = (await tmpDir('fake-bin')).path;
    // The copy waits until the test has read media from tar's output: a tar that waited
    // for the snapshot before streaming would never get there.
    await fsp.writeFile(
      path.join(bin, 'python3'),
      [
        `#!${realPython}`,
        'import os, sys',
        'args = sys.argv[1:]',
        "if args[:1] == ['-c'] and 'src.backup(dst' in args[1]:",
        `    wait = 'import time\\nwhile not os.path.exists(${JSON.stringify(release)}): time.sleep(0.05)\\n'`,
        "    args[1] = args[1].replace('    src.backup(dst', ''.join('    ' + l + chr(10) for l in wait.splitlines()) + '    src.backup(dst')",
        `os.execv(${JSON.stringify(realPython)}, [${JSON.stringify(realPython)}] + args)`,
      ].join('\n'),
      { mode: 0o755 },
    );
    const [cmd, ...args] = tarCreateCommand(dir, 0, await selectionOf(dir));
    const child = spawn(cmd!, args, {
      env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` },
    });
    const chunks: Buffer[] = [];
    let released = false;
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.stdout.on('data', (c: Buffer) => {
      chunks.push(c);
      if (!released && Buffer.concat(chunks).length > 1024 * 1024) {
        released = true;
        void fsp.writeFile(release, '');
      }
    });
    const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(stderr).toBe('');
    expect(status).toBe(0);
    expect(released).toBe(true);
    expect(entries(Buffer.concat(chunks))).toEqual([
      './',
      'media_store/',
      'homeserver.yaml',
      'media_store/local_content/',
      'media_store/local_content/a',
      'homeserver.db',
    ]);
    expect((await fsp.readdir(dir)).filter((n) => n.startsWith('.synapse-backup'))).toEqual([]);
    await fsp.rm(release);
  });

  test('a snapshot that fails fails the script with its own status, after tar, and leaves no file', async () => {
    const dir = await treeWithDb();
    await fsp.writeFile(path.join(dir, 'homeserver.db'), 'not a database');
    const run = await runScript(dir);
    expect(run.status).toBe(SNAPSHOT_FAILED_EXIT);
    expect(run.stderr).toMatch(
      /file is not a database\ncannot snapshot homeserver\.db with SQLite's online backup API/,
    );
    // The media went out meanwhile, without the database.
    expect(entries(run.stdout)).toEqual([
      './',
      'media_store/',
      'homeserver.yaml',
      'media_store/local_content/',
      'media_store/local_content/a',
    ]);
    expect((await fsp.readdir(dir)).filter((n) => n.startsWith('.synapse-backup'))).toEqual([]);
  });

  test('only a database: the archive holds just its snapshot', async () => {
    const dir = (await tmpDir('selection-db-only')).path;
    makeDb(path.join(dir, 'homeserver.db'), 0);
    const run = await runScript(dir);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(entries(run.stdout)).toEqual(['./', 'homeserver.db']);
  });

  test("tar's status 1 with media complaints is TAR_DIFFERS_EXIT only when the snapshot was named: tar gone before it is tar's own failure", async () => {
    const dir = await tree();
    const complaint =
      'echo "tar: media_store/local_content/a: file changed as we read it" >&2; exit 1';
    // Reads every name (the snapshot's too), complains of a media file, exits 1.
    const whole = await runScript(dir, { tar: `cat >/dev/null; ${complaint}` });
    expect(whole.status).toBe(TAR_DIFFERS_EXIT);
    // With a database: exits before the snapshot's name came (the copy meets a broken pipe).
    makeDb(path.join(dir, 'homeserver.db'), 0);
    const early = await runScript(dir, { tar: complaint });
    expect(early.status).toBe(1);
  });

  test('dd dying mid-stream fails the script (tar meets a broken pipe)', async () => {
    const dir = await tree();
    const run = await runScript(dir, {
      dd: [
        'if [ "$(readlink /proc/self/fd/0)" = /dev/null ]; then exit 0; fi',
        'head -c 4096',
        'kill -9 $$',
      ].join('\n'),
    });
    expect(run.stdout.length).toBe(4096);
    expect(run.status).not.toBe(0);
    expect(run.status).not.toBeNull();
  });
});
