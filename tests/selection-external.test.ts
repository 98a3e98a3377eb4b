/**
 * Issue #15: paths outside the data dir (a package or Ansible layout: media in
 * /var/lib, the signing key and log config in /etc, the database elsewhere; a
 * media store that is a symlink to another volume) are archived as
 * `@external/<real path>`, listed in the manifest's roots (format version 2),
 * and restored where homeserver.yaml says: through the symlink, which stays.
 * Only entries inside those roots are accepted. Local workload, in-memory store.
 */
import { spawnSync } from 'node:child_process';
import { promises as fsp, realpathSync } from 'node:fs';
import path from 'node:path';
import { removeLeftoversCommand } from '../src/backup/scripts';
import { ArchiveRejectedError, TarScanner, confinedEntryPolicy } from '../src/backup/tar';
import { runCommand } from '../src/workload/command';
import { LocalWorkload } from '../src/workload/local';
import type { Manifest } from '../src/backup/manifest';
import { buildTar } from './support/backups';
import { MemoryStore } from './support/memory-store';
import { memoryEngine } from './support/memory-engine';
import { describeWithPeers, peerPath, tmpDir } from './support/peers';
import { inspectSqliteDb } from './support/synapse-tree';
import { archiveNames, manifestOf, packageLayout, write } from './support/selection';
import { MutateAtMarker } from './support/workloads';

/** Names in `dir` the engine made (staging or previous copies): none may be left. */
async function bookkeeping(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir)).filter((n) => /^\.(synapse-|pre-restore)/.test(n));
}

