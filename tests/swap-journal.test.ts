/**
 * Issue #13, case 4: a restore killed mid-swap. The swap script is killed
 * (SIGKILL, from inside: `kill -KILL $$`) at each of its phases, or the engine
 * "dies" after it (every later command hangs, and the restore is abandoned);
 * then the next operation (create, restore, prune) must find the data dir
 * wholly the previous or wholly the restored state, say which, and leave no
 * journal, staging or previous dir behind.
 */
import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { removeLeftoversCommand } from '../src/backup/scripts';
import { describeSwapRecovery } from '../src/backup/swap-journal';
import type { EngineOptions } from '../src/backup/types';
import { runCommand } from '../src/workload/command';
import { LocalWorkload } from '../src/workload/local';
import type { ExecOptions, ExecProcess, Workload } from '../src/workload/workload';
import { MemoryStore } from './support/memory-store';
import { memoryEngine } from './support/memory-engine';
import { tmpDir } from './support/peers';
import { packageLayout } from './support/selection';
import {
  type TreeEntry,
  inspectSqliteDb,
  makeSynapseTree,
  snapshotTree,
  withoutSkipped,
} from './support/synapse-tree';

const PASSPHRASE = 'swap journal passphrase';
const engineOn = (store: MemoryStore, dataDir: string, extra: Partial<EngineOptions> = {}) =>
  memoryEngine(store, dataDir, { passphrase: PASSPHRASE, ...extra });
const JOURNAL = '.synapse-swap.journal';

/** Where the engine dies: a line of the swap script to replace, or a later command. */
interface Interruption {
  label: string;
  /** Replaces this exact line of the swap script (its text up to the kill stays). */
  line?: string;
  replacement?: string;
  /** Or: the engine dies when it runs a command whose script contains this. */
  beforeCommand?: string;
  expect: 'previous' | 'restored';
}

const KILL = 'kill -KILL $$';
const INTERRUPTIONS: Interruption[] = [
  {
    label: 'journal written, nothing moved',
    line: 'mkdir -m 0700 -- "$previous" || { rm -f -- "$J" "$JT"; exit 1; }',
    replacement: KILL,
    expect: 'previous',
  },
  {
    label: 'half the live files moved out',
    line: 'each move_out || fail moving-out',
    replacement: `mv -- homeserver.yaml "$previous"/ && mv -- homeserver.db "$previous"/ && ${KILL}`,
    expect: 'previous',
  },
  {
    label: 'all live files out, nothing moved in',
    line: 'each move_in || fail moving-in',
    replacement: KILL,
    expect: 'previous',
  },
  {
    label: 'half the staged files moved in',
    line: 'each move_in || fail moving-in',
    replacement: `mv -- "$staging"/homeserver.yaml . && mv -- "$staging"/homeserver.db . && ${KILL}`,
    expect: 'previous',
  },
  {
    label: 'all staged files in, phase not yet "moved"',
    line: 'journal moved && rm -rf -- "$staging"',
    replacement: KILL,
    expect: 'restored',
  },
  {
    label: 'phase "moved", staging dir not yet removed',
    line: 'journal moved && rm -rf -- "$staging"',
    replacement: `journal moved && ${KILL}`,
    expect: 'restored',
  },
  {
    label: 'swap done, one-time keys not yet removed',
    beforeCommand: 'e2e_one_time_keys_json',
    expect: 'restored',
  },
  {
    label: 'one-time keys removed, journal not yet removed',
    beforeCommand: 'rm -f -- .synapse-swap.journal',
    expect: 'restored',
  },
];

/** A process that never ends: what a dead engine's commands look like to it. */
function hanging(): ExecProcess {
  return {
    stdout: new PassThrough(),
    stderr: new PassThrough(),
    stdin: new PassThrough(),
    wait: () => new Promise(() => undefined),
    kill: () => undefined,
  };
}

