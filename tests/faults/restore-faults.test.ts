/**
 * Restore faults through the charm's restore-backup action, with Synapse (a
 * stand-in service) running in a real Pebble: a wrong passphrase, a truncated
 * object, a flipped byte, an object that is not an ESDK message, hostile
 * archives (absolute path, "..", symlink and hard-link escapes, a device
 * node, a 100,000-character name) and a data volume too small for the staged
 * copy. First, the runs that work (create, list, verify, restore), checked
 * for secrets like every failure.
 */
import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { buildTar, encrypt, putBackup, type RawEntry } from '../support/backups';
import { describeWithPeers, tmpDir } from '../support/peers';
import { makeSynapseTree, snapshotTree, withoutSkipped } from '../support/synapse-tree';
import { FaultBed, PREFIX } from './support/bed';
import { expected, observed } from './support/report';

const isRoot = process.getuid?.() === 0;
const MiB = 1024 * 1024;

describeWithPeers(['minio', 'pebble'])('restore faults through restore-backup', () => {
  let bed: FaultBed;
  let volume: string | undefined;

  beforeAll(async () => {
    // Synapse's data on a small volume of its own (root only): 8 MiB of tmpfs.
    const dir = await tmpDir('synapse-volume');
    if (isRoot) {
      const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', dir.path]);
      if (mounted.status !== 0) throw new Error(`cannot mount a tmpfs: ${mounted.stderr}`);
      volume = dir.path;
    }
    bed = await FaultBed.start({ dataDir: dir.path, mediaFiles: 4 });
  });
  afterAll(async () => {
    await bed?.stop();
    if (volume) spawnSync('umount', [volume]);
  });

  const objectKey = (id: string) => `${PREFIX}/${id}.tar.enc`;
  const manifestKey = (id: string) => `${PREFIX}/${id}.manifest.json`;

  async function getBytes(key: string): Promise<Buffer> {
    const out = await bed.minio.client.send(
      new GetObjectCommand({ Bucket: bed.minio.bucket, Key: key }),
    );
    return Buffer.from(await out.Body!.transformToByteArray());
  }

  async function put(key: string, body: Buffer | string): Promise<void> {
    await bed.minio.client.send(
      new PutObjectCommand({ Bucket: bed.minio.bucket, Key: key, Body: body }),
    );
  }

  /** A backup of another tree of this server, made by the engine (no charm). */
  async function backupOf(id: string, options: { bigFileBytes?: number } = {}): Promise<void> {
    const source = await tmpDir('synapse-source');
    await makeSynapseTree(source.path, { mediaFiles: 3, ...options });
    const engine = bed.engine(source.path);
    try {
      await engine.create({ id });
    } finally {
      engine.close();
    }
  }

  /** Copies backup `from` to `to`, its object changed by `mutate`, its manifest kept as it was. */
  async function copyBackup(from: string, to: string, mutate: (b: Buffer) => Buffer) {
    const manifest = JSON.parse((await getBytes(manifestKey(from))).toString()) as Record<
      string,
      unknown
    >;
    await put(objectKey(to), mutate(await getBytes(objectKey(from))));
    await put(manifestKey(to), JSON.stringify({ ...manifest, id: to, object: objectKey(to) }));
  }

  /** A backup holding exactly these tar entries, encrypted with the right passphrase. */
  async function hostileBackup(id: string, entries: RawEntry[]): Promise<void> {
    const tar = await buildTar([
      { name: 'homeserver.yaml', content: 'server_name: "example.org"\n' },
      { name: 'media_store/local_content/ok', content: 'fine' },
      ...entries,
    ]);
    await putBackup(
      bed.minio.client,
      bed.minio.bucket,
      PREFIX,
      id,
      tar,
      await encrypt(tar, bed.passphrase),
      // As a create records it from the archive's homeserver.yaml.
      { files: 2 + entries.length, entries: 2 + entries.length, serverName: 'example.org' },
    );
  }

  /** Runs restore-backup of `id`, which must fail with `message`; checks what every case promises. */
  async function failingRestore(id: string, message: string | RegExp): Promise<void> {
    const before = await bed.before();
    const run = await bed.run('restore-backup', { 'backup-id': id });
    const msg = FaultBed.failure(run);
    observed(`action failed: ${msg}`);
    if (typeof message === 'string') expect(msg).toBe(message);
    else expect(msg).toMatch(message);
    const staged = (await fsp.readdir(bed.h.dataDir)).filter((f) => f.startsWith('.'));
    expect(staged).toEqual([]);
    observed(await bed.afterFault(before, [run]));
  }

  test('secrets: create, list, verify and restore runs that work', async () => {
    expected(
      'each action succeeds; the restore yields the backed-up tree; no secret in any hook-tool call, output, command line or Pebble request',
    );
    // A canary in the data: the restore sends it to tar's stdin, where the proxy must see it.
    const canary = `canary-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    await fsp.writeFile(path.join(bed.h.dataDir, 'media_store/local_content/canary'), canary);
    const backedUp = withoutSkipped(await snapshotTree(bed.h.dataDir));
    const before = await bed.before();
    const create = await bed.run('create-backup');
    expect(create.result.failed).toBe(false);
    const id = create.result.results['backup-id'] as string;
    const list = await bed.run('list-backups');
    expect((list.result.results.backups as Record<string, { status: string }>)[id].status).toBe(
      'complete',
    );
    const verify = await bed.run('verify-backup', { 'backup-id': id });
    expect(verify.result.failed).toBe(false);
    await fsp.writeFile(
      path.join(bed.h.dataDir, 'homeserver.yaml'),
      'server_name: "example.org"\n# changed\n',
    );
    // By default the archive goes to tar over a socket beside Pebble's, which the proxy
    // cannot see: this restore takes Pebble's websocket, to show that the proxy looks.
    bed.h.setConfig({ 'workload-exec': 'pebble-relay' });
    bed.pebbleProxy.watchCanary(canary);
    const restore = await bed.run('restore-backup', { 'backup-id': id }).finally(() => {
      bed.pebbleProxy.watchCanary(undefined);
      bed.h.setConfig({ 'workload-exec': null });
    });
    expect(restore.result.failed).toBe(false);
    expect(bed.pebbleProxy.canarySightings).toEqual(['websocket stdio of "tar" (payload)']);
    observed("the Pebble proxy saw a canary from the data in tar's stdin, and no secret");
    observed(
      `created ${id} (${String(create.result.results.files)} files), listed complete, verified, restored (${String(restore.result.results.files)} files, ${String(restore.result.results['one-time-keys-removed'])} one-time keys removed)`,
    );
    const after = withoutSkipped(await snapshotTree(bed.h.dataDir));
    expect([...after.keys()].sort()).toEqual([...backedUp.keys()].sort());
    for (const [rel, entry] of backedUp) {
      if (rel !== 'homeserver.db') expect([rel, after.get(rel)]).toEqual([rel, entry]);
    }
    observed('restored tree = backed-up tree');
    expect(await bed.synapseState()).toBe('active');
    expect(await bed.uploads()).toEqual([]);
    expect(before.complete).not.toContain(id);
    observed(`synapse: active, uploads: 0, ${bed.secretsSummary([create, list, verify, restore])}`);
  });

  test('restore: wrong passphrase', async () => {
    expected('fails before touching anything: "the passphrase does not match"');
    await backupOf('good');
    const wrong = `not the passphrase ${Date.now()}`;
    bed.extraSecrets.push(wrong);
    bed.setPassphrase(wrong);
    try {
      await failingRestore(
        'good',
        'cannot decrypt backup good: the passphrase does not match the one it was encrypted with; set backup-passphrase to the passphrase in use when this backup was made',
      );
    } finally {
      bed.setPassphrase(bed.passphrase);
    }
  });

  test('restore: truncated object', async () => {
    expected('fails before touching anything: the object is shorter than its manifest says');
    await copyBackup('good', 'truncated', (b) => b.subarray(0, Math.floor(b.length / 2)));
    await failingRestore(
      'truncated',
      /^backup truncated is damaged: its object holds \d+ bytes but the manifest says \d+$/,
    );
  });

  test('restore: a flipped byte', async () => {
    expected('fails: authentication check failed; the staging copy is removed');
    // Its own backup (the id in its header is its own), a byte flipped in place.
    await backupOf('flipped');
    await copyBackup('flipped', 'flipped', (b) => {
      const c = Buffer.from(b);
      c[Math.floor(c.length / 2)] ^= 0x10;
      return c;
    });
    await failingRestore(
      'flipped',
      /^backup flipped is damaged: its authentication check failed \(.+\); it cannot be restored$/,
    );
  });

  test("restore: another backup's object and manifest copied under its id", async () => {
    expected("fails before touching anything: the id in the encrypted header is another backup's");
    await copyBackup('good', 'swapped', (b) => b);
    await failingRestore(
      'swapped',
      "backup swapped's object holds backup good (its encrypted header says so): refused",
    );
  });

  test('restore: an object that is not an ESDK message', async () => {
    expected('fails before touching anything: not a readable encrypted backup');
    const tar = await buildTar([{ name: 'homeserver.yaml', content: 'plain, not encrypted\n' }]);
    await putBackup(bed.minio.client, bed.minio.bucket, PREFIX, 'plain', tar, tar, {
      files: 1,
      entries: 1,
      serverName: 'example.org',
    });
    await failingRestore('plain', /^backup plain is not a readable encrypted backup \(.+\)$/);
  });

  test.each<[string, RawEntry[], string]>([
    [
      'an absolute path',
      [{ name: '/tmp/evil', content: 'x' }],
      'entry "/tmp/evil" has an absolute path: refused',
    ],
    [
      '".."',
      [{ name: 'media_store/../../evil', content: 'x' }],
      'entry "media_store/../../evil" contains "..": refused',
    ],
    [
      'a symlink escape',
      [{ name: 'l', type: 'symlink', linkname: '../../x' }],
      'symlink "l" points outside the data directory ("../../x"): refused',
    ],
    [
      'a hard-link escape',
      [{ name: 'h', type: 'link', linkname: '../outside' }],
      'hard link target "../outside" contains "..": refused',
    ],
    [
      'a device node',
      [{ name: 'd', type: 'character-device' }],
      'entry "d" is a device node: refused',
    ],
    [
      'a 100,000-character name',
      [{ name: `${'n'.repeat(99_990)}/long-name`, content: 'x' }],
      `entry "${'n'.repeat(200)}… (100000 characters)" has a name longer than 4096 bytes: refused`,
    ],
    // The engine's own bookkeeping names: refused before anything moves (issue #13, case 9).
    [
      "a staging directory's name",
      [{ name: '.synapse-restore-x/homeserver.yaml', content: 'x' }],
      'entry ".synapse-restore-x/homeserver.yaml" has a name the restore uses for its own bookkeeping (".synapse-restore-x"): refused',
    ],
    [
      "a previous copy's name",
      [{ name: './.pre-restore-x', content: 'x' }],
      'entry "./.pre-restore-x" has a name the restore uses for its own bookkeeping (".pre-restore-x"): refused',
    ],
    [
      "the snapshot's name",
      [{ name: '.synapse-backup-snapshot.db', content: 'x' }],
      'entry ".synapse-backup-snapshot.db" has a name the restore uses for its own bookkeeping (".synapse-backup-snapshot.db"): refused',
    ],
    [
      "the swap journal's name",
      [{ name: '.synapse-swap.journal', type: 'directory' }],
      'entry ".synapse-swap.journal" has a name the restore uses for its own bookkeeping (".synapse-swap.journal"): refused',
    ],
  ])('restore: a hostile archive with %s', async (label, entries, message) => {
    expected('refused by the entry checks before it reaches the workload, naming the entry');
    const id = `hostile-${label.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '')}`;
    await hostileBackup(id, entries);
    await failingRestore(id, message);
  });

  test('verify: an archive with a bookkeeping name is refused too', async () => {
    expected('verify-backup fails naming the entry, as restore would');
    await hostileBackup('bookkeeping-verify', [
      { name: '.pre-restore-1/homeserver.db', content: 'x' },
    ]);
    const run = await bed.run('verify-backup', { 'backup-id': 'bookkeeping-verify' });
    const msg = FaultBed.failure(run);
    observed(`action failed: ${msg}`);
    expect(msg).toContain(
      'entry ".pre-restore-1/homeserver.db" has a name the restore uses for its own bookkeeping (".pre-restore-1"): refused',
    );
  });

  (isRoot ? test : test.skip)(
    'restore: the data volume is too small for the staged copy',
    async () => {
      expected('fails before touching anything, saying how much is needed and how much is free');
      await backupOf('big', { bigFileBytes: 12 * MiB });
      await failingRestore(
        'big',
        new RegExp(
          `^restoring backup big needs 12\\.\\d+ MiB free in ${bed.h.dataDir} for the staged copy, but only [\\d.]+ (MiB|KiB) is free; grow the data volume or free space, then retry$`,
        ),
      );
    },
  );
});
