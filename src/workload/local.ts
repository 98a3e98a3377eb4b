import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { BackupError } from '../errors';
import { minimalEnvironment } from './environment';
import {
  type ExecOptions,
  type ExecProcess,
  type ExitStatus,
  type ServiceStatus,
  type Workload,
  launchedCommand,
} from './workload';

/** Process groups of the commands running now (their leaders' pids). */
const liveGroups = new Set<number>();

/** SIGKILL to a command's whole process group (its children too); gone already is fine. */
function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // ESRCH: the group has exited.
  }
}

// A process that exits at once (the CLI's second Ctrl-C) takes its commands
// along: in their own groups, nothing else would end them.
process.once('exit', () => {
  for (const pid of liveGroups) killGroup(pid);
});

/**
 * Runs commands on this host. Used by the CLI (disaster recovery without Juju),
 * the demo and fast tests. It manages no services. Commands get a minimal
 * environment (src/workload/environment.ts), never this process's.
 *
 * Each command runs in a process group of its own (`detached`), so a
 * terminal's Ctrl-C (SIGINT to the foreground group) or `timeout`'s signal to
 * the CLI's group reaches only the CLI: its cleanup decides how the commands
 * end (a restore's swap is finished first). kill() ends the command's whole
 * group (sh and the tar, dd or python3 it started), and commands still running
 * when this process exits are killed with it.
 */
export class LocalWorkload implements Workload {
  readonly description = 'local host';

  exec(options: ExecOptions): ExecProcess {
    if (!options.command[0]) throw new BackupError('workload', 'empty command');
    const [file, ...args] = launchedCommand(options) as [string, ...string[]];
    const child = spawn(file, args, {
      cwd: options.workingDir,
      // Never process.env: the CLI holds the passphrase and S3 secret key there.
      env: minimalEnvironment(options.environment),
      stdio: [options.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const { pid } = child;
    if (pid !== undefined) liveGroups.add(pid);
    const exited = new Promise<ExitStatus>((resolve, reject) => {
      child.once('error', (err) =>
        reject(
          new BackupError('workload', `cannot run ${options.command[0]}: ${err.message}`, {
            cause: err,
          }),
        ),
      );
      child.once('close', (code, signal) =>
        resolve({ exitCode: code, signal: signal ?? undefined }),
      );
    });
    // Once the leader is gone, whatever it left in the group goes too (a
    // background child of sh): nothing of a finished command outlives it.
    child.once('exit', () => {
      if (pid !== undefined && liveGroups.delete(pid)) killGroup(pid);
    });
    // Surface spawn errors only through wait(); avoid an unhandled rejection meanwhile.
    exited.catch(() => undefined);
    return {
      stdout: child.stdout as Readable,
      stderr: child.stderr as Readable,
      stdin: child.stdin ?? null,
      wait: () => exited,
      kill: () => {
        if (pid !== undefined && liveGroups.has(pid)) killGroup(pid);
      },
    };
  }

  async stopServices(names: string[]): Promise<void> {
    this.refuseServices(names);
  }

  async startServices(names: string[]): Promise<void> {
    this.refuseServices(names);
  }

  async serviceStatus(names: string[]): Promise<ServiceStatus[]> {
    this.refuseServices(names);
    return [];
  }

  private refuseServices(names: string[]): void {
    if (names.length > 0) {
      throw new BackupError(
        'workload',
        `the local transport manages no services (asked for ${names.join(', ')}); stop Synapse yourself`,
      );
    }
  }
}