/** Runs commands locally until the interruption; from then on, every command hangs. */
class Interrupting implements Workload {
  readonly description = 'local host (interrupting)';
  private readonly inner = new LocalWorkload();
  dead = false;
  /** Resolves once the swap script (or the command before which the engine dies) is over. */
  readonly over: Promise<void>;
  private markOver!: () => void;
  constructor(private readonly at: Interruption) {
    this.over = new Promise((resolve) => (this.markOver = resolve));
  }
  exec(options: ExecOptions): ExecProcess {
    if (this.dead) return hanging();
    const script = options.command[2] ?? '';
    if (this.at.beforeCommand && script.includes(this.at.beforeCommand)) {
      this.dead = true;
      this.markOver();
      return hanging();
    }
    if (this.at.line && script.includes('each move_out')) {
      const lines = script.split('\n');
      const i = lines.indexOf(this.at.line);
      if (i === -1) throw new Error(`the swap script has no line ${this.at.line}`);
      lines[i] = this.at.replacement!;
      const proc = this.inner.exec({
        ...options,
        command: [...options.command.slice(0, 2), lines.join('\n'), ...options.command.slice(3)],
      });
      this.dead = true;
      void proc.wait().finally(() => this.markOver());
      return proc;
    }
    return this.inner.exec(options);
  }
  stopServices = async () => undefined;
  startServices = async () => undefined;
  serviceStatus = async () => [];
}

const onlySkipped = (snap: Map<string, TreeEntry>) =>
  new Map([...snap].filter(([key]) => !withoutSkipped(snap).has(key)));
const without = (snap: Map<string, TreeEntry>, name: string) =>
  new Map([...snap].filter(([key]) => key !== name));

/**
 * A data dir restored from backup `b` and killed at `at`: returns it with the
 * tree it had before (previous) and the backed-up tree (restored).
 */
async function interruptedRestore(at: Interruption) {
  const store = new MemoryStore();
  const dataDir = (await tmpDir('swap-journal')).path;
  await makeSynapseTree(dataDir, { mediaFiles: 2 });
  const backedUp = withoutSkipped(await snapshotTree(dataDir));
  await engineOn(store, dataDir).create({ id: 'b' });
  await fsp.writeFile(path.join(dataDir, 'homeserver.yaml'), 'server_name: "example.org"\n# new\n');
  await fsp.writeFile(path.join(dataDir, 'media_store/local_content/new-since-backup'), 'new');
  const previous = await snapshotTree(dataDir);
  const workload = new Interrupting(at);
  // Abandoned: the engine "died"; its promise never settles.
  void engineOn(store, dataDir, { workload })
    .restore({ id: 'b' })
    .catch(() => undefined);
  await workload.over;
  expect(await fsp.readdir(dataDir)).toContain(JOURNAL);
  await orphanLock(dataDir);
  return { store, dataDir, previous, backedUp };
}

/**
 * The "dead" engine still holds the data dir's lock in this (live) process: as a killed
 * process would, its holder line now names a pid that is gone, which the next
 * operation takes the lock over from (src/backup/lock.ts).
 */
async function orphanLock(dataDir: string): Promise<void> {
  const file = path.join(dataDir, '.synapse-backup.lock', 'holder');
  const holder = JSON.parse(await fsp.readFile(file, 'utf8')) as { pid: number };
  holder.pid = spawnSync('true').pid!;
  await fsp.writeFile(file, `${JSON.stringify(holder)}\n`);
}

async function expectResolved(
  dataDir: string,
  expected: 'previous' | 'restored',
  trees: { previous: Map<string, TreeEntry>; backedUp: Map<string, TreeEntry> },
): Promise<void> {
  const names = await fsp.readdir(dataDir);
  expect(names.filter((n) => n.startsWith('.'))).toEqual([]);
  const now = await snapshotTree(dataDir);
  if (expected === 'previous') {
    expect(now).toEqual(trees.previous);
  } else {
    // The backup's items are restored; what it does not select (remote media caches) stays.
    expect(without(withoutSkipped(now), 'homeserver.db')).toEqual(
      without(trees.backedUp, 'homeserver.db'),
    );
    expect(onlySkipped(now)).toEqual(onlySkipped(trees.previous));
    expect(inspectSqliteDb(path.join(dataDir, 'homeserver.db'))).toMatchObject({
      oneTimeKeys: 0,
      integrity: 'ok',
    });
  }
}

