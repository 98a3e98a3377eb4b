/**
 * A real Synapse (matrix-synapse from PyPI, scripts/peers/install.sh `synapse`) in a real
 * Pebble, started by the built charm's own hooks: the charm's generate step and Pebble layer
 * run tests/support/synapse-image/start.py, which keeps the official image's /start.py
 * contract (generate as uid 991, run as uid 991). Synapse listens on 8008 as the charm's
 * layer expects, so one such rig runs on a host at a time: the rig takes a lock file.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { JujuHarness } from './juju-harness';
import { MatrixClient } from './matrix-client';
import { type MinioPeer, type PebblePeer, peerPath, startPebble, tmpDir, track } from './peers';

export const SYNAPSE_UID = 991;
export const SYNAPSE_URL = 'http://127.0.0.1:8008';
export const START_PY = path.join(__dirname, 'synapse-image', 'start.py');
const LOCK = '/tmp/synapse-backup-real-synapse.lock';

export interface RealSynapseUnit {
  h: JujuHarness;
  pebble: PebblePeer;
  dataDir: string;
  client: MatrixClient;
  /** homeserver.yaml's registration_shared_secret. */
  sharedSecret(): string;
  /** Waits until /health answers OK (bounded). Returns the seconds it took. */
  waitHealthy(timeoutMs?: number): Promise<number>;
  /** The last `lines` lines of Pebble's log (Synapse's output is in it), for failure messages. */
  pebbleLog(lines?: number): string;
  /** uid of the running Synapse process (from /proc), or undefined when none runs. */
  synapseUid(): number | undefined;
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function takeLock(timeoutMs: number): Promise<() => void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      fs.mkdirSync(LOCK);
      fs.writeFileSync(path.join(LOCK, 'pid'), String(process.pid));
      return () => fs.rmSync(LOCK, { recursive: true, force: true });
    } catch {
      const holder = Number(fs.readFileSync(path.join(LOCK, 'pid'), 'utf8').trim() || 0);
      let alive = false;
      try {
        process.kill(holder, 0);
        alive = holder > 0;
      } catch {
        alive = false;
      }
      if (!alive) fs.rmSync(LOCK, { recursive: true, force: true });
      else if (Date.now() > deadline) throw new Error(`port 8008 is held by process ${holder}`);
      else await sleep(500);
    }
  }
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.setTimeout(2000);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** The processes listening on TCP `port` (from /proc/net/tcp*): pid and command line. */
function portHolders(port: number): { pid: number; argv: string[] }[] {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of fs.readFileSync(table, 'utf8').split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[1]?.endsWith(hex) && cols[3] === '0A') inodes.add(`socket:[${cols[9]}]`);
    }
  }
  const holders: { pid: number; argv: string[] }[] = [];
  for (const pid of fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    try {
      const fds = fs.readdirSync(`/proc/${pid}/fd`);
      if (fds.some((fd) => inodes.has(fs.readlinkSync(`/proc/${pid}/fd/${fd}`)))) {
        const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        holders.push({ pid: Number(pid), argv: argv.filter(Boolean) });
      }
    } catch {
      // gone, or not ours to read
    }
  }
  return holders;
}

/**
 * A Synapse left by an earlier rig: synapse.app.homeserver whose config file is gone (each rig
 * removes its data dir when it stops). Such a process only keeps the port.
 */
function isOrphanSynapse(argv: string[]): boolean {
  if (!argv.includes('synapse.app.homeserver')) return false;
  const config = argv[argv.indexOf('-c') + 1] ?? argv[argv.indexOf('--config-path') + 1];
  return config !== undefined && !fs.existsSync(config);
}

/**
 * Waits (bounded) until nothing listens on Synapse's port, so that /health answers come from
 * this rig's Synapse; a previous rig's Synapse may still be exiting, and one whose data dir is
 * gone is killed. Throws naming the holder when the port stays taken.
 */
async function waitPortFree(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (await listening(port)) {
    const holders = portHolders(port);
    for (const { pid } of holders.filter((h) => isOrphanSynapse(h.argv))) {
      console.warn(`real-synapse rig: killing an earlier rig's Synapse on ${port}: pid ${pid}`);
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    if (Date.now() > deadline) {
      const named = holders.map((h) => `pid ${h.pid} (${h.argv.join(' ')})`).join(', ');
      throw new Error(
        `port ${port} is still in use after ${timeoutMs} ms by ${named || 'an unknown process'}`,
      );
    }
    await sleep(250);
  }
}

/** Pids of processes whose command line runs synapse.app.homeserver on `configPath`. */
function synapsePids(configPath: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (cmd.includes('synapse.app.homeserver') && cmd.includes(configPath)) pids.push(+entry);
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/**
 * Starts Pebble and a harness whose charm generates and runs the real Synapse for
 * `serverName`; `config` adds charm config (S3 and secrets). Runs config-changed and
 * synapse-pebble-ready, then waits for /health.
 */
export async function startRealSynapseUnit(options: {
  serverName: string;
  minio?: MinioPeer;
  configure?: (h: JujuHarness) => void;
  /** The charm's directory (an unpacked .charm); default: this repo, which runs build/charm.js. */
  charmDir?: string;
}): Promise<RealSynapseUnit> {
  const release = await takeLock(300_000);
  try {
    await waitPortFree(8008, 30_000);
  } catch (err) {
    release();
    throw err;
  }
  const python = peerPath('synapse');
  const pebble = await startPebble();
  const root = await tmpDir('real-synapse');
  fs.chmodSync(root.path, 0o755); // Synapse runs as 991 and must reach its data dir
  const dataDir = path.join(root.path, 'data');
  fs.mkdirSync(dataDir);
  const h = await JujuHarness.create({
    charmDir: options.charmDir,
    pebbleSocket: pebble.socketPath,
    dataDir,
    generateCommand: [python, START_PY, 'generate'],
    serviceCommand: `${python} ${START_PY}`,
    synapseUrl: SYNAPSE_URL,
    env: { SYNAPSE_CHARM_HEALTH_WAIT_MS: '90000' },
  });
  h.setConfig({ 'server-name': options.serverName });
  options.configure?.(h);
  const configPath = path.join(dataDir, 'homeserver.yaml');
  const stop = async () => {
    untrack();
    await pebble.stop();
    for (const pid of synapsePids(configPath)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await root.cleanup();
    release();
  };
  const untrack = track(stop);
  const unit: RealSynapseUnit = {
    h,
    pebble,
    dataDir,
    client: new MatrixClient(SYNAPSE_URL),
    sharedSecret() {
      const config = parseYaml(fs.readFileSync(configPath, 'utf8')) as {
        registration_shared_secret: string;
      };
      return config.registration_shared_secret;
    },
    async waitHealthy(timeoutMs = 60_000) {
      const started = Date.now();
      while (Date.now() - started < timeoutMs) {
        const ok = await fetch(`${SYNAPSE_URL}/health`, { signal: AbortSignal.timeout(2000) })
          .then((r) => r.ok)
          .catch(() => false);
        if (ok) return (Date.now() - started) / 1000;
        await sleep(200);
      }
      throw new Error(
        `Synapse did not answer /health in ${timeoutMs} ms; Pebble's log:\n${unit.pebbleLog()}`,
      );
    },
    pebbleLog(lines = 30) {
      return execFileSync('tail', ['-n', String(lines), path.join(pebble.dir, 'pebble.log')], {
        encoding: 'utf8',
      });
    },
    synapseUid() {
      const pid = synapsePids(configPath)[0];
      if (pid === undefined) return undefined;
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      return Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
    },
    stop,
  };
  return unit;
}
