/**
 * One operation at a time per data dir: create, restore and prune's workload
 * cleanup hold `<data dir>/.synapse-backup.lock` (scripts/lock.ts) while they
 * run. The holder line is JSON: operation, host, pid, ISO start time and a
 * random token; the holder refreshes the line's file time every
 * LOCK_HEARTBEAT_MS. A lock is stale, and taken over (and said so through
 * `onNotice`), when its holder was a process of this host that is gone, or
 * when it has not been refreshed for LOCK_STALE_SECONDS.
 *
 * A holder's engine may be gone (SIGKILL) while a command it started in the
 * workload still runs (the local transport's own process group, a Pebble or
 * Kubernetes exec): every command run under the lock records its pid in the
 * lock dir (scripts/lock.ts recordRunLauncher), and a stale lock with a live one
 * is not taken over (`busy`, naming it).
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { BackupError } from '../errors';
import { commandFailure, execCollect, runCommand } from '../workload/command';
import type { ExecOptions, Workload } from '../workload/workload';
import type { EngineContext } from './context';
import {
  LOCK_HELD_EXIT,
  LOCK_RUNNING_EXIT,
  recordRunLauncher,
  releaseLockCommand,
  takeLockCommand,
  takeOverLockCommand,
  touchLockCommand,
} from './scripts';

export const LOCK_HEARTBEAT_MS = 60_000;
/** Ten missed heartbeats. */
export const LOCK_STALE_SECONDS = 600;

interface Holder {
  operation?: string;
  host?: string;
  pid?: number;
  since?: string;
  token?: string;
}

/**
 * Runs `run` holding the data dir's lock for `operation` (e.g. "create-backup
 * 20261129120000"), with a context whose workload records each command it runs
 * in the lock dir (see the module's docstring). Throws `busy` naming the holder
 * when another live run has it, or naming the process when a command of a gone
 * holder still runs in the workload, or the workload's errors; the lock is
 * released whatever `run` does.
 */
export async function withDataDirLock<T>(
  ctx: EngineContext,
  operation: string,
  run: (locked: EngineContext) => Promise<T>,
): Promise<T> {
  const token = randomBytes(6).toString('hex');
  const holder = JSON.stringify({
    operation,
    host: hostname(),
    pid: process.pid,
    since: new Date().toISOString(),
    token,
  });
  await takeLock(ctx, holder);
  const beat = setInterval(() => {
    runCommand(ctx.workload, touchLockCommand(ctx.dataDir, holder), 'refreshing the lock').catch(
      () => undefined,
    );
  }, LOCK_HEARTBEAT_MS);
  beat.unref();
  try {
    return await run({ ...ctx, workload: new RecordingWorkload(ctx.workload, ctx.dataDir, token) });
  } finally {
    clearInterval(beat);
    // A lock left by a failed release goes stale and is taken over.
    await runCommand(
      ctx.workload,
      releaseLockCommand(ctx.dataDir, holder),
      'releasing the lock',
    ).catch(() => undefined);
  }
}

async function takeLock(ctx: EngineContext, holder: string): Promise<void> {
  const what = `taking the lock of ${ctx.dataDir}`;
  let held = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const taken = await execCollect(ctx.workload, {
      command: takeLockCommand(ctx.dataDir, holder),
    });
    if (taken.exitCode === 0) return;
    if (taken.exitCode !== LOCK_HELD_EXIT) throw commandFailure(what, taken.status, taken.stderr);
    const match = /^(-?\d+) (.*)$/s.exec(taken.stdout.trim());
    const age = Number(match?.[1] ?? 0);
    held = match?.[2] ?? '';
    const stale = staleReason(parseHolder(held), age);
    if (!stale) break;
    const over = await execCollect(ctx.workload, {
      command: takeOverLockCommand(ctx.dataDir, held, holder, parseHolder(held).token ?? ''),
    });
    if (over.exitCode === 0) {
      ctx.onNotice?.(
        `took over the lock of ${ctx.dataDir} from ${describeHolder(parseHolder(held))}: ${stale}`,
      );
      return;
    }
    if (over.exitCode === LOCK_RUNNING_EXIT) throw stillRunning(ctx, held, stale, over.stdout);
    if (over.exitCode !== LOCK_HELD_EXIT) throw commandFailure(what, over.status, over.stderr);
  }
  throw new BackupError(
    'busy',
    `${ctx.dataDir} is in use by ${describeHolder(parseHolder(held))}: one operation at a time`,
    { remedy: { kind: 'advice', text: 'wait for it to finish, then retry' } },
  );
}

/**
 * `busy`: the lock `held` is stale (`stale` says why), but processes its holder
 * started in the workload (`stdout`: `<pid> <command name>` lines) still run.
 */
function stillRunning(
  ctx: EngineContext,
  held: string,
  stale: string,
  stdout: string,
): BackupError {
  const running = stdout
    .split('\n')
    .map((line) => /^(\d+) (.*)$/.exec(line))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ pid: Number(m[1]), name: m[2]!.trim() || '?' }));
  const pids = running.map((r) => r.pid);
  const named = running.map((r) => `${r.pid} (${r.name})`).join(', ');
  const which = `${pids.length === 1 ? 'process' : 'processes'} ${named}`;
  return new BackupError(
    'busy',
    `${ctx.dataDir} is in use by ${which} in the workload, started by ${describeHolder(parseHolder(held))}: its lock is stale (${stale}) but what it started still runs; the lock was not taken over, nothing was started`,
    { remedy: { kind: 'stop-process', pids } },
  );
}

/**
 * The workload of a run that holds the lock: each command is run through
 * recordRunLauncher, so that its pid is in the lock dir while it may run.
 */
class RecordingWorkload implements Workload {
  readonly description: string;
  readonly removeStale?: () => Promise<string[]>;

  constructor(
    private readonly inner: Workload,
    private readonly dataDir: string,
    private readonly token: string,
  ) {
    this.description = inner.description;
    if (inner.removeStale) this.removeStale = () => inner.removeStale!();
  }

  exec(options: ExecOptions) {
    // After the command's own launcher (if any), so that the recorder execs the command itself.
    const launcher = [...(options.launcher ?? []), ...recordRunLauncher(this.dataDir, this.token)];
    return this.inner.exec({ ...options, launcher });
  }

  stopServices(names: string[]) {
    return this.inner.stopServices(names);
  }

  startServices(names: string[]) {
    return this.inner.startServices(names);
  }

  serviceStatus(names: string[]) {
    return this.inner.serviceStatus(names);
  }
}

function parseHolder(line: string): Holder {
  try {
    const parsed = JSON.parse(line) as Holder;
    return typeof parsed === 'object' && parsed ? parsed : {};
  } catch {
    return {};
  }
}

/** "create-backup X (host h, pid 12, since T)". */
function describeHolder(h: Holder): string {
  if (!h.operation) return 'another run';
  return `${h.operation} (host ${h.host ?? '?'}, pid ${h.pid ?? '?'}, since ${h.since ?? '?'})`;
}

/** Why a lock whose heartbeat is `age` seconds old is stale, or undefined while it is live. */
function staleReason(h: Holder, age: number): string | undefined {
  if (h.host === hostname() && typeof h.pid === 'number' && !processAlive(h.pid)) {
    return `its holder, pid ${h.pid} on this host, is gone`;
  }
  if (age > LOCK_STALE_SECONDS) return `its holder has not refreshed it for ${age} s`;
  return undefined;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
