/**
 * Is Synapse running on the files a restore is about to replace? A restore
 * in place under a running Synapse swaps its database away: the server keeps
 * using the deleted file and acknowledges writes that vanish at its next
 * restart. The engine only stops the services it is told to (the charm:
 * `synapse`; the CLI: `--service`), so without them it looks first, in the
 * workload (scripts/running.ts):
 * - its services (Pebble): one whose name contains "synapse" is active;
 * - the pid file homeserver.yaml names (`pid_file`, src/backup/homeserver.ts):
 *   a process with that pid exists (`/proc/<pid>`);
 * - a `synapse.app.homeserver` or `synapse_homeserver` process of this config or
 *   data dir (Synapse writes no pid file in the foreground, as the image and
 *   systemd run it), its paths also read through `--config-root`;
 * - any process that has one of the SQLite databases the restore would replace
 *   (in the data dir or outside it) or the one homeserver.yaml names open, by
 *   device and inode: whatever its name, mount namespace (a container) or the
 *   path it opened it by. With services named, the same open-files check runs
 *   once they are stopped, just before the swap (refuseOpenDatabases).
 */
import { posix } from 'node:path';
import { BackupError } from '../errors';
import { runCommand } from '../workload/command';
import type { EngineContext } from './context';
import { type HomeserverConfig, homeserverPaths, readHomeserverConfigOf } from './homeserver';
import { externalPath } from './items';
import type { Manifest } from './manifest';
import type { SwapItem } from './scripts/swap';
import { runningCheckCommand } from './scripts/running';

const UNDER_IT =
  'restoring under it would lose the writes it makes afterwards; nothing was changed';

/** The process names FIND_PROCESS reports (`m`, `s`). */
const PROCESS_NAMES: Record<string, string> = {
  m: 'synapse.app.homeserver',
  s: 'synapse_homeserver',
};

/** Longest config path quoted from a holder's argv in a refusal (characters). */
const MAX_PATH_CHARS = 300;

/** A process that holds a database open, as OPEN_FILES_PY reports it. */
interface Holder {
  pid: number;
  comm: string;
  argv: string[];
  path: string;
}

/** What the workload's check found. */
type Found =
  | { how: 'pid'; pid: number }
  | { how: 'proc'; pid: number; name: string; config?: string; cwd?: string }
  | { how: 'open'; holder: Holder }
  | { how: 'none' };

/**
 * The SQLite databases a restore of `manifest` would replace, as absolute paths
 * (`@external/...` names as the path they stand for): the manifest's `databases`
 * when it lists its items, else the data dir's homeserver.db (what a backup
 * without that list may hold). Only what to look at: the swap's own plan
 * (planDatabases) is checked again before the swap.
 */
export function manifestDatabases(manifest: Manifest | undefined, dataDir: string): string[] {
  const names = manifest?.items ? (manifest.databases ?? []) : ['homeserver.db'];
  return names
    .filter((n): n is string => typeof n === 'string' && n !== '')
    .map((n) => externalPath(n) ?? `${dataDir}/${n}`);
}

/** The SQLite databases among a swap's items, as absolute paths. */
export function planDatabases(items: readonly SwapItem[], dataDir: string): string[] {
  return items
    .filter((i) => i.kind === 'db' || i.kind === 'rootdb')
    .map((i) => (i.kind === 'db' ? `${dataDir}/${i.name}` : i.name));
}

/** The SQLite databases a parsed homeserver.yaml names (the live Synapse's). */
export function configDatabases(config: HomeserverConfig | undefined): string[] {
  return (config?.paths.databases ?? []).flatMap((d) => ('path' in d ? [d.path] : []));
}

/**
 * Refuses (`busy`) a restore into `ctx.dataDir` while Synapse runs on it and
 * the engine will not stop it: an active Pebble service named like synapse,
 * a live pid in homeserver.yaml's `pid_file`, a live Synapse process of this
 * config or data dir, or any process that has one of `databases` (absolute
 * paths: the SQLite files the restore would replace) or homeserver.yaml's own
 * SQLite database open (scripts/running.ts). With `services` named, the engine
 * stops and starts them around the swap: only services it would leave running
 * are checked here, and the processes are not (the named service is Synapse,
 * and holds its database until then: refuseOpenDatabases runs once it is
 * stopped). A data dir without homeserver.yaml (a fresh directory) is checked
 * for open `databases` only. Nothing found (a stale pid file whose process is
 * gone, processes whose open files it may not read) resolves. The message
 * names the process and what it holds, and what to do; a live pid in the pid
 * file may be another program's (a reused pid): the remedy names the file to
 * remove then. `configRead`: the data dir's homeserver.yaml as
 * readHomeserverConfigOf reads it (read now when not given). Throws
 * `workload-command` when the check cannot run (no python3 while a database
 * is there).
 */
