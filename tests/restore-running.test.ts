/**
 * Issue #15, case 5: a CLI restore in place while Synapse runs on that data
 * dir. Before: exit 0, and the running server kept using the deleted database.
 * Now the restore refuses (src/backup/running.ts) while a live pid is in the
 * pid file homeserver.yaml names, or, through Pebble, the synapse service is
 * active, unless told to stop and start it (`--service synapse`). The charm,
 * which stops the service itself, is not refused. On a real Synapse (matrix-synapse
 * in a real Pebble, started by the charm's own hooks) and the built CLI.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import path from 'node:path';
import { describeWithPeers, startMinio, tmpDir, type MinioPeer } from './support/peers';
import { CLI_BUNDLE, runCli } from './support/cli-run';
import { type RealSynapseUnit, startRealSynapseUnit } from './support/real-synapse';
import { snapshotTree } from './support/synapse-tree';

const SERVER = 'running.test';
const PASSPHRASE = `running ${randomBytes(8).toString('hex')}`;
const PREFIX = 'running';

describeWithPeers(['minio', 'pebble', 'synapse'])(
  'restore in place under a running Synapse',
  () => {
    let minio: MinioPeer;
    let unit: RealSynapseUnit;
    let pidFile: string;

    beforeAll(async () => {
      if (!fs.existsSync(CLI_BUNDLE))
        throw new Error('build/synapse-backup.js is missing: npm run build');
      minio = await startMinio();
      unit = await startRealSynapseUnit({
        serverName: SERVER,
        configure: (h) => {
          h.setConfig({
            's3-endpoint': minio.endpoint,
            's3-bucket': minio.bucket,
            's3-path': PREFIX,
            's3-uri-style': 'path',
            's3-credentials': h.addSecret({
              'access-key': minio.accessKeyId,
              'secret-key': minio.secretAccessKey,
            }),
            'backup-passphrase': h.addSecret({ passphrase: PASSPHRASE }),
          });
        },
      });
      for (const hook of ['config-changed', 'synapse-pebble-ready']) {
        const run = await unit.h.hook(hook);
        if (run.exitCode !== 0 || (hook !== 'config-changed' && run.status?.status !== 'active')) {
          throw new Error(`${hook}: ${JSON.stringify(run.status)}\n${run.stderr}`);
        }
      }
      await unit.waitHealthy(90_000);
      const config = fs.readFileSync(path.join(unit.dataDir, 'homeserver.yaml'), 'utf8');
      pidFile = /^pid_file: *(\S+)$/m.exec(config)?.[1] ?? '';
    }, 240_000);
    afterAll(async () => {
      await unit?.stop();
      await minio?.stop();
    });

    const cli = (args: string[]) => runCli(args, { minio, prefix: PREFIX, passphrase: PASSPHRASE });

    /** The live synapse.app.homeserver process of this unit's config. */
    const synapsePid = () => {
      const config = path.join(unit.dataDir, 'homeserver.yaml');
      const pids = fs.readdirSync('/proc').filter((e) => {
        if (!/^\d+$/.test(e)) return false;
        try {
          const argv = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
          return argv.includes('synapse.app.homeserver') && argv.includes(config);
        } catch {
          return false;
        }
      });
      expect(pids).toHaveLength(1);
      return Number(pids[0]);
    };
    /** The files a running Synapse does not write (config, keys), as snapshotTree sees them. */
    const stable = async () => {
      const snap = await snapshotTree(unit.dataDir);
      const still = [...snap].filter(([rel]) => /^[^/]+\.(yaml|key|config)$/.test(rel));
      expect(still.length).toBeGreaterThanOrEqual(3);
      return JSON.stringify(still);
    };

    test('real Synapse: its homeserver.yaml names a pid file, which Synapse in the foreground does not write', () => {
      expect(pidFile).toBe(path.join(unit.dataDir, 'homeserver.pid'));
      expect(fs.existsSync(pidFile)).toBe(false);
      expect(fs.existsSync(`/proc/${synapsePid()}`)).toBe(true);
    });

    test('real Synapse: CLI restore in place on this host is refused naming the live process; nothing changes', async () => {
      const created = await cli(['create', '--data-dir', unit.dataDir, '--id', 'live']);
      expect(created.err).toBe('');
      expect(created.code).toBe(0);
      const before = await stable();
      const pid = synapsePid();
      const run = await cli(['restore', '--id', 'live', '--data-dir', unit.dataDir]);
      expect(run.out).toBe('');
      expect(run.code).toBe(1);
      expect(run.err).toBe(
        `synapse-backup: error: Synapse is running on ${unit.dataDir}: process ${pid} is synapse.app.homeserver with ${unit.dataDir}/homeserver.yaml; restoring under it would lose the writes it makes afterwards; nothing was changed; stop Synapse first (when Pebble runs it, --pebble-socket with --service NAME stops it for the swap and starts it after)\n`,
      );
      expect(await stable()).toBe(before);
      expect(fs.readdirSync(unit.dataDir).filter((n) => n.startsWith('.synapse-'))).toEqual([]);
      await unit.waitHealthy(10_000);
    });

    test('real Synapse: through Pebble the active service is named; --service synapse stops it for the swap and starts it after', async () => {
      const pebble = ['--pebble-socket', unit.pebble.socketPath];
      const refused = await cli(['restore', '--id', 'live', '--data-dir', unit.dataDir, ...pebble]);
      expect(refused.code).toBe(1);
      expect(refused.err).toBe(
        `synapse-backup: error: Synapse is running on ${unit.dataDir} (Pebble at ${unit.pebble.socketPath}: service synapse is active): restoring under it would lose the writes it makes afterwards; nothing was changed; pass --service synapse to stop it for the swap and start it after, or stop it first\n`,
      );
      const before = synapsePid();
      const run = await cli([
        'restore',
        ...['--id', 'live', '--data-dir', unit.dataDir, ...pebble, '--service', 'synapse'],
      ]);
      expect(run.err).toBe('');
      expect(run.code).toBe(0);
      expect(run.out).toMatch(/^restored backup live into \S+: \d+ files, /);
      await unit.waitHealthy(90_000);
      // A new Synapse process, on the restored files.
      expect(synapsePid()).not.toBe(before);
    });

    test('real Synapse: the charm refuses when another process still holds the database once synapse stopped, and starts synapse again', async () => {
      const db = path.join(unit.dataDir, 'homeserver.db');
      const holder = spawn(
        'python3',
        [
          '-c',
          'import sys, time\nf = open(sys.argv[1], "rb")\nprint("held", flush=True)\ntime.sleep(300)',
          db,
        ],
        { stdio: ['ignore', 'pipe', 'ignore'] },
      );
      const exited = new Promise((r) => holder.once('exit', r));
      try {
        await new Promise((r) => holder.stdout.once('data', r));
        const before = await stable();
        const synapseBefore = synapsePid();
        const r = await unit.h.action('restore-backup', { 'backup-id': 'live' });
        expect(r.failed).toBe(true);
        const comm = fs.readFileSync(`/proc/${holder.pid}/comm`, 'utf8').trim();
        // Its name only: python's -c program is not quoted (another program's argv may hold secrets).
        expect(r.failMessage).toContain(
          `with synapse stopped, process ${holder.pid} (${comm}) has ${db} open, a database this restore would replace; restoring under it would lose the writes it makes afterwards; nothing was changed; synapse started again`,
        );
        expect(r.failMessage).not.toContain('time.sleep');
        expect(r.failMessage).toContain(`kill ${holder.pid}\``);
        expect(await stable()).toBe(before);
        expect(fs.readdirSync(unit.dataDir).filter((n) => n.startsWith('.synapse-'))).toEqual([]);
        await unit.waitHealthy(90_000);
        expect(synapsePid()).not.toBe(synapseBefore);
      } finally {
        holder.kill('SIGKILL');
        await exited;
      }
    });

    test('real Synapse: the charm, which stops the service itself, is not refused', async () => {
      const r = await unit.h.action('restore-backup', { 'backup-id': 'live' });
      expect(r.failMessage).toBeUndefined();
      expect(r.failed).toBe(false);
      expect(r.results['backup-id']).toBe('live');
      await unit.waitHealthy(90_000);
    });

    test('a pid file whose process is alive refuses, naming the file to remove if it is not Synapse; once it is gone (a stale file) the restore runs', async () => {
      const dir = await tmpDir('running-stale');
      const holderPid = path.join(dir.path, 'synapse.pid');
      fs.writeFileSync(
        path.join(dir.path, 'homeserver.yaml'),
        `server_name: "${SERVER}"\npid_file: ${holderPid}\n`,
      );
      const holder = spawn('sleep', ['300'], { stdio: 'ignore' });
      const exited = new Promise((r) => holder.once('exit', r));
      fs.writeFileSync(holderPid, `${holder.pid}\n`);
      try {
        const refused = await cli(['restore', '--id', 'live', '--data-dir', dir.path]);
        expect(refused.code).toBe(1);
        expect(refused.err).toBe(
          `synapse-backup: error: Synapse is running on ${dir.path}: its pid file ${holderPid} (pid_file in homeserver.yaml) names process ${holder.pid}, which is alive; restoring under it would lose the writes it makes afterwards; nothing was changed; stop Synapse first (when Pebble runs it, --pebble-socket with --service NAME stops it for the swap and starts it after); if Synapse is not running, process ${holder.pid} is another program: remove ${holderPid}\n`,
        );
        expect(fs.readdirSync(dir.path).sort()).toEqual(['homeserver.yaml', 'synapse.pid']);
      } finally {
        holder.kill('SIGKILL');
        await exited;
      }
      const run = await cli(['restore', '--id', 'live', '--data-dir', dir.path]);
      // Synapse's generated homeserver.yaml names its own data dir absolutely: restored
      // into another dir, the restore says so (stale-paths.ts), and nothing else.
      const [warning, ...rest] = run.err.split('\n');
      expect(rest).toEqual(['']);
      expect(warning).toMatch(
        new RegExp(
          `^synapse-backup: warning: homeserver\\.yaml in ${dir.path} still names paths under ${unit.dataDir}, not ${dir.path} where backup live put their files: media_store_path ${unit.dataDir}/media_store, `,
        ),
      );
      expect(run.code).toBe(0);
    });
  },
);
