/**
 * The charm on a real Synapse (matrix-synapse 1.163.2 from PyPI) in a real Pebble, run by
 * the built charm's hooks and actions under the fake hook tools, with a real MinIO. Every
 * test name holds "real Synapse": `npx jest -t 'real Synapse'` runs exactly these.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { minioEngine } from './support/engines';
import type { JujuHarness } from './support/juju-harness';
import { type Session, MatrixError, makePng } from './support/matrix-client';
import { describeWithPeers, peerPath, startMinio, tmpDir, type MinioPeer } from './support/peers';
import {
  type RealSynapseUnit,
  SYNAPSE_UID,
  SYNAPSE_URL,
  startRealSynapseUnit,
} from './support/real-synapse';
import { type KubeRig, startKubeRig } from './support/kube';
import { KubernetesWorkload } from '../src/workload/kubernetes';
import { PebbleWorkload } from '../src/workload/pebble';
import { parseDocument } from 'yaml';

const SERVER = 'real.test';
const PASSPHRASE = 'real synapse passphrase 7';
const PREFIX = 'synapse/real';

/** Runs a Python snippet with the Synapse venv's interpreter (it has sqlite3); returns stdout. */
function python(code: string, ...args: string[]): string {
  return execFileSync(peerPath('synapse'), ['-c', code, ...args], { encoding: 'utf8' });
}

/** owner:group mode of every directory below (and including) `root`, by relative path. */
function directoryModes(root: string, skip: (rel: string) => boolean): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    const st = fs.lstatSync(path.join(root, rel));
    out.set(rel || '.', `${st.uid}:${st.gid} ${(st.mode & 0o7777).toString(8)}`);
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const child = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory() && !skip(child)) walk(child);
    }
  };
  walk('');
  return out;
}

// Tests that start or restart Synapse: generate, the charm's own health wait (90 s at most in
// this rig) and ours; a loaded CI machine needs more than jest's default for that.
const START_TIMEOUT = 300_000;

