/**
 * The restore's data dir must be Synapse's, new or empty: one that holds files but
 * none of Synapse's (a compose file's folder, the media store itself) is refused
 * before anything is staged, unless forced. And a kept previous dir is the data
 * dir's owner's, so that Synapse's user can remove it. Real parts: this host's sh,
 * tar and python3 (the local workload), the in-memory store; runs as root, as the
 * CLI does on a server (the owners below are the official image's 991).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { memoryEngine, memorySynapseDir } from './support/memory-engine';
import { MemoryStore } from './support/memory-store';
import { snapshotTree } from './support/synapse-tree';

let root: string;
beforeEach(() => {
  root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'restore-target-')));
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

/** Every entry's type, mode, content and owner, and the directory's own mode and owner. */
async function stateOf(dir: string): Promise<unknown> {
  const owner = (p: string) => {
    const st = fs.lstatSync(p);
    return `${st.uid}:${st.gid} ${(st.mode & 0o7777).toString(8)}`;
  };
  const tree = await snapshotTree(dir);
  return {
    dir: owner(dir),
    tree: [...tree].map(([rel, entry]) => [rel, entry, owner(path.join(dir, rel))]),
  };
}

/** A backup `id` of a Synapse data dir owned by 991:991, mode 0700 (the official image's). */
async function backupOf991(store: MemoryStore, id: string): Promise<void> {
  const src = await memorySynapseDir('restore-target-src');
  try {
    fs.chmodSync(src, 0o700);
    for (const rel of ['', ...fs.readdirSync(src, { recursive: true }).map(String)]) {
      fs.lchownSync(path.join(src, rel), 991, 991);
    }
    const engine = memoryEngine(store, src);
    await engine.create({ id });
    engine.close();
  } finally {
    fs.rmSync(src, { recursive: true, force: true });
  }
}

const SYNAPSE_FILES = 'no homeserver.yaml, signing key, SQLite database or media store';

describe("a data dir that holds files but none of Synapse's", () => {
  it("a compose file's folder is refused, naming what is there, and left as it was; force restores beside those files", async () => {
    const store = new MemoryStore();
    await backupOf991(store, 'r');
    const deploy = path.join(root, 'deploy');
    fs.mkdirSync(path.join(deploy, 'data'), { recursive: true });
    fs.chmodSync(deploy, 0o755);
    fs.writeFileSync(path.join(deploy, 'docker-compose.yml'), 'services: {}\n');
    fs.writeFileSync(path.join(deploy, '.env'), 'POSTGRES_PASSWORD=x\n');
    fs.writeFileSync(path.join(deploy, 'data', 'homeserver.yaml'), 'server_name: example.org\n');
    const before = await stateOf(deploy);

    const engine = memoryEngine(store, deploy);
    await expect(engine.restore({ id: 'r', services: [] })).rejects.toMatchObject({
      code: 'foreign-data-dir',
      message: `the data dir ${deploy} holds none of Synapse's files (${SYNAPSE_FILES}), only .env, data, docker-compose.yml: restoring backup r there would put Synapse's files among them and give ${deploy} the backed-up data dir's owner and mode; nothing was restored`,
      remedy: { kind: 'restore-dir', dir: deploy },
    });
    expect(await stateOf(deploy)).toEqual(before);

    const forced = await engine.restore({ id: 'r', services: [], force: true });
    engine.close();
    expect(forced.files).toBeGreaterThan(0);
    expect(fs.readdirSync(deploy).sort()).toEqual(
      [
        '.env',
        'data',
        'docker-compose.yml',
        'example.org.log.config',
        'example.org.signing.key',
        'homeserver.db',
        'homeserver.yaml',
        'media_store',
      ].sort(),
    );
    expect(fs.readFileSync(path.join(deploy, 'docker-compose.yml'), 'utf8')).toBe('services: {}\n');
    const st = fs.statSync(deploy);
    expect([st.uid, st.gid, (st.mode & 0o7777).toString(8)]).toEqual([991, 991, '700']);
  });

  it('the media store itself is refused, naming its parent as the likely data dir', async () => {
    const store = new MemoryStore();
    await backupOf991(store, 'm');
    const media = path.join(root, 'srv', 'media_store');
    for (const folder of ['local_content/ab', 'local_thumbnails', 'remote_content', 'url_cache']) {
      fs.mkdirSync(path.join(media, folder), { recursive: true });
    }
    fs.writeFileSync(path.join(media, 'local_content/ab/cdefgh'), 'a medium');
    const before = await stateOf(media);
    const engine = memoryEngine(store, media);
    await expect(engine.restore({ id: 'm', services: [] })).rejects.toMatchObject({
      code: 'foreign-data-dir',
      message: `the data dir ${media} holds none of Synapse's files (${SYNAPSE_FILES}), only local_content, local_thumbnails, remote_content, url_cache (a media store's folders: Synapse's data dir is likely ${path.join(root, 'srv')}): restoring backup m there would put Synapse's files among them and give ${media} the backed-up data dir's owner and mode; nothing was restored`,
    });
    engine.close();
    expect(await stateOf(media)).toEqual(before);
  });

  it('more than five entries: five named, the rest counted; checked before the server name', async () => {
    const store = new MemoryStore();
    await backupOf991(store, 'v');
    const varLib = path.join(root, 'var-lib');
    const names = ['apt', 'docker', 'dpkg', 'git', 'misc', 'systemd', 'ucf'];
    for (const name of names) fs.mkdirSync(path.join(varLib, name), { recursive: true });
    const engine = memoryEngine(store, varLib);
    // Another server's backup would need force too: the wrong directory is named first.
    await expect(
      engine.restore({ id: 'v', services: [], expectedServerName: 'other.example' }),
    ).rejects.toMatchObject({
      code: 'foreign-data-dir',
      message: expect.stringContaining(
        `, only apt, docker, dpkg, git, misc and 2 more: restoring backup v there`,
      ),
    });
    engine.close();
    expect(fs.readdirSync(varLib).sort()).toEqual(names);
  });
});

