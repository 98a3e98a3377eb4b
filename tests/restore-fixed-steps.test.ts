/**
 * The restore's fixed steps, merged into fewer workload commands (issue #17):
 * each merged command still names the step that failed, and the checks that
 * now run together still report the first refusal in the order they had.
 * Real parts: this host's sh, tar and python3 (the local workload), the
 * in-memory store.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { EngineContext } from '../src/backup/context';
import { readSmallFileIfExists } from '../src/backup/homeserver';
import { memberName } from '../src/backup/items';
import { refuseRunningSynapse } from '../src/backup/running';
import { removeKeysAndRecordPhase } from '../src/backup/swap-journal';
import { type TarEntry, confinedEntryPolicy } from '../src/backup/tar';
import { LocalWorkload } from '../src/workload/local';
import type { ExecOptions, ExecProcess } from '../src/workload/workload';
import { memoryEngine, memorySynapseDir } from './support/memory-engine';
import { MemoryStore } from './support/memory-store';
import { inspectSqliteDb, snapshotTree } from './support/synapse-tree';

const JOURNAL = '.synapse-swap.journal';
let root: string;

beforeEach(() => {
  root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'fixed-steps-')));
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

const ctxFor = (dataDir: string) =>
  ({ workload: new LocalWorkload(), dataDir }) as unknown as EngineContext;

describe('one-time keys and the journal phase, one command', () => {
  let dataDir: string;
  let db: string;
  beforeEach(async () => {
    dataDir = await memorySynapseDir('fixed-steps-keys');
    db = path.join(dataDir, 'homeserver.db');
    fs.writeFileSync(path.join(dataDir, JOURNAL), 'staging=.synapse-restore-x\nphase=moved\n');
  });
  afterEach(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  it('deletes the keys, records keys-removed and returns the count', async () => {
    const before = inspectSqliteDb(db).oneTimeKeys;
    expect(before).toBeGreaterThan(0);
    await expect(removeKeysAndRecordPhase(ctxFor(dataDir), db)).resolves.toBe(before);
    expect(inspectSqliteDb(db).oneTimeKeys).toBe(0);
    expect(fs.readFileSync(path.join(dataDir, JOURNAL), 'utf8')).toContain('phase=keys-removed');
    // Again: none left; no database: undefined (the phase is still recorded).
    await expect(removeKeysAndRecordPhase(ctxFor(dataDir), db)).resolves.toBe(0);
    const missing = path.join(dataDir, 'missing.db');
    await expect(removeKeysAndRecordPhase(ctxFor(dataDir), missing)).resolves.toBeUndefined();
    await expect(removeKeysAndRecordPhase(ctxFor(dataDir), undefined)).resolves.toBeUndefined();
  });

  it("a database python's sqlite3 cannot read fails as the keys step, the phase untouched", async () => {
    fs.writeFileSync(db, 'not a database, just text that is long enough to have a header\n');
    await expect(removeKeysAndRecordPhase(ctxFor(dataDir), db)).rejects.toMatchObject({
      code: 'workload-command',
      message: expect.stringMatching(
        /^removing one-time keys from the restored database exited with status 1: .*not a database/,
      ),
    });
    expect(fs.readFileSync(path.join(dataDir, JOURNAL), 'utf8')).toContain('phase=moved');
  });

  it('a missing journal fails as the phase step, after the keys went', async () => {
    fs.rmSync(path.join(dataDir, JOURNAL));
    await expect(removeKeysAndRecordPhase(ctxFor(dataDir), db)).rejects.toMatchObject({
      code: 'workload-command',
      message: `recording the swap journal phase exited with status 1: no swap journal in ${dataDir}`,
    });
    expect(inspectSqliteDb(db).oneTimeKeys).toBe(0);
  });
});

describe('readSmallFileIfExists: one command', () => {
  it('tells a missing file, a directory, an empty file and text apart', async () => {
    const workload = new LocalWorkload();
    fs.mkdirSync(path.join(root, 'dir'));
    fs.writeFileSync(path.join(root, 'empty'), '');
    fs.writeFileSync(path.join(root, 'text'), '+plus first\nsecond line\n');
    await expect(readSmallFileIfExists(workload, path.join(root, 'nope'))).resolves.toBeUndefined();
    await expect(readSmallFileIfExists(workload, path.join(root, 'dir'))).resolves.toBeUndefined();
    await expect(readSmallFileIfExists(workload, path.join(root, 'empty'))).resolves.toBe('');
    await expect(readSmallFileIfExists(workload, path.join(root, 'text'))).resolves.toBe(
      '+plus first\nsecond line\n',
    );
  });
});

describe('a restore whose merged steps fail', () => {
  it('a failing keys step after the swap names it, and the previous files come back', async () => {
    const store = new MemoryStore();
    const src = await memorySynapseDir('fixed-steps-src');
    const dst = await memorySynapseDir('fixed-steps-dst', { mediaFiles: 3 });
    fs.writeFileSync(
      path.join(root, 'python3'),
      '#!/bin/sh\necho "python3 stand-in: boom" >&2\nexit 3\n',
      {
        mode: 0o755,
      },
    );
    const local = new LocalWorkload();
    // python3 fails in the keys step only (PATH with a failing python3 first).
    const workload = Object.assign(Object.create(local) as LocalWorkload, {
      exec(options: ExecOptions): ExecProcess {
        if (!options.command.some((a) => a.includes('e2e_one_time_keys_json'))) {
          return local.exec(options);
        }
        const env = { PATH: `${root}:${process.env.PATH ?? '/usr/bin:/bin'}` };
        return local.exec({ ...options, environment: { ...options.environment, ...env } });
      },
    });
    try {
      await memoryEngine(store, src).create({ id: 'k' });
      const before = await snapshotTree(dst);
      const engine = memoryEngine(store, dst, { workload });
      await expect(engine.restore({ id: 'k', services: [] })).rejects.toMatchObject({
        code: 'workload-command',
        message: expect.stringContaining(
          'removing one-time keys from the restored database exited with status 3: python3 stand-in: boom',
        ),
      });
      engine.close();
      expect(await snapshotTree(dst)).toEqual(before);
      expect(fs.existsSync(path.join(dst, JOURNAL))).toBe(false);
    } finally {
      fs.rmSync(src, { recursive: true, force: true });
      fs.rmSync(dst, { recursive: true, force: true });
    }
  });
});

describe('the checks, run together, refuse in their order', () => {
  it('a wrong passphrase and too little space: the passphrase is named; a missing backup with a bad journal: the journal', async () => {
    const store = new MemoryStore();
    const src = await memorySynapseDir('fixed-steps-order-src');
    const dst = await memorySynapseDir('fixed-steps-order-dst');
    try {
      await memoryEngine(store, src).create({ id: 'o' });
      const before = await snapshotTree(dst);
      const local = new LocalWorkload();
      // df says 1 KiB is free: the space check would refuse too.
      const tight = Object.assign(Object.create(local) as LocalWorkload, {
        exec(options: ExecOptions): ExecProcess {
          if (!options.command.some((a) => a.includes('df -Pk'))) return local.exec(options);
          return local.exec({ ...options, command: ['echo', '1024'] });
        },
      });
      const wrong = memoryEngine(store, dst, { workload: tight, passphrase: 'not the passphrase' });
      await expect(wrong.restore({ id: 'o', services: [] })).rejects.toMatchObject({
        code: 'wrong-passphrase',
      });
      wrong.close();
      const right = memoryEngine(store, dst, { workload: tight });
      await expect(right.restore({ id: 'o', services: [] })).rejects.toMatchObject({
        code: 'no-space',
      });
      expect(await snapshotTree(dst)).toEqual(before);
      fs.writeFileSync(path.join(dst, JOURNAL), 'phase=nonsense\n');
      await expect(right.restore({ id: 'absent', services: [] })).rejects.toMatchObject({
        code: 'unfinished-swap',
      });
      right.close();
    } finally {
      fs.rmSync(src, { recursive: true, force: true });
      fs.rmSync(dst, { recursive: true, force: true });
    }
  });
});

describe('a data dir that does not exist (the CLI through Pebble makes none)', () => {
  const advice = (dir: string, make = 'create it') =>
    `${make} where Synapse runs, owned by the user Synapse runs as (the official image's: install -d -o 991 -g 991 ${dir}), then run the restore again`;

  it("is refused by name with how to make it, before another server's name; nothing is created", async () => {
    const store = new MemoryStore();
    const src = await memorySynapseDir('fixed-steps-nodir-src');
    const dst = path.join(root, 'not', 'there');
    const file = path.join(root, 'a-file');
    fs.writeFileSync(file, 'not a directory\n');
    try {
      await memoryEngine(store, src).create({ id: 'n' });
      const engine = memoryEngine(store, dst);
      // Another server's backup would need --force: the missing dir is named first.
      await expect(
        engine.restore({ id: 'n', services: [], expectedServerName: 'other.example' }),
      ).rejects.toMatchObject({
        code: 'no-data-dir',
        message: `the data dir ${dst} does not exist: nothing was restored`,
        remedy: { kind: 'advice', text: advice(dst) },
      });
      engine.close();
      expect(fs.existsSync(path.join(root, 'not'))).toBe(false);
      const onFile = memoryEngine(store, file);
      await expect(onFile.restore({ id: 'n', services: [] })).rejects.toMatchObject({
        code: 'no-data-dir',
        message: `the data dir ${file} is not a directory (something else has its name): nothing was restored`,
        remedy: { kind: 'advice', text: advice(file, 'move that aside and create the directory') },
      });
      onFile.close();
      expect(fs.readFileSync(file, 'utf8')).toBe('not a directory\n');
    } finally {
      fs.rmSync(src, { recursive: true, force: true });
    }
  });

  it('a df that fails is a refusal with its complaint; one that prints no number skips the check, never "0 B free"', async () => {
    const store = new MemoryStore();
    const src = await memorySynapseDir('fixed-steps-nodf-src');
    const there = await memorySynapseDir('fixed-steps-nodf-dst');
    const fakeBin = path.join(root, 'bin');
    fs.mkdirSync(fakeBin);
    const local = new LocalWorkload();
    const withDf = (script: string) => {
      fs.writeFileSync(path.join(fakeBin, 'df'), script, { mode: 0o755 });
      return Object.assign(Object.create(local) as LocalWorkload, {
        exec(options: ExecOptions): ExecProcess {
          if (!options.command.some((a) => a.includes('df -Pk'))) return local.exec(options);
          const env = { PATH: `${fakeBin}:${process.env.PATH ?? '/usr/bin:/bin'}` };
          return local.exec({ ...options, environment: { ...options.environment, ...env } });
        },
      });
    };
    try {
      await memoryEngine(store, src).create({ id: 'n' });
      const before = await snapshotTree(there);
      const failing = memoryEngine(store, there, {
        workload: withDf('#!/bin/sh\necho "df: /x: Stale file handle" >&2\nexit 1\n'),
      });
      await expect(failing.restore({ id: 'n', services: [], force: true })).rejects.toMatchObject({
        code: 'workload-command',
        message: expect.stringContaining('df: /x: Stale file handle'),
      });
      failing.close();
      expect(await snapshotTree(there)).toEqual(before);
      const silent = memoryEngine(store, there, { workload: withDf('#!/bin/sh\nexit 0\n') });
      await expect(silent.restore({ id: 'n', services: [], force: true })).resolves.toMatchObject({
        backupId: 'n',
      });
      silent.close();
    } finally {
      fs.rmSync(src, { recursive: true, force: true });
      fs.rmSync(there, { recursive: true, force: true });
    }
  });
});

/** A grep that refuses -a (as one without it would), else this host's. */
const GREP_WITHOUT_A = [
  '#!/bin/sh',
  'for a; do case $a in -a) echo "grep: invalid option -- a" >&2; exit 2 ;; esac; done',
  'PATH=$(printf %s "$PATH" | cut -d: -f2-) exec grep "$@"',
  '',
].join('\n');

