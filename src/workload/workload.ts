import type { Readable, Writable } from 'node:stream';

export interface ExecOptions {
  command: string[];
  workingDir?: string;
  environment?: Record<string, string>;
  /** When false the command's stdin is closed at once. */
  stdin?: boolean;
  /**
   * Bulk output: the transport may carry stdout by a faster path than its own stream
   * (Pebble: a unix socket in a shared directory, when configured). Without stdin only.
   */
  directStdout?: boolean;
  /** Bulk input: the same for stdin (with `stdin: true`). */
  directStdin?: boolean;
  /**
   * argv the transport runs `command` through, its words before the command's: a
   * program that execs the command in its own process (the same pid), such as
   * the data dir lock's recorder (src/backup/scripts/lock.ts). `command` stays
   * the command's own (its name in messages).
   */
  launcher?: readonly string[];
}

/** What the transport runs: `launcher` (if any), then `command`. */
export function launchedCommand(options: ExecOptions): string[] {
  return [...(options.launcher ?? []), ...options.command];
}

export interface ExitStatus {
  /** Exit code, or null when the command was killed by a signal. */
  exitCode: number | null;
  signal?: string;
}

/**
 * A running command. `stdout` and `stderr` are readable streams that honour
 * backpressure: when the consumer stops reading, the transport stops reading
 * from the workload, and the command blocks on its pipe.
 */
export interface ExecProcess {
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** Present when `stdin: true`. Ending it delivers EOF to the command. */
  readonly stdin: Writable | null;
  /** Resolves once the command has exited and its output streams have ended. */
  wait(): Promise<ExitStatus>;
  /** Kills the command (best effort) and tears down the transport's connections. */
  kill(): void;
}

export interface ServiceStatus {
  name: string;
  current: 'active' | 'inactive' | 'error' | 'backoff' | string;
}

/** Access to the Synapse container: commands and (where the transport has them) services. */
export interface Workload {
  readonly description: string;
  exec(options: ExecOptions): ExecProcess;
  stopServices(names: string[]): Promise<void>;
  startServices(names: string[]): Promise<void>;
  serviceStatus(names: string[]): Promise<ServiceStatus[]>;
  /**
   * Removes what a run of this transport killed mid-way left outside the data dir
   * (Pebble's direct streams: archive sockets beside Pebble's). Returns the paths
   * removed. Transports that leave nothing omit it.
   */
  removeStale?(): Promise<string[]>;
}
