/**
 * Is Synapse running on the data dir a restore is about to replace? A restore
 * in place under a running Synapse swaps its database away: the server keeps
 * using the deleted file and acknowledges writes that vanish at its next
 * restart. The engine only stops the services it is told to (the charm:
 * `synapse`; the CLI: `--service`), so without them it looks first:
 * - the pid file homeserver.yaml names (`pid_file`, src/backup/homeserver.ts):
 *   a process with that pid exists in the workload (`/proc/<pid>`);
 * - the workload's services (Pebble): one whose name contains "synapse" is active.
 */
import { BackupError } from '../errors';
import { runCommand } from '../workload/command';
import type { EngineContext } from './context';
import { readHomeserverConfig } from './homeserver';

/**
 * What the pid file says, in the workload: `none` (no such file), `empty` (no
 * pid in it), `live <pid>` or `gone <pid>`. The path is $1, never script text.
 */
const PID_SCRIPT = [
  '[ -f "$1" ] || { echo none; exit 0; }',
  'pid=$(head -c 64 "$1" | tr -cd 0-9 | head -c 12)',
  '[ -n "$pid" ] || { echo empty; exit 0; }',
  '[ -d "/proc/$pid" ] && echo "live $pid" || echo "gone $pid"',
].join('\n');

/**
 * Refuses (`busy`) a restore into `ctx.dataDir` while Synapse runs on it and
 * the engine will not stop it: a live pid in homeserver.yaml's `pid_file`, or
 * an active Pebble service named like synapse. With `services` named, the
 * engine stops and starts them around the swap: only services it would leave
 * running are checked, and the pid file is not (the named service is Synapse).
 * Nothing to check (no homeserver.yaml, no pid_file, the local transport's
 * empty service list) resolves. The message says what to do; a pid file left
 * by a Synapse that is gone while its pid was reused is named for removal.
 */
export async function refuseRunningSynapse(ctx: EngineContext, services: string[]): Promise<void> {
  const active = (await ctx.workload.serviceStatus([])).filter(
    (s) => /synapse/i.test(s.name) && s.current === 'active' && !services.includes(s.name),
  );
  if (active.length > 0) {
    const names = active.map((s) => s.name);
    throw new BackupError(
      'busy',
      `Synapse is running on ${ctx.dataDir} (${ctx.workload.description}: service ${names.join(', ')} is active): restoring under it would lose the writes it makes afterwards; nothing was changed`,
      { remedy: { kind: 'stop-synapse', service: names[0] } },
    );
  }
  if (services.length > 0) return;
  const config = await readHomeserverConfig(ctx.workload, ctx.dataDir);
  const pidFile = config?.paths.pidFile;
  if (!pidFile) return;
  const state = (
    await runCommand(
      ctx.workload,
      ['sh', '-c', PID_SCRIPT, 'synapse-backup', pidFile],
      `reading Synapse's pid file ${pidFile}`,
    )
  ).trim();
  const live = /^live (\d+)$/.exec(state);
  if (!live) return;
  throw new BackupError(
    'busy',
    `Synapse is running on ${ctx.dataDir}: its pid file ${pidFile} (pid_file in homeserver.yaml) names process ${live[1]}, which is alive; restoring under it would lose the writes it makes afterwards; nothing was changed`,
    { remedy: { kind: 'stop-synapse', pidFile, pid: Number(live[1]) } },
  );
}
