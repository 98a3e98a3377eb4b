import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { BackupError } from '../errors';
import { minimalEnvironment } from './environment';
import type { ExecOptions, ExecProcess, ExitStatus, ServiceStatus, Workload } from './workload';

/**
 * Runs commands on this host. Used by the CLI (disaster recovery without Juju),
 * the demo and fast tests. It manages no services. Commands get a minimal
 * environment (src/workload/environment.ts), never this process's.
 */
export class LocalWorkload implements Workload {
  readonly description = 'local host';

  exec(options: ExecOptions): ExecProcess {
    const [file, ...args] = options.command;
    if (!file) throw new BackupError('workload', 'empty command');
    const child = spawn(file, args, {
      cwd: options.workingDir,
      // Never process.env: the CLI holds the passphrase and S3 secret key there.
      env: minimalEnvironment(options.environment),
      stdio: [options.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<ExitStatus>((resolve, reject) => {
      child.once('error', (err) =>
        reject(new BackupError('workload', `cannot run ${file}: ${err.message}`, { cause: err })),
      );
      child.once('close', (code, signal) =>
        resolve({ exitCode: code, signal: signal ?? undefined }),
      );
    });
    // Surface spawn errors only through wait(); avoid an unhandled rejection meanwhile.
    exited.catch(() => undefined);
    return {
      stdout: child.stdout as Readable,
      stderr: child.stderr as Readable,
      stdin: child.stdin ?? null,
      wait: () => exited,
      kill: () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
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