const outcomeOf = (expected: 'previous' | 'restored') =>
  expected === 'previous' ? 'rolled-back' : 'completed';

describe('a swap killed at each phase is resolved by the next operation', () => {
  test.each(INTERRUPTIONS.map((at) => [at.label, at] as const))(
    'killed when %s: the next create resolves it and backs up a whole state',
    async (_label, at) => {
      const { store, dataDir, previous, backedUp } = await interruptedRestore(at);
      // The staging dir the journal names survives a leftover removal.
      await runCommand(new LocalWorkload(), removeLeftoversCommand(dataDir), 'leftovers');
      const created = await engineOn(store, dataDir).create({ id: 'after' });
      expect(created.swapRecovery).toMatchObject({
        outcome: outcomeOf(at.expect),
        backupId: 'b',
      });
      await expectResolved(dataDir, at.expect, { previous, backedUp });
    },
    60_000,
  );

  test.each([INTERRUPTIONS[1]!, INTERRUPTIONS[4]!].map((at) => [at.label, at] as const))(
    'killed when %s: the next restore resolves it first, then restores',
    async (_label, at) => {
      const { store, dataDir, previous, backedUp } = await interruptedRestore(at);
      const restored = await engineOn(store, dataDir).restore({ id: 'b' });
      expect(restored.swapRecovery).toMatchObject({ outcome: outcomeOf(at.expect) });
      await expectResolved(dataDir, 'restored', { previous, backedUp });
    },
    60_000,
  );

  test.each([INTERRUPTIONS[3]!, INTERRUPTIONS[6]!].map((at) => [at.label, at] as const))(
    "killed when %s: prune's leftover removal resolves it",
    async (_label, at) => {
      const { store, dataDir, previous, backedUp } = await interruptedRestore(at);
      const pruned = await engineOn(store, dataDir).prune({});
      expect(pruned).toMatchObject({
        leftoversRemoved: true,
        swapRecovery: { outcome: outcomeOf(at.expect), backupId: 'b' },
      });
      await expectResolved(dataDir, at.expect, { previous, backedUp });
    },
    60_000,
  );

  test('a journal that cannot be read: create refuses the data dir', async () => {
    const store = new MemoryStore();
    const dataDir = (await tmpDir('swap-journal-bad')).path;
    await makeSynapseTree(dataDir, { mediaFiles: 1 });
    await fsp.writeFile(path.join(dataDir, JOURNAL), 'staging=../etc\nphase=moved\n');
    await expect(engineOn(store, dataDir).create({ id: 'x' })).rejects.toMatchObject({
      code: 'unfinished-swap',
      message: expect.stringContaining('records an interrupted restore but cannot be read'),
    });
    expect(store.keys()).toEqual([]);
  });

  // The read command appends `staged=N` (-1: no staging dir), an internal count that the
  // message once quoted with the journal's text; it now says in words what is known.
  test.each([
    {
      label: 'empty',
      journal: '',
      dirs: [] as string[],
      said: 'it is empty',
      how: 'it records no step, so nothing says how far a swap got',
    },
    {
      label: 'with a phase the swap never writes, its staging dir gone',
      journal:
        'staging=.synapse-restore-20261130T0200\nprevious=.pre-restore-20261130T0200\nbackup=b7\nkeep=0\nphase=halfway\n',
      dirs: ['.pre-restore-20261130T0200'],
      said: 'its phase "halfway" is not one the swap writes; it records backup b7, its previous files in .pre-restore-20261130T0200, and its staging dir .synapse-restore-20261130T0200 is gone',
      how: 'the swap it records may be half done',
    },
    {
      label: 'of format 2 with paths outside the data dir, its phase gone',
      journal:
        'format=2\nstaging=.synapse-restore-20261130T0200\nprevious=.pre-restore-20261130T0200\nbackup=b7\nroot=/etc/synapse/example.org.signing.key\nrootdb=/var/lib/synapse/homeserver.db\nitem=media_store\n',
      dirs: ['.pre-restore-20261130T0200'],
      said: 'it records no phase; it records backup b7, its previous files in .pre-restore-20261130T0200, its paths outside the data dir /etc/synapse/example.org.signing.key, /var/lib/synapse/homeserver.db, and its staging dir .synapse-restore-20261130T0200 is gone',
      how: 'the swap it records may be half done',
    },
    {
      label: 'with a bad phase, its staging dir still there',
      journal:
        'staging=.synapse-restore-20261130T0200\nprevious=.pre-restore-20261130T0200\nbackup=b7\nphase=\n',
      dirs: ['.pre-restore-20261130T0200', '.synapse-restore-20261130T0200/homeserver.db'],
      said: 'it records no phase; it records backup b7, its previous files in .pre-restore-20261130T0200, and its staging dir .synapse-restore-20261130T0200 still holds 1 entry',
      how: 'the swap it records may be half done',
    },
  ])(
    'a journal that cannot be read ($label): restore says what it knows and what to do, not staged=-1',
    async ({ journal, dirs, said, how }) => {
      const store = new MemoryStore();
      const dataDir = (await tmpDir('swap-journal-unreadable')).path;
      await makeSynapseTree(dataDir, { mediaFiles: 1 });
      await engineOn(store, dataDir).create({ id: 'b7' });
      await fsp.writeFile(path.join(dataDir, JOURNAL), journal);
      for (const d of dirs) {
        if (d.includes('/')) {
          await fsp.mkdir(path.join(dataDir, path.dirname(d)), { recursive: true });
          await fsp.writeFile(path.join(dataDir, d), 'staged');
        } else await fsp.mkdir(path.join(dataDir, d));
      }
      const before = await snapshotTree(dataDir);
      const err = await engineOn(store, dataDir)
        .restore({ id: 'b7' })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err).toMatchObject({
        code: 'unfinished-swap',
        message: `${dataDir}/${JOURNAL} records an interrupted restore but cannot be read: ${said}`,
        remedy: {
          kind: 'advice',
          text: `${how}: compare the data dir with its .pre-restore-* dirs (the files the swap moved aside) and any .synapse-restore-* dir (restored files not yet moved in), and each path outside the data dir with its .pre-restore-<time>-<name>~ and .synapse-restore-<time>-<name> beside it; put back by hand what belongs, then remove ${JOURNAL} and run again`,
        },
      });
      expect((err as Error).message).not.toContain('staged=');
      expect(await snapshotTree(dataDir)).toEqual(before);
    },
    60_000,
  );

  // A rename the swap cannot make: media_store/local_content is a mount point (its own
  // volume, as a pod may mount it), which rename(2) refuses with EBUSY. Root only (mount).
  (process.getuid?.() === 0 ? test : test.skip)(
    'a rename that fails mid-swap fails the restore and leaves the live data whole',
    async () => {
      const store = new MemoryStore();
      const dataDir = (await tmpDir('swap-journal-ebusy')).path;
      await makeSynapseTree(dataDir, { mediaFiles: 2 });
      await engineOn(store, dataDir).create({ id: 'b' });
      await fsp.writeFile(
        path.join(dataDir, 'homeserver.yaml'),
        'server_name: "example.org"\n# new\n',
      );
      const mount = path.join(dataDir, 'media_store/local_content');
      const saved = await tmpDir('swap-journal-ebusy-media');
      spawnSync('cp', ['-a', `${mount}/.`, saved.path]);
      expect(spawnSync('mount', ['-t', 'tmpfs', 'tmpfs', mount]).status).toBe(0);
      try {
        spawnSync('cp', ['-a', `${saved.path}/.`, mount]);
        const before = await snapshotTree(dataDir);
        const err = await engineOn(store, dataDir)
          .restore({ id: 'b' })
          .then(
            () => undefined,
            (e: unknown) => e,
          );
        expect(err).toMatchObject({ message: expect.stringMatching(/moving the restored files/) });
        expect(await snapshotTree(dataDir)).toEqual(before);
        expect((await fsp.readdir(dataDir)).filter((n) => n.startsWith('.'))).toEqual([]);
      } finally {
        spawnSync('umount', [mount]);
      }
    },
    60_000,
  );
});