export async function refuseRunningSynapse(
  ctx: EngineContext,
  services: string[],
  configRead: Promise<HomeserverConfig | undefined> = readHomeserverConfigOf(ctx),
  databases: Promise<string[]> | string[] = [],
): Promise<void> {
  // Listed while homeserver.yaml is read. A transport that cannot list services
  // (no Pebble in the workload) leaves the process checks.
  const listing = ctx.workload.serviceStatus([]).catch(() => []);
  // No homeserver.yaml: a fresh directory, which nothing runs on. One that is
  // not YAML (what the restore may be about to fix) has the default paths.
  const config = await configRead.catch((err: unknown) => {
    if (err instanceof BackupError && err.code === 'invalid-config') {
      return { text: '', config: {}, paths: homeserverPaths({}, ctx.dataDir) };
    }
    throw err;
  });
  if (config) {
    const listed = await listing;
    const active = listed.filter(
      (s) => /synapse/i.test(s.name) && s.current === 'active' && !services.includes(s.name),
    );
    if (active.length > 0) {
      const names = active.map((s) => s.name);
      throw new BackupError(
        'busy',
        `Synapse is running on ${ctx.dataDir} (${ctx.workload.description}: service ${names.join(', ')} is active): ${UNDER_IT}`,
        { remedy: { kind: 'stop-synapse', service: names[0] } },
      );
    }
  }
  if (services.length > 0) return;
  const targets = unique([...(await databases), ...configDatabases(config)]);
  if (!config && targets.length === 0) return;
  const found = await look(ctx, config, targets);
  if (found.how === 'pid') {
    const pidFile = config?.paths.pidFile;
    throw new BackupError(
      'busy',
      `Synapse is running on ${ctx.dataDir}: its pid file ${pidFile} (pid_file in homeserver.yaml) names process ${found.pid}, which is alive; ${UNDER_IT}`,
      { remedy: { kind: 'stop-synapse', pidFile, pid: found.pid } },
    );
  }
  if (found.how === 'proc') {
    const what =
      found.config === undefined
        ? `in ${found.cwd}`
        : found.config.startsWith('/')
          ? `with ${found.config}`
          : `with ${found.config}, a relative path, and a working directory this user may not read (it may be this data dir's; run as root to tell)`;
    throw new BackupError(
      'busy',
      `Synapse is running on ${ctx.dataDir}: process ${found.pid} is ${found.name} ${what}; ${UNDER_IT}`,
      { remedy: { kind: 'stop-synapse' } },
    );
  }
  if (found.how === 'open') {
    // Outside the data dir (an @external database, or one its homeserver.yaml names
    // elsewhere): the Synapse is running there, not on the data dir.
    const inside = found.holder.path.startsWith(`${ctx.dataDir}/`);
    const where = inside ? ctx.dataDir : posix.dirname(found.holder.path);
    const which = inside
      ? 'a database this restore would replace'
      : `a database this restore would replace, or that homeserver.yaml in ${ctx.dataDir} names`;
    throw new BackupError(
      'busy',
      `Synapse is running on ${where}: ${describeHolder(found.holder)}, ${which}; ${UNDER_IT}`,
      { remedy: { kind: 'stop-synapse' } },
    );
  }
}

/**
 * With `services` stopped (the swap's first step, restore-swap.ts): refuses
 * (`busy`) while any process still has one of `databases` (absolute paths) or
 * their -wal, -shm, -journal open: a second Synapse on the same files, one in
 * a container the service is not, a child the service left. The remedy names
 * the process to stop.
 */
export async function refuseOpenDatabases(
  ctx: EngineContext,
  services: string[],
  databases: string[],
): Promise<void> {
  const targets = unique(databases);
  if (targets.length === 0) return;
  const found = await look(ctx, undefined, targets);
  if (found.how !== 'open') return;
  throw new BackupError(
    'busy',
    `with ${services.join(', ')} stopped, ${describeHolder(found.holder)}, a database this restore would replace; ${UNDER_IT}`,
    { remedy: { kind: 'stop-process', pids: [found.holder.pid] } },
  );
}

/** Runs the workload's check (byProcess when `config` is given) and parses what it printed. */
async function look(
  ctx: EngineContext,
  config: HomeserverConfig | undefined,
  databases: string[],
): Promise<Found> {
  const out = await runCommand(
    ctx.workload,
    runningCheckCommand({
      pidFile: config?.paths.pidFile ?? '',
      configPath: config?.paths.configPath ?? '',
      dataDir: ctx.dataDir,
      configRoot: ctx.configRoot ?? '',
      byProcess: config !== undefined,
      databases,
    }),
    `looking for a Synapse running on ${ctx.dataDir}`,
  );
  const [first, ...rest] = out.replace(/\n$/, '').split('\n');
  const [how, pid, name] = first.split(' ');
  if (how === 'pid') return { how, pid: Number(pid) };
  if (how === 'proc') {
    const where = rest.join('\n');
    const config = where.startsWith('config ') ? where.slice(7) : undefined;
    const cwd = where.startsWith('cwd ') ? where.slice(4) : undefined;
    return { how, pid: Number(pid), name: PROCESS_NAMES[name] ?? name, config, cwd };
  }
  if (how === 'open') return { how, holder: JSON.parse(first.slice(5)) as Holder };
  return { how: 'none' };
}

/**
 * `process 4242 (python3, -c /data/homeserver.yaml) has /data/homeserver.db open`:
 * the process's name and, when its argv gives one, its config path. Never the
 * rest of its command line, which may carry another program's secrets.
 */
function describeHolder(holder: Holder): string {
  const config = configArgument(holder.argv);
  // eslint-disable-next-line no-control-regex -- a name's control characters, as spaces
  const what = [holder.comm.replace(/[\x00-\x1f\x7f]/g, ' '), config].filter(Boolean).join(', ');
  return `process ${holder.pid}${what ? ` (${what})` : ''} has ${holder.path} open`;
}

/**
 * Synapse's `--config-path X` (also `--config-path=X`, and `-c X` when X is a .yaml
 * file: python's own `-c` takes a program) from `argv`, as `flag value`; else undefined.
 */
function configArgument(argv: readonly string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const next = argv[i + 1];
    const isConfig = arg === '--config-path' || (arg === '-c' && /\.ya?ml$/.test(next ?? ''));
    if (isConfig && next !== undefined) {
      return `${arg} ${next.slice(0, MAX_PATH_CHARS)}`;
    }
    if (arg.startsWith('--config-path=')) return arg.slice(0, MAX_PATH_CHARS + 14);
  }
  return undefined;
}

function unique(paths: string[]): string[] {
  return [...new Set(paths)];
}