describe('paths outside the data dir', () => {
  test('a package layout: create archives each where homeserver.yaml says; restore puts each back there', async () => {
    const store = new MemoryStore();
    const { root, dataDir, etc, media, db } = await packageLayout();
    const created = await memoryEngine(store, dataDir).create({ id: 'pkg' });
    expect(created.missing).toBeUndefined();
    const x = `@external${root}`;
    expect((await archiveNames(store, dataDir, 'pkg')).sort()).toEqual(
      [
        './',
        'homeserver.yaml',
        `${x}/etc/example.org.signing.key`,
        `${x}/etc/log.config`,
        `${x}/etc/bridge.yaml`,
        `${x}/media/local_content/`,
        `${x}/media/local_content/ab/`,
        `${x}/media/local_content/ab/cd/`,
        `${x}/media/local_content/ab/cd/m1`,
        `${x}/media/local_thumbnails/`,
        `${x}/media/local_thumbnails/ab/`,
        `${x}/media/local_thumbnails/ab/cd/`,
        `${x}/media/local_thumbnails/ab/cd/t1`,
        `${x}/var/homeserver.db`,
      ].sort(),
    );
    const manifest = await manifestOf(store, 'pkg');
    expect(manifest.version).toBe(2);
    expect(manifest.signingKeyId).toBe('ed25519:a_pkg');
    expect(manifest.roots).toEqual(
      [
        `${etc}/example.org.signing.key`,
        `${etc}/log.config`,
        `${etc}/bridge.yaml`,
        `${media}/local_content`,
        `${media}/local_thumbnails`,
        db,
      ].map((p) => ({ name: `@external${p}`, path: p })),
    );
    expect(manifest.databases).toEqual([`@external${db}`]);
    await expect(memoryEngine(store, dataDir).verify('pkg')).resolves.toMatchObject({
      files: created.files,
    });

    // Each changes or goes; an old WAL sits beside the database.
    await fsp.rm(path.join(etc, 'example.org.signing.key'));
    await fsp.writeFile(path.join(etc, 'log.config'), 'changed\n');
    await fsp.rm(path.join(media, 'local_content'), { recursive: true });
    await write(path.join(media, 'local_thumbnails/new'), 'after backup');
    await fsp.rm(db);
    await fsp.writeFile(`${db}-wal`, 'stale wal of another database');
    const restored = await memoryEngine(store, dataDir).restore({ id: 'pkg' });
    expect(restored.oneTimeKeysRemoved).toBe(5);
    // The result names every outside path it replaced (the manifest's roots, in order).
    expect(restored.replacedOutside).toEqual(manifest.roots!.map((r) => r.path));
    expect(await fsp.readFile(path.join(etc, 'example.org.signing.key'), 'utf8')).toBe(
      'ed25519 a_pkg c2VlZA\n',
    );
    expect((await fsp.stat(path.join(etc, 'example.org.signing.key'))).mode & 0o777).toBe(0o600);
    expect(await fsp.readFile(path.join(etc, 'log.config'), 'utf8')).toBe('version: 1\n');
    expect(await fsp.readFile(path.join(media, 'local_content/ab/cd/m1'), 'utf8')).toBe(
      'media one',
    );
    expect(await fsp.readdir(path.join(media, 'local_thumbnails'))).toEqual(['ab']);
    expect(inspectSqliteDb(db)).toEqual({ events: 300, oneTimeKeys: 0, integrity: 'ok' });
    expect(await fsp.stat(`${db}-wal`).catch(() => 'gone')).toBe('gone');
    // Not selected: untouched. Nothing of the engine's is left anywhere.
    expect(await fsp.readFile(path.join(etc, 'other.conf'), 'utf8')).toBe('not selected\n');
    expect(await fsp.readFile(path.join(media, 'remote_content/x/r1'), 'utf8')).toBe('remote');
    for (const d of [dataDir, etc, media, path.dirname(db)])
      expect(await bookkeeping(d)).toEqual([]);
  });

  test('keep-previous keeps the replaced external items beside their paths', async () => {
    const store = new MemoryStore();
    const { dataDir, etc, media } = await packageLayout();
    await memoryEngine(store, dataDir).create({ id: 'kp' });
    await fsp.writeFile(path.join(etc, 'log.config'), 'changed\n');
    const restored = await memoryEngine(store, dataDir).restore({ id: 'kp', keepPrevious: true });
    const stamp = path.basename(restored.previousPath!);
    // Ending in `~`: a config directory's loader skips it (see the real Synapse's, below).
    expect(restored.externalPreviousPaths).toEqual(
      expect.arrayContaining([`${etc}/${stamp}-log.config~`, `${media}/${stamp}-local_content~`]),
    );
    expect(await fsp.readFile(`${etc}/${stamp}-log.config~`, 'utf8')).toBe('changed\n');
    expect(restored.replacedOutside).toEqual(
      expect.arrayContaining([`${etc}/log.config`, `${media}/local_content`]),
    );
    expect(await fsp.readFile(path.join(etc, 'log.config'), 'utf8')).toBe('version: 1\n');
  });

  test('restored into another data dir, a backup with external paths is refused unless forced', async () => {
    const store = new MemoryStore();
    const { dataDir, etc } = await packageLayout();
    await memoryEngine(store, dataDir).create({ id: 'elsewhere' });
    await fsp.writeFile(path.join(etc, 'log.config'), 'changed\n');
    const scratch = (await tmpDir('scratch-restore')).path;
    await expect(memoryEngine(store, scratch).restore({ id: 'elsewhere' })).rejects.toMatchObject({
      code: 'wrong-server',
      message: expect.stringContaining(
        `backup elsewhere was taken of ${dataDir} and also restores ${etc}/example.org.signing.key, `,
      ),
      remedy: {
        kind: 'run-again',
        option: 'force',
        when: 'if those paths are the ones to replace',
      },
    });
    expect(await fsp.readdir(scratch)).toEqual([]);
    expect(await fsp.readFile(path.join(etc, 'log.config'), 'utf8')).toBe('changed\n');
    await memoryEngine(store, scratch).restore({ id: 'elsewhere', force: true });
    expect(await fsp.readFile(path.join(etc, 'log.config'), 'utf8')).toBe('version: 1\n');
    expect(await fsp.readdir(scratch)).toContain('homeserver.yaml');
  });

  test('a symlinked media store: backed up from where it points, restored through it; the symlink stays', async () => {
    const store = new MemoryStore();
    const root = realpathSync((await tmpDir('symlinked-media')).path);
    const dataDir = path.join(root, 'data');
    const volume = path.join(root, 'mnt/media');
    await write(path.join(dataDir, 'homeserver.yaml'), 'server_name: "example.org"\n');
    await write(path.join(dataDir, 'example.org.signing.key'), 'ed25519 a_l c2VlZA\n');
    await write(path.join(volume, 'local_content/ab/cd/m1'), 'on another volume');
    await fsp.symlink(volume, path.join(dataDir, 'media_store'));
    await memoryEngine(store, dataDir).create({ id: 'link' });
    const names = await archiveNames(store, dataDir, 'link');
    expect(names).toContain(`@external${volume}/local_content/ab/cd/m1`);
    expect(names.filter((n) => n.startsWith('media_store'))).toEqual([]);
    await fsp.rm(path.join(volume, 'local_content/ab/cd/m1'));
    await memoryEngine(store, dataDir).restore({ id: 'link' });
    expect((await fsp.lstat(path.join(dataDir, 'media_store'))).isSymbolicLink()).toBe(true);
    expect(await fsp.readFile(path.join(volume, 'local_content/ab/cd/m1'), 'utf8')).toBe(
      'on another volume',
    );
    expect(await bookkeeping(volume)).toEqual([]);
  });

  test('homeserver.yaml and the signing key linked from a config dir: backed up from there, restored through the links', async () => {
    const store = new MemoryStore();
    const root = realpathSync((await tmpDir('linked-config')).path);
    const dataDir = path.join(root, 'data');
    const etc = path.join(root, 'etc/synapse');
    await write(path.join(etc, 'homeserver.yaml'), 'server_name: "example.org"\n');
    await write(path.join(etc, 'example.org.signing.key'), 'ed25519 a_ln c2VlZA\n', 0o600);
    await fsp.mkdir(dataDir);
    await fsp.symlink(path.join(etc, 'homeserver.yaml'), path.join(dataDir, 'homeserver.yaml'));
    await fsp.symlink(
      '../etc/synapse/example.org.signing.key',
      path.join(dataDir, 'example.org.signing.key'),
    );
    await write(path.join(dataDir, 'media_store/local_content/m'), 'media');
    const created = await memoryEngine(store, dataDir).create({ id: 'ln' });
    expect(created.missing).toBeUndefined();
    expect((await archiveNames(store, dataDir, 'ln')).sort()).toEqual(
      [
        './',
        'media_store/',
        'media_store/local_content/',
        'media_store/local_content/m',
        `@external${etc}/homeserver.yaml`,
        `@external${etc}/example.org.signing.key`,
      ].sort(),
    );
    expect(await manifestOf(store, 'ln')).toMatchObject({ signingKeyId: 'ed25519:a_ln' });
    await fsp.writeFile(path.join(etc, 'example.org.signing.key'), 'ed25519 a_other c2VlZA\n');
    await memoryEngine(store, dataDir).restore({ id: 'ln' });
    expect(await fsp.readFile(path.join(etc, 'example.org.signing.key'), 'utf8')).toBe(
      'ed25519 a_ln c2VlZA\n',
    );
    for (const name of ['homeserver.yaml', 'example.org.signing.key']) {
      expect((await fsp.lstat(path.join(dataDir, name))).isSymbolicLink()).toBe(true);
    }
    expect(await bookkeeping(etc)).toEqual([]);
  });

  test('restore accepts @external entries only inside the manifest roots, and no symlink between roots', async () => {
    const scan = async (entries: Parameters<typeof buildTar>[0], roots: string[]) => {
      const scanner = new TarScanner(confinedEntryPolicy({ roots }));
      scanner.resume();
      scanner.end(await buildTar(entries));
      return new Promise<string>((resolve) => {
        scanner.on('error', (e: Error) =>
          resolve(e instanceof ArchiveRejectedError ? e.message : `other: ${e.message}`),
        );
        scanner.on('end', () => resolve('accepted'));
      });
    };
    const roots = ['@external/etc/synapse/k.key', '@external/srv/media/local_content'];
    expect(
      await scan(
        [
          { name: '@external/etc/synapse/k.key', content: 'k' },
          { name: '@external/srv/media/local_content/a', content: 'a' },
          { name: '@external/srv/media/local_content/l', type: 'symlink', linkname: 'a' },
        ],
        roots,
      ),
    ).toBe('accepted');
    expect(await scan([{ name: '@external/etc/passwd', content: 'x' }], roots)).toBe(
      'entry "@external/etc/passwd" is outside the data directory and not one of the paths the backup\'s manifest lists: refused',
    );
    expect(await scan([{ name: '@external/etc/synapse/k.key', content: 'k' }], [])).toMatch(
      /not one of the paths the backup's manifest lists/,
    );
    expect(
      await scan(
        [
          {
            name: '@external/srv/media/local_content/l',
            type: 'symlink',
            linkname: '../../../etc/synapse/k.key',
          },
        ],
        roots,
      ),
    ).toBe(
      'symlink "@external/srv/media/local_content/l" points out of "@external/srv/media/local_content": refused',
    );
    expect(
      await scan(
        [{ name: 'media_store/l', type: 'symlink', linkname: '../@external/etc/synapse/k.key' }],
        roots,
      ),
    ).toBe('symlink "media_store/l" points out of the data directory: refused');
  });

  test("a killed restore's copies staged beside external paths go with its staging dir", async () => {
    const root = realpathSync((await tmpDir('external-leftovers')).path);
    const dataDir = path.join(root, 'data');
    const staging = '.synapse-restore-20260101T000000000Z';
    await write(path.join(dataDir, staging, '.synapse-restore-roots'), `${root}/etc/k.key\n`);
    await write(path.join(root, 'etc', `${staging}-k.key`), 'staged');
    await write(path.join(root, 'etc/k.key'), 'live');
    await runCommand(new LocalWorkload(), removeLeftoversCommand(dataDir), 'leftovers');
    expect(await fsp.readdir(dataDir)).toEqual([]);
    expect(await fsp.readdir(path.join(root, 'etc'))).toEqual(['k.key']);
  });
});