/** Issue #15: the same with items outside the data dir (swapped beside their paths). */
describe('a swap with items outside the data dir, killed, is resolved by the next operation', () => {
  const cases: Interruption[] = [
    {
      label: 'all live items out, nothing moved in',
      line: 'each move_in || fail moving-in',
      replacement: KILL,
      expect: 'previous',
    },
    {
      label: 'the first three staged items in (two of them outside the data dir)',
      line: 'each move_in || fail moving-in',
      replacement: `n=0; some() { n=$((n+1)); [ $n -gt 3 ] || move_in "$@"; }; each some; ${KILL}`,
      expect: 'previous',
    },
    {
      label: 'all staged items in, phase not yet "moved"',
      line: 'journal moved && rm -rf -- "$staging"',
      replacement: KILL,
      expect: 'restored',
    },
  ];

  /** Every file below the layout's root, by relative path, with the engine's names. */
  const layoutTree = async (root: string) => {
    const tree = await snapshotTree(root);
    tree.delete('var/homeserver.db');
    return tree;
  };

  test.each(cases.map((at) => [at.label, at] as const))(
    'killed when %s: the next create resolves it, beside the external paths too',
    async (_label, at) => {
      const store = new MemoryStore();
      const { root, dataDir, etc, media, db } = await packageLayout();
      await engineOn(store, dataDir).create({ id: 'x' });
      const backedUp = await layoutTree(root);
      await fsp.writeFile(path.join(etc, 'log.config'), 'changed\n');
      await fsp.rm(path.join(media, 'local_content/ab/cd/m1'));
      await fsp.writeFile(path.join(etc, 'example.org.signing.key'), 'ed25519 a_new c2VlZA\n');
      const previous = await layoutTree(root);
      const workload = new Interrupting(at);
      void engineOn(store, dataDir, { workload })
        .restore({ id: 'x' })
        .catch(() => undefined);
      await workload.over;
      await orphanLock(dataDir);
      const created = await engineOn(store, dataDir).create({ id: 'after' });
      expect(created.swapRecovery).toMatchObject({ outcome: outcomeOf(at.expect), backupId: 'x' });
      // Completed, it names the paths outside the data dir it replaced; rolled back, none.
      const outside = [
        `${etc}/example.org.signing.key`,
        `${etc}/log.config`,
        `${etc}/bridge.yaml`,
        `${media}/local_content`,
        `${media}/local_thumbnails`,
        db,
      ];
      expect(created.swapRecovery?.replacedOutside).toEqual(
        at.expect === 'restored' ? outside : undefined,
      );
      expect(describeSwapRecovery(created.swapRecovery!)).toBe(
        at.expect === 'restored'
          ? `an interrupted restore of backup x (phase moving-in) was completed: the restored files stay, also at ${outside.join(', ')}`
          : `an interrupted restore of backup x (phase moving-in) was rolled back: the previous files are back`,
      );
      // The data dir, the external dirs: wholly one state, nothing of the engine's left.
      expect(await layoutTree(root)).toEqual(at.expect === 'previous' ? previous : backedUp);
      expect(inspectSqliteDb(db)).toMatchObject({
        integrity: 'ok',
        oneTimeKeys: at.expect === 'previous' ? 5 : 0,
      });
    },
    60_000,
  );
});

