/**
 * A new user's three restores that replaced a running Synapse's database and
 * media, exit 0 (the check looked only for `synapse.app.homeserver` processes
 * naming the data dir's homeserver.yaml):
 * 1. Synapse as in a container: its own mount namespace, the data dir
 *    bind-mounted at /srv/data, argv naming /srv/data/homeserver.yaml;
 * 2. Synapse started by pip's console script (`bin/synapse_homeserver`);
 * 3. a restore into a copy's data dir whose generated homeserver.yaml names the
 *    ORIGINAL server's files (backed up as `@external/...`) while that server runs.
 * Now each is refused (src/backup/running.ts): by the process's command line
 * (both names; `--config-root` maps its paths) or, whatever its name or mount
 * namespace, by the database it holds open (device and inode). Real parts: the
 * real Synapse (plain-synapse.ts), `unshare --mount` and `mount --bind` as root,
 * MinIO, the built CLI.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import path from 'node:path';
import {
  describeWithPeers,
  startMinio,
  tmpDir,
  type MinioPeer,
  type TmpDir,
} from './support/peers';
import { CLI_BUNDLE, runCli } from './support/cli-run';
import { type PlainSynapse, startPlainSynapse } from './support/plain-synapse';

const PASSPHRASE = `held ${randomBytes(8).toString('hex')}`;
const PREFIX = 'held';
const UNDER_IT =
  'restoring under it would lose the writes it makes afterwards; nothing was changed; stop Synapse first (when Pebble runs it, --pebble-socket with --service NAME stops it for the swap and starts it after)';

/** `unshare --mount` works here (root, a kernel that allows it): else the case-1 test fails, never skips. */
function unshareWorks(): string | undefined {
  try {
    execFileSync('unshare', ['--mount', 'true'], { stdio: 'pipe' });
    return undefined;
  } catch (err) {
    return `unshare --mount does not work here (run the tests as root, with util-linux): ${String(err)}`;
  }
}