describe("create's entry policy and a live server, outside the data dir", () => {
  test('a FIFO in an outside media store is left out and named; media vanishing there are warnings', async () => {
    const store = new MemoryStore();
    const { root, dataDir, media } = await packageLayout();
    const lc = path.join(media, 'local_content');
    spawnSync('mkfifo', [path.join(lc, 'ab/p')]);
    const gone = path.join(lc, 'gone');
    for (const f of ['f1', 'f2', 'f3'])
      await write(path.join(gone, f), Buffer.alloc(2 << 20, 7).toString());
    const x = `@external${root}/media/local_content`;
    // Held once tar has named the directory: it is removed while tar waits on its pipe.
    const held = new MutateAtMarker(new LocalWorkload(), Buffer.from(`local_content/gone/`), () =>
      fsp.rm(gone, { recursive: true }),
    );
    const created = await memoryEngine(store, dataDir, { workload: held }).create({ id: 'live' });
    expect(held.mutated).toBe(true);
    expect(created.skipped).toEqual([{ path: `${x}/ab/p`, kind: 'fifo' }]);
    // tar names them through the selection's root link; the warnings by their archive names.
    expect(created.warnings.length).toBeGreaterThan(0);
    for (const w of created.warnings) {
      expect(w.path.startsWith(`${x}/gone`) ? x : w.path).toBe(x);
      expect(['changed', 'removed']).toContain(w.kind);
    }
    expect((await manifestOf(store, 'live')).skipped).toEqual(created.skipped);
    await expect(memoryEngine(store, dataDir).verify('live')).resolves.toMatchObject({
      sha256: created.sha256,
    });
    await fsp.rm(lc, { recursive: true });
    await memoryEngine(store, dataDir).restore({ id: 'live' });
    expect(await fsp.readFile(path.join(lc, 'ab/cd/m1'), 'utf8')).toBe('media one');
    await expect(fsp.lstat(path.join(lc, 'ab/p'))).rejects.toThrow(/ENOENT/);
  });
});

