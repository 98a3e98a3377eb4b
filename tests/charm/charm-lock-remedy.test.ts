/**
 * An action refused because a killed run's command still runs in the workload
 * (a stale data dir lock with a live recorded command, src/backup/lock.ts):
 * its remedy names the unit the action runs on, as Juju gives it to the
 * charm's real dispatch in JUJU_UNIT_NAME. Built charm, fake hook tools, a
 * real Pebble and a real MinIO.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import * as path from 'node:path';
import { JujuHarness } from '../support/juju-harness';
import {
  describeWithPeers,
  startMinio,
  startPebble,
  type MinioPeer,
  type PebblePeer,
} from '../support/peers';
import { makeSynapseTree } from '../support/synapse-tree';

const LOCK = '.synapse-backup.lock';
const TOKEN = 'c0ffee123456';
/** A holder on this host whose pid is no process (above Linux's largest pid_max). */
const GONE = { operation: 'create-backup k', host: hostname(), pid: 2 ** 22 + 7, since: 'then' };

describeWithPeers(['minio', 'pebble'])('charm: a stale lock whose command still runs', () => {
  let minio: MinioPeer;
  let pebble: PebblePeer;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    minio = await startMinio();
    pebble = await startPebble();
  });
  afterEach(() => {
    for (const child of children.splice(0)) child.kill('SIGKILL');
  });
  afterAll(async () => {
    await pebble?.stop();
    await minio?.stop();
  });

  test('create-backup on synapse/3 fails naming the process and `juju ssh ... synapse/3 kill <pid>`', async () => {
    const h = await JujuHarness.create({ pebbleSocket: pebble.socketPath, unit: 'synapse/3' });
    await makeSynapseTree(h.dataDir, { mediaFiles: 2 });
    h.setConfig({
      'server-name': 'example.org',
      's3-endpoint': minio.endpoint,
      's3-bucket': minio.bucket,
      's3-path': `lock-remedy-${Date.now()}`,
      's3-uri-style': 'path',
      's3-credentials': h.addSecret({
        'access-key': minio.accessKeyId,
        'secret-key': minio.secretAccessKey,
      }),
      'backup-passphrase': h.addSecret({ passphrase: 'lock remedy passphrase' }),
    });
    expect((await h.hook('synapse-pebble-ready')).status?.status).toBe('active');

    // The killed run's lock: its holder is gone; a command it recorded (long ended) and a
    // child of it, marked with the holder's token, that still runs.
    const live = spawn('sleep', ['600'], {
      stdio: 'ignore',
      env: { ...process.env, SYNAPSE_BACKUP_RUN: TOKEN },
    });
    children.push(live);
    await new Promise((resolve) => live.once('spawn', resolve));
    await fsp.mkdir(path.join(h.dataDir, LOCK));
    await fsp.writeFile(
      path.join(h.dataDir, LOCK, 'holder'),
      `${JSON.stringify({ ...GONE, token: TOKEN })}\n`,
    );
    await fsp.writeFile(path.join(h.dataDir, LOCK, `run.${GONE.pid}`), '1 2\n3 4\n');

    const r = await h.action('create-backup');
    expect(r.failed).toBe(true);
    const comm = readFileSync(`/proc/${live.pid}/comm`, 'utf8').trim();
    expect(r.failMessage).toBe(
      `${h.dataDir} is in use by process ${live.pid} (${comm}) in the workload, started by create-backup k (host ${hostname()}, pid ${GONE.pid}, since then): its lock is stale (its holder, pid ${GONE.pid} on this host, is gone) but what it started still runs; the lock was not taken over, nothing was started; wait for it to finish, or stop it with \`juju ssh --container synapse synapse/3 kill ${live.pid}\`, then run the action again`,
    );
    // The lock is left as it was.
    expect(
      JSON.parse(await fsp.readFile(path.join(h.dataDir, LOCK, 'holder'), 'utf8')),
    ).toMatchObject({ ...GONE, token: TOKEN });
  });
});