/**
 * Kept external copies end in `~` (config loaders skip them); an engine before that kept
 * them without it. Its swap, killed, is still resolved: the copies are renamed as it named
 * them before the kill, then the next operation rolls back or completes by those names.
 */
describe("an earlier engine's external copies (no `~`), killed mid-swap, are resolved by the next operation", () => {
  const asBefore =
    `legacy() { item_paths "$1" "$2"; case $1 in root|rootdb) for s in '' -wal -shm -journal; do ` +
    'if there "$V$s"; then mv -- "$V$s" "${V%?}$s" || return 1; fi; done ;; esac; }; each legacy';
  const cases: Interruption[] = [
    {
      label: 'all live items out, nothing moved in',
      line: 'each move_in || fail moving-in',
      replacement: `${asBefore} && ${KILL}`,
      expect: 'previous',
    },
    {
      label: 'all staged items in, phase not yet "moved"',
      line: 'journal moved && rm -rf -- "$staging"',
      replacement: `${asBefore} && ${KILL}`,
      expect: 'restored',
    },
  ];

  test.each(cases.map((at) => [at.label, at] as const))(
    'killed when %s: the next create resolves it by those names',
    async (_label, at) => {
      const store = new MemoryStore();
      const { root, dataDir, etc, media } = await packageLayout();
      await engineOn(store, dataDir).create({ id: 'x' });
      const backedUp = await snapshotTree(root);
      backedUp.delete('var/homeserver.db');
      await fsp.writeFile(path.join(etc, 'log.config'), 'changed\n');
      await fsp.rm(path.join(media, 'local_content/ab/cd/m1'));
      const previous = await snapshotTree(root);
      previous.delete('var/homeserver.db');
      const workload = new Interrupting(at);
      void engineOn(store, dataDir, { workload })
        .restore({ id: 'x' })
        .catch(() => undefined);
      await workload.over;
      // What the earlier engine left beside an external path: its name without the `~`.
      expect((await fsp.readdir(etc)).filter((n) => n.startsWith('.pre-restore-'))).toEqual(
        expect.arrayContaining([expect.stringMatching(/^\.pre-restore-\d{8}T\d+Z-log\.config$/)]),
      );
      await orphanLock(dataDir);
      const created = await engineOn(store, dataDir).create({ id: 'after' });
      expect(created.swapRecovery).toMatchObject({ outcome: outcomeOf(at.expect), backupId: 'x' });
      const tree = await snapshotTree(root);
      tree.delete('var/homeserver.db');
      expect(tree).toEqual(at.expect === 'previous' ? previous : backedUp);
    },
    60_000,
  );
});