describe('the manifest cannot widen what a restore replaces (its selection is bound to the encrypted header)', () => {
  const refusal = (id: string) =>
    `backup ${id}'s manifest does not match its encrypted header: the items, roots or data dir it lists were changed after the backup was made; refused, nothing was changed`;

  test('a root widened to its parent, or an item to its folder, is refused by verify and restore; nothing changes', async () => {
    const store = new MemoryStore();
    const { dataDir, media } = await packageLayout();
    await memoryEngine(store, dataDir).create({ id: 'bound' });
    const key = store.key('bound.manifest.json');
    const original = await store.getText(key);
    const m = JSON.parse(original) as Manifest;
    // Someone who can write the bucket, without the passphrase: the whole media dir.
    const widened = {
      ...m,
      roots: [{ name: `@external${media}`, path: media }],
      items: m.items!.map((i) => (i.endsWith('/media/local_content') ? `@external${media}` : i)),
    };
    await store.putText(key, JSON.stringify(widened), 'application/json');
    await write(path.join(media, 'precious.txt'), 'not in any backup');
    await expect(memoryEngine(store, dataDir).verify('bound')).rejects.toMatchObject({
      code: 'corrupt',
      message: refusal('bound'),
    });
    await expect(memoryEngine(store, dataDir).restore({ id: 'bound' })).rejects.toMatchObject({
      code: 'corrupt',
      message: refusal('bound'),
    });
    expect(await fsp.readFile(path.join(media, 'precious.txt'), 'utf8')).toBe('not in any backup');
    expect(await fsp.readFile(path.join(media, 'remote_content/x/r1'), 'utf8')).toBe('remote');

    // Items dropped (to make it look like an older engine's backup): refused too.
    const bare: Partial<Manifest> = { ...m };
    delete bare.items;
    delete bare.databases;
    await store.putText(key, JSON.stringify(bare), 'application/json');
    await expect(memoryEngine(store, dataDir).restore({ id: 'bound' })).rejects.toMatchObject({
      message: refusal('bound'),
    });
    // The manifest as written: the restore runs.
    await store.putText(key, original, 'application/json');
    await expect(memoryEngine(store, dataDir).restore({ id: 'bound' })).resolves.toMatchObject({
      backupId: 'bound',
    });
  });

  test("a data dir's item widened to its folder (media_store for media_store/local_content) is refused", async () => {
    const store = new MemoryStore();
    const dataDir = (await tmpDir('bound-items')).path;
    await write(path.join(dataDir, 'homeserver.yaml'), 'server_name: "example.org"\n');
    await write(path.join(dataDir, 'example.org.signing.key'), 'ed25519 a_x c2VlZA\n');
    await write(path.join(dataDir, 'media_store/local_content/ab/m1'), 'media');
    await write(path.join(dataDir, 'media_store/remote_content/x/r1'), 'remote cache');
    await memoryEngine(store, dataDir).create({ id: 'items' });
    const key = store.key('items.manifest.json');
    const m = JSON.parse(await store.getText(key)) as Manifest;
    expect(m.items).toContain('media_store/local_content');
    const widened = {
      ...m,
      items: m.items!.map((i) => (i === 'media_store/local_content' ? 'media_store' : i)),
    };
    await store.putText(key, JSON.stringify(widened), 'application/json');
    await expect(memoryEngine(store, dataDir).restore({ id: 'items' })).rejects.toMatchObject({
      message: refusal('items'),
    });
    expect(await fsp.readFile(path.join(dataDir, 'media_store/remote_content/x/r1'), 'utf8')).toBe(
      'remote cache',
    );
  });
});