describe('data dirs a restore goes to', () => {
  const restoresInto = async (store: MemoryStore, id: string, dir: string) => {
    const engine = memoryEngine(store, dir);
    try {
      const result = await engine.restore({ id, services: [] });
      expect(result.files).toBeGreaterThan(0);
    } finally {
      engine.close();
    }
    expect(fs.readFileSync(path.join(dir, 'homeserver.yaml'), 'utf8')).toContain('example.org');
  };

  it("an empty one, and one with only lost+found and the engine's own leftovers (a fresh volume)", async () => {
    const store = new MemoryStore();
    await backupOf991(store, 'e');
    const empty = path.join(root, 'empty');
    fs.mkdirSync(empty);
    await restoresInto(store, 'e', empty);

    const volume = path.join(root, 'volume');
    fs.mkdirSync(path.join(volume, 'lost+found'), { recursive: true });
    fs.mkdirSync(path.join(volume, '.pre-restore-20260101T000000000Z', 'media_store'), {
      recursive: true,
    });
    fs.mkdirSync(path.join(volume, '.synapse-restore-20260101T000000000Z'));
    await restoresInto(store, 'e', volume);
    expect(fs.existsSync(path.join(volume, 'lost+found'))).toBe(true);
  });

  it("one holding any of Synapse's files: homeserver.yaml, a signing key, the database or the media store, beside other files", async () => {
    const store = new MemoryStore();
    await backupOf991(store, 's');
    const cases: [string, (dir: string) => void][] = [
      [
        'yaml',
        (d) => fs.writeFileSync(path.join(d, 'homeserver.yaml'), 'server_name: "example.org"\n'),
      ],
      ['key', (d) => fs.writeFileSync(path.join(d, 'old.signing.key'), 'ed25519 a_x AAAA\n')],
      ['db', (d) => fs.writeFileSync(path.join(d, 'homeserver.db'), '')],
      [
        'media',
        (d) => fs.mkdirSync(path.join(d, 'media_store/local_content'), { recursive: true }),
      ],
    ];
    for (const [name, make] of cases) {
      const dir = path.join(root, name);
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(dir, 'homeserver.log'), 'an operator file\n');
      make(dir);
      await restoresInto(store, 's', dir);
      expect(fs.readFileSync(path.join(dir, 'homeserver.log'), 'utf8')).toBe('an operator file\n');
    }
  });
});

describe('a kept previous dir', () => {
  it("takes the data dir's owner, as do the folders made in it; the files in it keep theirs", async () => {
    const store = new MemoryStore();
    await backupOf991(store, 'k');
    const data = await memorySynapseDir('restore-target-kept');
    try {
      for (const rel of ['', ...fs.readdirSync(data, { recursive: true }).map(String)]) {
        fs.lchownSync(path.join(data, rel), 991, 991);
      }
      const odd = path.join(data, 'media_store/local_content/ab/cd/file0');
      fs.chownSync(odd, 1234, 1234);
      const engine = memoryEngine(store, data);
      const result = await engine.restore({ id: 'k', services: [], keepPrevious: true });
      engine.close();
      const previous = result.previousPath!;
      expect(path.basename(previous)).toMatch(/^\.pre-restore-/);
      const ownerOf = (p: string) => `${fs.lstatSync(p).uid}:${fs.lstatSync(p).gid}`;
      expect(ownerOf(previous)).toBe('991:991');
      expect((fs.statSync(previous).mode & 0o777).toString(8)).toBe('700');
      expect(ownerOf(path.join(previous, 'media_store'))).toBe('991:991');
      expect(ownerOf(path.join(previous, 'media_store/local_content/ab/cd/file0'))).toBe(
        '1234:1234',
      );
      expect(ownerOf(path.join(previous, 'homeserver.yaml'))).toBe('991:991');
    } finally {
      fs.rmSync(data, { recursive: true, force: true });
    }
  });
});