test("an earlier engine's journal (format 1: it moved everything) is still rolled back as it was", async () => {
  const store = new MemoryStore();
  const dataDir = (await tmpDir('swap-journal-format1')).path;
  await makeSynapseTree(dataDir, { mediaFiles: 2 });
  const before = await snapshotTree(dataDir);
  // Half-way through moving in: every live entry in the previous dir (the old swap moved
  // them all, caches included), one restored file in place, one still staged.
  const staging = '.synapse-restore-20260101T000000000Z';
  const previous = '.pre-restore-20260101T000000000Z';
  await fsp.mkdir(path.join(dataDir, previous));
  await fsp.mkdir(path.join(dataDir, staging));
  for (const name of await fsp.readdir(dataDir)) {
    if (name.startsWith('.')) continue;
    await fsp.rename(path.join(dataDir, name), path.join(dataDir, previous, name));
  }
  await fsp.writeFile(
    path.join(dataDir, 'homeserver.yaml'),
    'server_name: "example.org"\n# restored\n',
  );
  await fsp.writeFile(
    path.join(dataDir, staging, 'example.org.signing.key'),
    'ed25519 a_r c2VlZA\n',
  );
  await fsp.writeFile(
    path.join(dataDir, JOURNAL),
    `staging=${staging}\nprevious=${previous}\nbackup=old\nkeep=0\nphase=moving-in\n`,
  );
  const created = await engineOn(store, dataDir).create({ id: 'after-format1' });
  expect(created.swapRecovery).toMatchObject({ outcome: 'rolled-back', backupId: 'old' });
  expect(await snapshotTree(dataDir)).toEqual(before);
});