/**
 * A kept copy beside a file of a config directory (a Debian `conf.d`) must not be
 * loaded with it: the real Synapse's loader (synapse.config._base.find_config_files,
 * which reads every `*.yaml` of a directory, dot-files included) is asked.
 */
describeWithPeers(['synapse'])("kept external copies and Synapse's config directory", () => {
  test("keep-previous beside a config dir's *.yaml: Synapse loads the restored file only", async () => {
    const store = new MemoryStore();
    const { dataDir, etc } = await packageLayout();
    await memoryEngine(store, dataDir).create({ id: 'confd' });
    await fsp.writeFile(path.join(etc, 'bridge.yaml'), 'id: changed\n');
    const restored = await memoryEngine(store, dataDir).restore({
      id: 'confd',
      keepPrevious: true,
    });
    const kept = `${etc}/${path.basename(restored.previousPath!)}-bridge.yaml~`;
    expect(restored.externalPreviousPaths).toContain(kept);
    expect(await fsp.readFile(kept, 'utf8')).toBe('id: changed\n');
    const found = spawnSync(
      peerPath('synapse'),
      [
        '-c',
        'import json, sys; from synapse.config._base import find_config_files; print(json.dumps(find_config_files([sys.argv[1]])))',
        etc,
      ],
      { encoding: 'utf8' },
    );
    expect(found.status).toBe(0);
    expect(JSON.parse(found.stdout.trim().split('\n').at(-1)!)).toEqual([`${etc}/bridge.yaml`]);
  });
});