describeWithPeers(['minio', 'synapse'])('restore while a Synapse holds the files', () => {
  let minio: MinioPeer;
  let root: TmpDir;
  const running: PlainSynapse[] = [];

  beforeAll(async () => {
    if (!fs.existsSync(CLI_BUNDLE))
      throw new Error('build/synapse-backup.js is missing: npm run build');
    minio = await startMinio();
    root = await tmpDir('held');
  }, 60_000);
  afterEach(async () => {
    for (const s of running.splice(0)) await s.stop();
  });
  afterAll(async () => {
    await root?.cleanup();
    await minio?.stop();
  });

  const cli = (args: string[]) => runCli(args, { minio, prefix: PREFIX, passphrase: PASSPHRASE });

  async function start(name: string, mountAt?: string): Promise<{ dir: string; s: PlainSynapse }> {
    const dir = path.join(root.path, name);
    fs.mkdirSync(dir);
    const s = await startPlainSynapse({ serverName: `${name}.test`, dataDir: dir, mountAt });
    running.push(s);
    await s.waitHealthy();
    return { dir, s };
  }

  /** The database's inode and the engine's leftovers: a swap changes the one, a failure leaves the other. */
  function liveState(dirs: string[]): string {
    return JSON.stringify(
      dirs.map((d) => ({
        db: fs.statSync(path.join(d, 'homeserver.db')).ino,
        media: fs.existsSync(path.join(d, 'media_store'))
          ? fs.statSync(path.join(d, 'media_store')).ino
          : null,
        leftovers: fs.readdirSync(d).filter((n) => /^\.(synapse-restore|pre-restore)-/.test(n)),
      })),
    );
  }

  /** Synapse still works on live files: none of its open files is deleted or moved aside. */
  async function stillOnLiveFiles(s: PlainSynapse): Promise<void> {
    const odd = s.openFiles().filter((f) => /\(deleted\)$|\.pre-restore-/.test(f));
    expect(odd).toEqual([]);
    await s.waitHealthy(10_000);
  }

  test("case 2: Synapse started by pip's console script is found by its command line, named with its own config path (also through a symlinked --data-dir); once stopped the restore runs", async () => {
    const { dir, s } = await start('srvb');
    expect(s.argv()[1]).toMatch(/\/bin\/synapse_homeserver$/);
    const created = await cli(['create', '--data-dir', dir, '--id', 'b']);
    expect(created.code).toBe(0);
    const before = liveState([dir]);
    const refused = await cli(['restore', '--id', 'b', '--data-dir', dir]);
    expect(refused.out).toBe('');
    expect(refused.err).toBe(
      `synapse-backup: error: Synapse is running on ${dir}: process ${s.pid} is synapse_homeserver with ${dir}/homeserver.yaml; ${UNDER_IT}\n`,
    );
    expect(refused.code).toBe(1);
    // Through a symlink: the message names the process's own path, not the operator's.
    const link = path.join(root.path, 'linkb');
    fs.symlinkSync(dir, link);
    const viaLink = await cli(['restore', '--id', 'b', '--data-dir', link]);
    expect(viaLink.err).toBe(
      `synapse-backup: error: Synapse is running on ${link}: process ${s.pid} is synapse_homeserver with ${dir}/homeserver.yaml; ${UNDER_IT}\n`,
    );
    expect(viaLink.code).toBe(1);
    expect(liveState([dir])).toBe(before);
    await stillOnLiveFiles(s);
    // The normal case: Synapse stopped, the restore goes ahead.
    await s.stop();
    const run = await cli(['restore', '--id', 'b', '--data-dir', dir]);
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    expect(run.out).toMatch(/^restored backup b into \S+: \d+ files, /);
  }, 240_000);

  test("case 3: a copy whose homeserver.yaml names the original server's files: the original Synapse holds the database the restore would replace outside the data dir; refused naming it", async () => {
    const { dir: a, s } = await start('srva');
    // The copy: the generated homeserver.yaml (absolute paths: srva's) in a dir of its own.
    const c = path.join(root.path, 'srvc');
    fs.mkdirSync(c);
    fs.copyFileSync(path.join(a, 'homeserver.yaml'), path.join(c, 'homeserver.yaml'));
    const created = await cli(['create', '--data-dir', c, '--id', 'c']);
    expect(created.code).toBe(0);
    const before = liveState([a]);
    const refused = await cli(['restore', '--id', 'c', '--data-dir', c]);
    expect(refused.out).toBe('');
    const comm = fs.readFileSync(`/proc/${s.pid}/comm`, 'utf8').trim();
    // Its name and its config path, never the rest of its command line.
    expect(refused.err).toBe(
      `synapse-backup: error: Synapse is running on ${a}: process ${s.pid} (${comm}, --config-path ${a}/homeserver.yaml) has ${a}/homeserver.db open, a database this restore would replace, or that homeserver.yaml in ${c} names; ${UNDER_IT}\n`,
    );
    expect(refused.code).toBe(1);
    expect(liveState([a])).toBe(before);
    expect(fs.readdirSync(c).sort()).toEqual(['homeserver.yaml']);
    await stillOnLiveFiles(s);
    // With srva stopped, the same restore replaces those outside paths (and says so).
    await s.stop();
    const run = await cli(['restore', '--id', 'c', '--data-dir', c]);
    expect(run.code).toBe(0);
    expect(run.out).toContain(`also restored `);
    expect(run.out).toContain(`${a}/homeserver.db`);
  }, 240_000);

  test('case 1: Synapse in another mount namespace, the data dir bind-mounted at /srv/data: found by the database it holds open, and by its command line through --config-root', async () => {
    const unshare = unshareWorks();
    if (unshare) throw new Error(unshare);
    const { dir, s } = await start('srvd', '/srv/data');
    // As in a container: the config names /srv/data, which this host does not have.
    expect(fs.readFileSync(path.join(dir, 'homeserver.yaml'), 'utf8')).toContain(
      'database: /srv/data/homeserver.db',
    );
    expect(fs.existsSync('/srv/data')).toBe(false);
    expect(s.argv().slice(-2)).toEqual(['--config-path', '/srv/data/homeserver.yaml']);
    const cr = ['--config-root', '/srv/data'];
    const created = await cli(['create', '--data-dir', dir, ...cr, '--id', 'd']);
    expect(created.code).toBe(0);
    const before = liveState([dir]);
    // Its command line names /srv/data/homeserver.yaml: --config-root reads it as this dir's.
    const byArgv = await cli(['restore', '--id', 'd', '--data-dir', dir, ...cr]);
    expect(byArgv.out).toBe('');
    expect(byArgv.err).toBe(
      `synapse-backup: error: Synapse is running on ${dir}: process ${s.pid} is synapse_homeserver with /srv/data/homeserver.yaml; ${UNDER_IT}\n`,
    );
    expect(byArgv.code).toBe(1);
    // Without --config-root nothing in its argv names this host's dir: the open
    // database, seen through the bind mount, still refuses.
    const byFile = await cli(['restore', '--id', 'd', '--data-dir', dir]);
    expect(byFile.out).toBe('');
    const comm = fs.readFileSync(`/proc/${s.pid}/comm`, 'utf8').trim();
    expect(byFile.err).toMatch(
      new RegExp(
        `^synapse-backup: error: Synapse is running on ${dir}: process ${s.pid} \\(${comm}, --config-path /srv/data/homeserver\\.yaml\\) has ${dir}/homeserver\\.db open, a database this restore would replace; `,
      ),
    );
    expect(byFile.code).toBe(1);
    expect(liveState([dir])).toBe(before);
    await stillOnLiveFiles(s);
    await s.stop();
    const run = await cli(['restore', '--id', 'd', '--data-dir', dir, ...cr]);
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
  }, 240_000);
});
