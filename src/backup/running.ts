/**
 * Is Synapse running on the data dir a restore is about to replace? A restore
 * in place under a running Synapse swaps its database away: the server keeps
 * using the deleted file and acknowledges writes that vanish at its next
 * restart. The engine only stops the services it is told to (the charm:
 * `synapse`; the CLI: `--service`), so without them it looks first, in the
 * workload:
 * - its services (Pebble): one whose name contains "synapse" is active;
 * - the pid file homeserver.yaml names (`pid_file`, src/backup/homeserver.ts):
 *   a process with that pid exists (`/proc/<pid>`);
 * - a `synapse.app.homeserver` process of this config or data dir (Synapse
 *   writes no pid file in the foreground, as the image and systemd run it).
 */
import { BackupError } from '../errors';
import { runCommand } from '../workload/command';
import type { EngineContext } from './context';
import { type HomeserverConfig, homeserverPaths, readHomeserverConfigOf } from './homeserver';

/**
 * Finds a live Synapse of this data dir in the workload and prints `pid <pid>`
 * (a live process named by the pid file $1, if any: Synapse writes it when it
 * daemonizes), `proc <pid>` (a `synapse.app.homeserver` process, as Pebble,
 * systemd or the official image run it in the foreground, one of whose
 * arguments, resolved against its working directory with symlinks followed,
 * is the config $2 or the data dir $3, or whose working directory is the data
 * dir), or `none`. The data dir and config are resolved too (`pwd -P`,
 * `readlink -f`): `-c data/homeserver.yaml` run from the parent, or a data dir
 * reached through a symlink, is found. Paths reach it as arguments, never as
 * script text.
 */
const RUNNING_SCRIPT = [
  'if [ -n "$1" ] && [ -f "$1" ]; then',
  '  pid=$(head -c 64 "$1" | tr -cd 0-9 | head -c 12)',
  '  [ -n "$pid" ] && [ -d "/proc/$pid" ] && { echo "pid $pid"; exit 0; }',
  'fi',
  'rd=$(cd -- "$3" 2>/dev/null && pwd -P) || rd=$3',
  'rc=$(readlink -f -- "$2" 2>/dev/null) && [ -n "$rc" ] || rc=$2',
  // The candidates: one grep over every cmdline instead of three programs a process;
  // every process when grep cannot (no -a, or too many pids for one command line).
  "pat='synapse[.]app[.]homeserver'",
  'all=y',
  // (Never the name itself in this text: this sh's argv would match in another check.)
  `if printf 'x\\0synapse.%s\\0' app.homeserver | grep -q -a -s -e "$pat" 2>/dev/null; then`,
  '  if hits=$(cd /proc && grep -l -a -s -e "$pat" -- [0-9]*/cmdline 2>/dev/null; [ $? -le 2 ]); then all=n; fi',
  'fi',
  'if [ $all = y ]; then set -- /proc/[0-9]*',
  "else set -- $(printf '%s\\n' $hits | sed -n 's,^\\([0-9]*\\)/cmdline$,/proc/\\1,p'); fi",
  'for d; do',
  '  [ "${d#/proc/}" = "$$" ] && continue',
  '  args=$(tr "\\0" "\\n" < "$d/cmdline" 2>/dev/null) || continue',
  '  printf "%s\\n" "$args" | grep -q "synapse[.]app[.]homeserver" || continue',
  '  cwd=$(readlink "$d/cwd" 2>/dev/null) || cwd=',
  '  [ -n "$cwd" ] && [ "$cwd" = "$rd" ] && { echo "proc ${d#/proc/}"; exit 0; }',
  '  hit=$(printf "%s\\n" "$args" | while IFS= read -r a; do',
  '    a=${a#--config-path=}',
  '    case $a in /*) ;; "") continue ;; *) [ -n "$cwd" ] || continue; a="$cwd/$a" ;; esac',
  '    r=$(readlink -f -- "$a" 2>/dev/null) || continue',
  '    if [ "$r" = "$rc" ] || [ "$r" = "$rd" ]; then echo y; break; fi',
  '  done)',
  '  [ -n "$hit" ] && { echo "proc ${d#/proc/}"; exit 0; }',
  'done',
  'echo none',
].join('\n');

const UNDER_IT =
  'restoring under it would lose the writes it makes afterwards; nothing was changed';

/**
 * Refuses (`busy`) a restore into `ctx.dataDir` while Synapse runs on it and
 * the engine will not stop it: an active Pebble service named like synapse,
 * a live pid in homeserver.yaml's `pid_file`, or a live synapse.app.homeserver
 * process of this config or data dir (see RUNNING_SCRIPT). With `services`
 * named, the engine stops and starts them around the swap: only services it
 * would leave running are checked, and the processes are not (the named
 * service is Synapse). A data dir without homeserver.yaml (a fresh directory)
 * is not checked: an active service there runs on another one. Nothing found
 * (a stale pid file whose process is gone) resolves. The message says what to
 * do; a live pid in the pid file may be another program's (a reused pid): the
 * remedy names the file to remove then. `configRead`: the data dir's
 * homeserver.yaml as readHomeserverConfigOf reads it (read now when not given).
 */
export async function refuseRunningSynapse(
  ctx: EngineContext,
  services: string[],
  configRead: Promise<HomeserverConfig | undefined> = readHomeserverConfigOf(ctx),
): Promise<void> {
  // Listed while homeserver.yaml is read. A transport that cannot list services
  // (no Pebble in the workload) leaves the process checks.
  const listing = ctx.workload.serviceStatus([]).catch(() => []);
  // No homeserver.yaml: a fresh directory, which nothing runs on. One that is
  // not YAML (what the restore may be about to fix) has the default paths.
  const config = await configRead.catch((err: unknown) => {
    if (err instanceof BackupError && err.code === 'invalid-config') {
      return { paths: homeserverPaths({}, ctx.dataDir) };
    }
    throw err;
  });
  if (!config) return;
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
  if (services.length > 0) return;
  const { pidFile, configPath } = config.paths;
  const found = (
    await runCommand(
      ctx.workload,
      ['sh', '-c', RUNNING_SCRIPT, 'synapse-backup', pidFile ?? '', configPath, ctx.dataDir],
      `looking for a Synapse running on ${ctx.dataDir}`,
    )
  ).trim();
  const [how, pid] = found.split(' ');
  if (how === 'pid') {
    throw new BackupError(
      'busy',
      `Synapse is running on ${ctx.dataDir}: its pid file ${pidFile} (pid_file in homeserver.yaml) names process ${pid}, which is alive; ${UNDER_IT}`,
      { remedy: { kind: 'stop-synapse', pidFile, pid: Number(pid) } },
    );
  }
  if (how === 'proc') {
    throw new BackupError(
      'busy',
      `Synapse is running on ${ctx.dataDir}: process ${pid} is synapse.app.homeserver with ${configPath}; ${UNDER_IT}`,
      { remedy: { kind: 'stop-synapse' } },
    );
  }
}
