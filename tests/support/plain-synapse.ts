/**
 * A real Synapse (matrix-synapse from PyPI: the venv of scripts/peers/install.sh
 * `synapse`, as real-synapse.ts uses it) started the way pip and NixOS installs
 * start it: the venv's `synapse_homeserver` console script, `--config-path`,
 * working directory `/`, no Pebble and no charm. Optionally as in a container:
 * in its own mount namespace (`unshare --mount`, as root) with the data dir
 * bind-mounted at `mountAt` (`/srv/data`), its config generated there, so that
 * its paths and argv name `mountAt`, not the host's dir. Each listens on a port
 * of its own (127.0.0.1), so several run at once, beside the charm rig's 8008.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseDocument } from 'yaml';
import { freePort, peerPath, track } from './peers';

export interface PlainSynapse {
  /** The Synapse process (python running the console script). */
  pid: number;
  /** homeserver.yaml as the process names it (under `mountAt` when given). */
  configArg: string;
  /** The process's command line, as /proc shows it. */
  argv(): string[];
  /** Waits (bounded) until /health answers OK. */
  waitHealthy(timeoutMs?: number): Promise<void>;
  /** The targets of its open fds (readlink of /proc/PID/fd/N), for "(deleted)" checks. */
  openFiles(): string[];
  /** SIGTERM, then SIGKILL after 20 s; resolves once it exited. Idempotent. */
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * In a new mount namespace: tmpfs over `$1` (the mount point's parent, so the
 * host's tree is not touched), `$3` bind-mounted at `$2`, then the command.
 * unshare makes the namespace's mounts private: none of it reaches the host.
 */
const IN_NAMESPACE =
  'set -e; mount -t tmpfs plain-synapse "$1"; mkdir -p "$2"; mount --bind "$3" "$2"; shift 3; exec "$@"';

/**
 * Generates a config for `serverName` in `dataDir` (Synapse's own
 * `--generate-config`: absolute paths, a SQLite database, a log config writing
 * homeserver.log), moves its listener to a free port on 127.0.0.1, and starts
 * `synapse_homeserver --config-path` (as root; the official image's uid does not
 * matter here). `mountAt`: see the file comment; its parent must exist.
 */
export async function startPlainSynapse(options: {
  serverName: string;
  dataDir: string;
  mountAt?: string;
}): Promise<PlainSynapse> {
  const python = peerPath('synapse');
  const script = path.join(path.dirname(python), 'synapse_homeserver');
  const inside = options.mountAt ?? options.dataDir;
  const configArg = `${inside}/homeserver.yaml`;
  const wrap = (argv: string[]): string[] =>
    options.mountAt
      ? [
          'unshare',
          '--mount',
          'sh',
          '-c',
          IN_NAMESPACE,
          'plain-synapse',
          path.dirname(options.mountAt),
          options.mountAt,
          options.dataDir,
          ...argv,
        ]
      : argv;
  const [genCmd, ...genArgs] = wrap([
    python,
    ...['-m', 'synapse.app.homeserver', '--server-name', options.serverName],
    ...['--report-stats', 'no', '--config-path', configArg, '--data-directory', inside],
    '--generate-config',
  ]);
  execFileSync(genCmd, genArgs, { cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
  const port = await freePort();
  const configPath = path.join(options.dataDir, 'homeserver.yaml');
  const config = parseDocument(fs.readFileSync(configPath, 'utf8'));
  if (config.getIn(['listeners', 0, 'port']) !== 8008) {
    throw new Error(`no listener on 8008 in the generated ${configPath}`);
  }
  config.setIn(['listeners', 0, 'port'], port);
  config.setIn(['listeners', 0, 'bind_addresses'], ['127.0.0.1']);
  fs.writeFileSync(configPath, config.toString());
  const [cmd, ...args] = wrap([python, script, '--config-path', configArg]);
  const log = fs.openSync(path.join(options.dataDir, 'plain-synapse.out'), 'a');
  const child: ChildProcess = spawn(cmd, args, { cwd: '/', stdio: ['ignore', log, log] });
  fs.closeSync(log);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let gone = false;
  void exited.then(() => (gone = true));
  await new Promise((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  const pid = child.pid!;
  const stop = async () => {
    untrack();
    if (gone) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(timer);
  };
  const untrack = track(stop);
  const tail = () => {
    try {
      return fs.readFileSync(path.join(options.dataDir, 'plain-synapse.out'), 'utf8').slice(-3000);
    } catch {
      return '';
    }
  };
  return {
    pid,
    configArg,
    argv: () => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean),
    async waitHealthy(timeoutMs = 90_000) {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        if (gone) throw new Error(`Synapse ${pid} exited:\n${tail()}`);
        const ok = await fetch(`http://127.0.0.1:${port}/health`, {
          signal: AbortSignal.timeout(2000),
        })
          .then((r) => r.ok)
          .catch(() => false);
        if (ok) return;
        await sleep(250);
      }
      throw new Error(`Synapse ${pid} did not answer /health in ${timeoutMs} ms:\n${tail()}`);
    },
    openFiles() {
      const dir = `/proc/${pid}/fd`;
      return fs.readdirSync(dir).flatMap((fd) => {
        try {
          return [fs.readlinkSync(path.join(dir, fd))];
        } catch {
          return [];
        }
      });
    },
    stop,
  };
}
