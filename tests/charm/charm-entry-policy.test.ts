/**
 * create-backup under the fake hook tools with a real Pebble and MinIO (issue 15,
 * part A): entries a restore refuses and that hold no data are left out and named
 * in the action's results; a symlink leading outside fails the action naming it;
 * an empty selection fails it saying what was looked for and where. The backup
 * that left entries out verifies and restores through the charm.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { JujuHarness, type ActionResult } from '../support/juju-harness';
import {
  describeWithPeers,
  startMinio,
  startPebble,
  type MinioPeer,
  type PebblePeer,
} from '../support/peers';
import { makeSynapseTree } from '../support/synapse-tree';

const LC = 'media_store/local_content';

describeWithPeers(['minio', 'pebble'])('create-backup and what a backup may hold', () => {
  let minio: MinioPeer;
  let pebble: PebblePeer;

  beforeAll(async () => {
    minio = await startMinio();
    pebble = await startPebble();
  });
  afterAll(async () => {
    await pebble?.stop();
    await minio?.stop();
  });

  /**
   * A configured charm after pebble-ready, whose data dir `fill` then prepared (from
   * empty: what the charm's generate step wrote is removed first).
   */
  async function charm(fill: (dataDir: string) => Promise<void>): Promise<JujuHarness> {
    const h = await JujuHarness.create({ pebbleSocket: pebble.socketPath });
    const creds = h.addSecret({
      'access-key': minio.accessKeyId,
      'secret-key': minio.secretAccessKey,
    });
    h.setConfig({
      'server-name': 'example.org',
      's3-endpoint': minio.endpoint,
      's3-bucket': minio.bucket,
      's3-path': `entry-policy/${path.basename(h.dataDir)}-${Date.now()}`,
      's3-uri-style': 'path',
      's3-credentials': creds,
      'backup-passphrase': h.addSecret({ passphrase: 'entry policy passphrase' }),
    });
    await h.hook('synapse-pebble-ready');
    for (const name of fs.readdirSync(h.dataDir)) {
      fs.rmSync(path.join(h.dataDir, name), { recursive: true, force: true });
    }
    await fill(h.dataDir);
    return h;
  }

  const backupsOf = async (h: JujuHarness): Promise<string> => {
    const listed: ActionResult = await h.action('list-backups');
    expect(listed.failed).toBe(false);
    return String(listed.results.formatted);
  };

  it('left-out entries are named in the results; the backup verifies and restores', async () => {
    const h = await charm(async (dir) => {
      await makeSynapseTree(dir, { mediaFiles: 3 });
      const ab = path.join(dir, LC, 'ab');
      expect(spawnSync('mkfifo', [path.join(ab, 'p')]).status).toBe(0);
      const sock = spawnSync('python3', [
        '-c',
        'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
        path.join(ab, 's'),
      ]);
      expect(sock.status).toBe(0);
    });
    const r = await h.action('create-backup');
    expect(r.failMessage).toBeUndefined();
    expect(r.results).toMatchObject({
      skipped: '2',
      'skipped-paths': `${LC}/ab/p (fifo), ${LC}/ab/s (socket)`,
    });
    expect(r.results.warnings).toBeUndefined();
    expect(r.logs).toContain(
      `left out 2 entries (a restore refuses them; they hold no data): ${LC}/ab/p (fifo), ${LC}/ab/s (socket)`,
    );
    const id = r.results['backup-id'] as string;
    const verified = await h.action('verify-backup', { 'backup-id': id });
    expect(verified.failMessage).toBeUndefined();
    expect(verified.results.files).toBe(r.results.files);
    const restored = await h.action('restore-backup', { 'backup-id': id });
    expect(restored.failMessage).toBeUndefined();
    expect(restored.results.files).toBe(r.results.files);
    expect(fs.existsSync(path.join(h.dataDir, LC, 'ab/p'))).toBe(false);
    expect(fs.readdirSync(path.join(h.dataDir, LC, 'ab/cd')).sort()).toEqual([
      'file0',
      'file1',
      'file2',
    ]);
  });

  it('a symlink to /etc/passwd in local_content fails the action naming it and the fix; nothing stored', async () => {
    const h = await charm(async (dir) => {
      await makeSynapseTree(dir, { mediaFiles: 2 });
      fs.symlinkSync('/etc/passwd', path.join(dir, LC, 'ab/pw'));
    });
    const r = await h.action('create-backup');
    expect(r.failed).toBe(true);
    expect(r.failMessage).toBe(
      `cannot back up: symlink "${LC}/ab/pw" points to the absolute path "/etc/passwd"; a restore refuses such an entry, so no backup was stored; replace the symlink with a copy of what it points to (or a relative link that stays inside the data directory), or remove it, then create the backup again`,
    );
    expect(await backupsOf(h)).toMatch(/^no backups in s3:/);
  });

  it('only empty media folders: the action fails with empty-selection, saying what was looked for and where', async () => {
    const h = await charm(async (dir) => {
      fs.mkdirSync(path.join(dir, LC), { recursive: true });
      fs.mkdirSync(path.join(dir, 'media_store/local_thumbnails'), { recursive: true });
    });
    const r = await h.action('create-backup');
    expect(r.failed).toBe(true);
    expect(r.failMessage).toBe(
      `nothing to back up in ${h.dataDir}: no regular file in what this run selected (no homeserver.yaml in ${h.dataDir}, so Synapse's default paths; the media store ${h.dataDir}/media_store (local_content: no regular file, local_thumbnails: no regular file); the SQLite database ${h.dataDir}/homeserver.db (missing); no *.key, *.yaml, *.yml or *.log.config file in ${h.dataDir}); the charm writes homeserver.yaml once server-name is set and the synapse container is up (see the unit status); to bring a server back from a backup, run restore-backup`,
    );
    expect(await backupsOf(h)).toMatch(/^no backups in s3:/);
  });
});