describe('the running-Synapse check: one grep over /proc, else every process', () => {
  const children: ChildProcess[] = [];
  afterEach(async () => {
    for (const child of children.splice(0)) {
      const exited = new Promise((r) => child.once('exit', r));
      process.kill(-child.pid!, 'SIGKILL');
      await exited;
    }
  });

  /** A stand-in Synapse: `sh` whose argv is `synapse.app.homeserver -c <config>`. */
  async function fakeSynapse(config: string): Promise<number> {
    const child = spawn('sh', ['-c', 'sleep 300', 'synapse.app.homeserver', '-c', config], {
      detached: true,
      stdio: 'ignore',
    });
    children.push(child);
    await new Promise((r) => child.once('spawn', r));
    return child.pid!;
  }

  /** The check with `grep` as given by `grepScript` (a sh wrapper), or this host's. */
  function check(dataDir: string, grepScript?: string): Promise<void> {
    const local = new LocalWorkload();
    let workload: LocalWorkload = local;
    if (grepScript) {
      const bin = path.join(root, 'bin');
      fs.mkdirSync(bin, { recursive: true });
      fs.writeFileSync(path.join(bin, 'grep'), grepScript, { mode: 0o755 });
      const env = { PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}` };
      workload = Object.assign(Object.create(local) as LocalWorkload, {
        exec: (options: ExecOptions): ExecProcess =>
          local.exec({ ...options, environment: { ...options.environment, ...env } }),
      });
    }
    return refuseRunningSynapse({ workload, dataDir } as unknown as EngineContext, []);
  }

  it.each([
    ['a grep with -a', undefined],
    ['a grep without -a (every process is looked at)', GREP_WITHOUT_A],
  ])('finds a running Synapse of the data dir with %s', async (_label, grep) => {
    const dataDir = path.join(root, 'data');
    fs.mkdirSync(dataDir);
    fs.writeFileSync(path.join(dataDir, 'homeserver.yaml'), 'server_name: "grep.test"\n');
    await expect(check(dataDir, grep)).resolves.toBeUndefined();
    const pid = await fakeSynapse(path.join(dataDir, 'homeserver.yaml'));
    await expect(check(dataDir, grep)).rejects.toMatchObject({
      code: 'busy',
      message: expect.stringContaining(`process ${pid} is synapse.app.homeserver`),
    });
  });

  it('is not fooled by another check of the same data dir running meanwhile', async () => {
    const dataDir = path.join(root, 'data');
    fs.mkdirSync(dataDir);
    fs.writeFileSync(path.join(dataDir, 'homeserver.yaml'), 'server_name: "grep.test"\n');
    await expect(
      Promise.all([check(dataDir), check(dataDir), check(dataDir), check(dataDir)]),
    ).resolves.toEqual([undefined, undefined, undefined, undefined]);
  });
});

describe('entry names: the common forms skip the split, the odd ones still normalize', () => {
  const NAMES = [
    'a',
    'a/',
    'a/b/',
    './',
    '.',
    '',
    './a/b',
    'a//b/',
    'a/./b',
    'a/.',
    '.hidden/',
    '..',
    'a/..b/',
    'x/y//',
  ];
  it('memberName is the split-and-join form of every name', () => {
    const reference = (raw: string) =>
      raw
        .split('/')
        .filter((p) => p !== '' && p !== '.')
        .join('/') || '.';
    for (const raw of NAMES) expect([raw, memberName(raw)]).toEqual([raw, reference(raw)]);
  });

  it('the restore policy takes a trailing slash as the same name, and still refuses ".." and absolute names', () => {
    const policy = confinedEntryPolicy();
    policy({ name: 'media_store/', type: 'directory' } as TarEntry);
    policy({ name: 'media_store/f', type: 'file' } as TarEntry);
    // The hard link finds the file by its normal name.
    expect(() =>
      policy({ name: 'media_store/g', type: 'hardlink', linkname: './media_store//f' } as TarEntry),
    ).not.toThrow();
    for (const name of ['../x/', 'a/../', '/etc/', 'a/../b']) {
      expect(() => policy({ name, type: 'directory' } as TarEntry)).toThrow(/refused/);
    }
    expect(() => policy({ name: '.synapse-swap.journal/', type: 'directory' } as TarEntry)).toThrow(
      /bookkeeping/,
    );
  });
});