describeWithPeers(['minio', 'pebble', 'synapse'])('the charm on a real Synapse', () => {
  let minio: MinioPeer;
  let unit: RealSynapseUnit;
  let h: JujuHarness;
  let alice: Session;
  let roomId: string;
  const media = new Map<string, Buffer>();
  let startSeconds = 0;

  beforeAll(async () => {
    minio = await startMinio();
    unit = await startRealSynapseUnit({
      serverName: SERVER,
      configure: (harness) => {
        const creds = harness.addSecret({
          'access-key': minio.accessKeyId,
          'secret-key': minio.secretAccessKey,
        });
        harness.setConfig({
          's3-endpoint': minio.endpoint,
          's3-bucket': minio.bucket,
          's3-path': PREFIX,
          's3-uri-style': 'path',
          's3-credentials': creds,
          'backup-passphrase': harness.addSecret({ passphrase: PASSPHRASE }),
        });
      },
    });
    h = unit.h;
  });

  afterAll(async () => {
    await unit?.stop();
    await minio?.stop();
  });

  it(
    'real Synapse: config-changed and pebble-ready generate and start it as 991, /health answers, the unit is active',
    async () => {
      const started = Date.now();
      const changed = await h.hook('config-changed');
      expect(changed.exitCode).toBe(0);
      const ready = await h.hook('synapse-pebble-ready');
      expect(ready.exitCode).toBe(0);
      // The hook waits for /health: active means Synapse answers, and its version is known.
      expect(ready.status).toEqual({
        status: 'active',
        message: `backups: s3://${minio.bucket}/${PREFIX} at ${minio.endpoint} (from config)`,
      });
      expect(h.state.version).toMatch(/^1\.163\.\d+$/);
      expect(h.state.openPorts).toEqual(['8008/tcp']);
      console.log(
        `hooks: config-changed ${changed.durationMs} ms, pebble-ready ${ready.durationMs} ms`,
      );
      await unit.waitHealthy();
      startSeconds = (Date.now() - started) / 1000;
      console.log(
        `real Synapse: generated and healthy ${startSeconds.toFixed(1)} s after config-changed`,
      );
      const config = fs.readFileSync(path.join(unit.dataDir, 'homeserver.yaml'), 'utf8');
      expect(config).toContain(`server_name: "${SERVER}"`);
      expect(fs.statSync(path.join(unit.dataDir, `${SERVER}.signing.key`)).uid).toBe(SYNAPSE_UID);
      expect(unit.synapseUid()).toBe(SYNAPSE_UID);
      const status = await h.hook('update-status');
      expect(status.status).toEqual({ status: 'active', message: expect.any(String) });
    },
    START_TIMEOUT,
  );

  it('real Synapse: register-user returns a password that logs in, promote-user-admin makes the user an admin', async () => {
    // The charm keeps the registration secret in its Juju secret, and homeserver.yaml has it.
    const owned = Object.values(h.state.secrets).find((s) => s.label === 'synapse-registration');
    expect(owned?.content['registration-shared-secret']).toBe(unit.sharedSecret());
    const r = await h.action('register-user', { username: 'bob' });
    expect(r.failMessage).toBeUndefined();
    expect(r.results).toEqual({
      'user-id': `@bob:${SERVER}`,
      admin: 'false',
      password: expect.stringMatching(/^[A-Za-z0-9_-]{32}$/),
    });
    const password = r.results.password as string;
    const bob = await unit.client.login('bob', password);
    const isAdmin = async () =>
      (
        await fetch(
          `${SYNAPSE_URL}/_synapse/admin/v1/users/${encodeURIComponent(bob.userId)}/admin`,
          {
            headers: { authorization: `Bearer ${bob.accessToken}` },
          },
        )
      ).status;
    expect(await isAdmin()).toBe(403);
    const again = await h.action('register-user', { username: 'bob' });
    expect(again.failMessage).toBe('cannot register "bob": the user already exists');
    const p = await h.action('promote-user-admin', { username: 'bob' });
    expect(p.failMessage).toBeUndefined();
    expect(p.results).toEqual({ 'user-id': `@bob:${SERVER}`, admin: 'true' });
    expect(await isAdmin()).toBe(200);
    const missing = await h.action('promote-user-admin', { username: 'nobody' });
    expect(missing.failMessage).toBe(
      `@nobody:${SERVER} does not exist: juju run synapse/0 register-user username=nobody`,
    );
    // The password is in action-set's argv and nowhere else.
    const elsewhere = h.calls.filter((c) => c.tool !== 'action-set');
    expect(JSON.stringify(elsewhere)).not.toContain(password);
    expect(JSON.stringify(h.calls)).not.toContain(unit.sharedSecret());
  });

  it('real Synapse: users, rooms, messages, media and one-time keys through its API', async () => {
    await unit.client.register(unit.sharedSecret(), 'alice', 'alice-password-1', true);
    alice = await unit.client.login('alice', 'alice-password-1');
    await unit.client.unlimit(alice, alice.userId);
    roomId = await unit.client.createRoom(alice, 'backups');
    for (let i = 0; i < 20; i++) await unit.client.sendText(alice, roomId, `before ${i}`);
    for (let i = 0; i < 4; i++) {
      const png = makePng(64 + i, 48, i);
      media.set(await unit.client.upload(alice, png, 'image/png', `p${i}.png`), png);
    }
    for (const [mxc, png] of media) expect(await unit.client.download(alice, mxc)).toEqual(png);
    expect(await unit.client.uploadOneTimeKeys(alice, 5)).toBe(5);
  });

  let backupId: string;
  let messagesInBackup: number;
  let modesAtBackup: Map<string, string>;

  it('real Synapse: create-backup while a client keeps writing is complete, its database intact and a point in time', async () => {
    const skip = (rel: string) => /^(\.|media_store\/(remote|url_cache))/.test(rel);
    modesAtBackup = directoryModes(unit.dataDir, skip);
    let writing = true;
    let written = 0;
    const writer = (async () => {
      for (let i = 0; writing && i < 2000; i++) {
        await unit.client.sendText(alice, roomId, `during ${i}`);
        if (i % 5 === 0) {
          await unit.client.upload(alice, makePng(40, 40, 100 + i), 'image/png', `d${i}.png`);
        }
        written++;
      }
    })();
    const r = await h.action('create-backup');
    writing = false;
    await writer;
    expect(r.failMessage).toBeUndefined();
    expect(r.failed).toBe(false);
    // Synapse kept serving: the unit said a backup ran, then was active again.
    expect(r.statuses).toEqual([
      { status: 'maintenance', message: 'creating backup ...' },
      { status: 'active', message: expect.stringMatching(/^backups: s3:\/\//) },
    ]);
    expect(written).toBeGreaterThan(0);
    backupId = String(r.results['backup-id']);

    const listed = await h.action('list-backups');
    expect(String(listed.results.formatted)).toMatch(new RegExp(`${backupId}\\s.*\\scomplete`));

    // The archive, decrypted on this host.
    const dir = await tmpDir('real-synapse-backup');
    const tarFile = path.join(dir.path, 'backup.tar');
    const engine = minioEngine(minio, PREFIX, { passphrase: PASSPHRASE });
    try {
      await engine.decryptTo(backupId, fs.createWriteStream(tarFile));
    } finally {
      engine.close();
    }
    const out = path.join(dir.path, 'x');
    fs.mkdirSync(out);
    execFileSync('tar', ['-xf', tarFile, '-C', out]);
    const db = path.join(out, 'homeserver.db');
    const check = JSON.parse(
      python(
        `
import json, os, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
ok = db.execute("PRAGMA integrity_check").fetchone()[0]
messages = db.execute("SELECT count(*) FROM events WHERE room_id = ? AND type = 'm.room.message'", (sys.argv[2],)).fetchone()[0]
media = [r[0] for r in db.execute("SELECT media_id FROM local_media_repository")]
missing = [m for m in media if not os.path.exists(os.path.join(sys.argv[3], 'media_store', 'local_content', m[0:2], m[2:4], m[4:]))]
print(json.dumps({"ok": ok, "messages": messages, "media": len(media), "missing": missing}))
`,
        db,
        roomId,
        out,
      ),
    ) as { ok: string; messages: number; media: number; missing: string[] };
    expect(check.ok).toBe('ok');
    // Every media file the database knows is in the archive: no row without its file.
    expect(check.missing).toEqual([]);
    expect(check.media).toBeGreaterThanOrEqual(media.size);
    expect(check.messages).toBeGreaterThanOrEqual(20);
    messagesInBackup = check.messages;
    await dir.cleanup();
  });

  it(
    'real Synapse: after more writes, restore-backup brings back exactly the backup state',
    async () => {
      for (let i = 0; i < 5; i++) await unit.client.sendText(alice, roomId, `after ${i}`);
      const late = await unit.client.upload(alice, makePng(30, 30, 999), 'image/png', 'late.png');
      const r = await h.action('restore-backup', { 'backup-id': backupId });
      expect(r.failMessage).toBeUndefined();
      // Synapse stopped only for the swap; the action ends once it answers /health again.
      expect(r.statuses).toEqual([
        {
          status: 'maintenance',
          message: `restoring backup ${backupId}: staging it (Synapse still serves)`,
        },
        { status: 'maintenance', message: `restoring backup ${backupId}: Synapse stopped` },
        { status: 'active', message: expect.stringMatching(/^backups: s3:\/\//) },
      ]);
      await unit.waitHealthy();
      const again = await unit.client.login('alice', 'alice-password-1');
      const bodies = await unit.client.messages(again, roomId);
      expect(bodies.length).toBe(messagesInBackup);
      expect(bodies.filter((b) => b.startsWith('after '))).toEqual([]);
      for (const [mxc, png] of media) {
        expect(await unit.client.download(again, mxc)).toEqual(png);
        const thumb = await unit.client.thumbnail(again, mxc);
        expect(thumb.type).toMatch(/^image\//);
        expect(thumb.data.length).toBeGreaterThan(0);
      }
      const gone = await unit.client.download(again, late).then(
        () => 200,
        (err: unknown) => (err instanceof MatrixError ? err.status : -1),
      );
      expect(gone).toBe(404);
      expect(await unit.client.oneTimeKeyCount(again)).toBe(0);
    },
    START_TIMEOUT,
  );

  it('real Synapse: after the restore, Synapse (uid 991) writes media again and every directory has its owner and mode back', async () => {
    const skip = (rel: string) => /^(\.|media_store\/(remote|url_cache))/.test(rel);
    const now = directoryModes(unit.dataDir, skip);
    for (const [rel, mode] of modesAtBackup)
      expect(`${rel} ${now.get(rel)}`).toBe(`${rel} ${mode}`);
    const s = await unit.client.login('alice', 'alice-password-1');
    const png = makePng(50, 50, 4242);
    const mxc = await unit.client.upload(s, png, 'image/png', 'new.png');
    expect(await unit.client.download(s, mxc)).toEqual(png);
    // What Synapse does for remote media and URL previews: create a directory in media_store.
    execFileSync('setpriv', [
      '--reuid',
      String(SYNAPSE_UID),
      '--regid',
      String(SYNAPSE_UID),
      '--clear-groups',
      'mkdir',
      '-p',
      path.join(unit.dataDir, 'media_store', 'remote_content', 'x'),
    ]);
    expect(unit.synapseUid()).toBe(SYNAPSE_UID);
  });
  describeWithPeers(['kube'])('through the Kubernetes transport rig', () => {
    let rig: KubeRig;
    beforeAll(async () => {
      rig = await startKubeRig();
    });
    afterAll(async () => {
      await rig?.stop();
    });

    it(
      "real Synapse: create and restore through the API server's exec bring back the backup state",
      async () => {
        const workload = new KubernetesWorkload({
          kubeConfig: rig.kubeConfig(),
          namespace: rig.namespace,
          pod: rig.pod,
          container: 'synapse',
          pebble: { command: [peerPath('pebble')], socket: unit.pebble.socketPath },
        });
        const engine = minioEngine(minio, PREFIX, {
          passphrase: PASSPHRASE,
          workload,
          dataDir: unit.dataDir,
        });
        try {
          const s = await unit.client.login('alice', 'alice-password-1');
          await unit.client.sendText(s, roomId, 'kube before');
          const png = makePng(33, 33, 3333);
          const mxc = await unit.client.upload(s, png, 'image/png', 'kube.png');
          const expected = await unit.client.messages(s, roomId);
          const created = await engine.create();
          await unit.client.sendText(s, roomId, 'kube after');
          const restored = await engine.restore({ id: created.backupId, services: ['synapse'] });
          expect(restored.files).toBe(created.files);
          await unit.waitHealthy();
          const again = await unit.client.login('alice', 'alice-password-1');
          expect(await unit.client.messages(again, roomId)).toEqual(expected);
          expect(await unit.client.download(again, mxc)).toEqual(png);
          expect(unit.synapseUid()).toBe(SYNAPSE_UID);
          expect(fs.statSync(path.join(unit.dataDir, 'media_store')).uid).toBe(SYNAPSE_UID);
        } finally {
          engine.close();
        }
      },
      START_TIMEOUT,
    );
  });

  it(
    'real Synapse: media_store_path and signing_key_path outside the data dir are backed up there and restored there; Synapse serves the media after',
    async () => {
      // A package-style layout: the media store and the signing key move out of the data dir.
      const ext = path.join(fs.realpathSync(path.dirname(unit.dataDir)), 'ext');
      const mediaDir = path.join(ext, 'media');
      const key = path.join(ext, 'etc', `${SERVER}.signing.key`);
      const workload = new PebbleWorkload({ socketPath: unit.pebble.socketPath });
      await workload.stopServices(['synapse']);
      fs.mkdirSync(path.dirname(key), { recursive: true });
      fs.renameSync(path.join(unit.dataDir, 'media_store'), mediaDir);
      fs.renameSync(path.join(unit.dataDir, `${SERVER}.signing.key`), key);
      execFileSync('chown', ['-R', `${SYNAPSE_UID}:${SYNAPSE_UID}`, ext]);
      const configPath = path.join(unit.dataDir, 'homeserver.yaml');
      const doc = parseDocument(fs.readFileSync(configPath, 'utf8'));
      doc.set('media_store_path', mediaDir);
      doc.set('signing_key_path', key);
      fs.writeFileSync(configPath, String(doc));
      await workload.startServices(['synapse']);
      await unit.waitHealthy();
      const s = await unit.client.login('alice', 'alice-password-1');
      const png = makePng(44, 44, 4444);
      const mxc = await unit.client.upload(s, png, 'image/png', 'outside.png');
      const keyText = fs.readFileSync(key, 'utf8');

      const r = await h.action('create-backup');
      expect(r.failMessage).toBeUndefined();
      expect(r.results.missing).toBeUndefined();
      const id = String(r.results['backup-id']);
      const engine = minioEngine(minio, PREFIX, { passphrase: PASSPHRASE });
      const dir = await tmpDir('real-synapse-external');
      const tarFile = path.join(dir.path, 'backup.tar');
      try {
        await engine.decryptTo(id, fs.createWriteStream(tarFile));
      } finally {
        engine.close();
      }
      const names = execFileSync('tar', ['-tf', tarFile], { encoding: 'utf8' }).split('\n');
      expect(names).toContain(`@external${key}`);
      expect(
        names.filter((n) => n.startsWith(`@external${mediaDir}/local_content/`)).length,
      ).toBeGreaterThan(4);
      expect(names.filter((n) => n.startsWith('media_store'))).toEqual([]);
      await dir.cleanup();

      // Both go; the restore brings them back where homeserver.yaml says.
      fs.rmSync(path.join(mediaDir, 'local_content'), { recursive: true });
      fs.writeFileSync(key, 'ed25519 a_other c2VlZA==\n');
      const restored = await h.action('restore-backup', { 'backup-id': id });
      expect(restored.failMessage).toBeUndefined();
      await unit.waitHealthy();
      expect(fs.readFileSync(key, 'utf8')).toBe(keyText);
      expect(fs.statSync(key).uid).toBe(SYNAPSE_UID);
      expect(fs.statSync(path.join(mediaDir, 'local_content')).uid).toBe(SYNAPSE_UID);
      const again = await unit.client.login('alice', 'alice-password-1');
      expect(await unit.client.download(again, mxc)).toEqual(png);
      for (const [earlier, bytes] of media)
        expect(await unit.client.download(again, earlier)).toEqual(bytes);
      expect(fs.readdirSync(ext).filter((n) => n.startsWith('.'))).toEqual([]);
      expect(fs.readdirSync(mediaDir).filter((n) => n.startsWith('.'))).toEqual([]);
    },
    START_TIMEOUT,
  );
});
