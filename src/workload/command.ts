import type { Readable } from 'node:stream';
import { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { WorkloadCommandError } from '../errors';
import type { ExecOptions, ExecProcess, ExitStatus, Workload } from './workload';

/** Keeps the last `limit` bytes of a stream (a command's stderr) and drains the rest. */
export class TailCollector {
  private chunks: Buffer[] = [];
  private size = 0;

  constructor(
    stream: Readable,
    private readonly limit = 16 * 1024,
  ) {
    stream.on('data', (chunk: Buffer) => this.add(chunk));
    stream.on('error', () => undefined);
  }

  private add(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size - (this.chunks[0]?.length ?? 0) >= this.limit && this.chunks.length > 1) {
      this.size -= this.chunks.shift()!.length;
    }
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    return all
      .subarray(Math.max(0, all.length - this.limit))
      .toString('utf8')
      .trim();
  }
}

/** Builds the error for a command that did not exit 0, quoting the end of its stderr. */
export function commandFailure(
  what: string,
  status: ExitStatus,
  stderr: string,
): WorkloadCommandError {
  const how =
    status.exitCode === null
      ? `was killed${status.signal ? ` by ${status.signal}` : ''}`
      : `exited with status ${status.exitCode}`;
  const lines = stderr.split('\n').filter(Boolean);
  const detail = lines.slice(-3).join('; ');
  return new WorkloadCommandError(
    `${what} ${how}${detail ? `: ${detail}` : ''}`,
    status.exitCode,
    stderr,
  );
}

/**
 * A writable that feeds a workload command's stdin, starting the command only
 * when the first byte arrives (so a stream that fails before producing data,
 * such as a wrong passphrase, never runs the command). Ending the writable
 * delivers EOF and waits for a zero exit.
 */
export class CommandSink extends Writable {
  private proc: ExecProcess | undefined;
  private stderr: TailCollector | undefined;

  constructor(
    private readonly workload: Workload,
    private readonly options: Omit<ExecOptions, 'stdin'>,
    private readonly what: string,
    private readonly beforeStart: () => Promise<void> = async () => undefined,
  ) {
    super({ highWaterMark: 1024 * 1024 });
  }

  get started(): boolean {
    return this.proc !== undefined;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.ensureStarted()
      .then((proc) => writeAll(proc, chunk))
      .then(
        () => done(),
        (err: Error) => this.failWith(err).then(done),
      );
  }

  override _final(done: (err?: Error | null) => void): void {
    const proc = this.proc;
    if (!proc) {
      done();
      return;
    }
    proc.stdin!.end();
    this.exitStatus(proc).then(
      () => done(),
      (err: Error) => done(err),
    );
  }

  /**
   * Every teardown ends the command: its stdin is closed (EOF) and it is killed,
   * so a tar never waits for input that will not come. A start still under way
   * (`beforeStart`) never runs the command.
   */
  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    const proc = this.proc;
    if (proc) {
      proc.stdin?.destroy();
      proc.kill();
    }
    done(err);
  }

  private async ensureStarted(): Promise<ExecProcess> {
    if (this.proc) return this.proc;
    await this.beforeStart();
    if (this.destroyed) throw new Error(`${this.what} was torn down before it started`);
    const proc = this.workload.exec({ ...this.options, stdin: true });
    this.proc = proc;
    if (this.destroyed) {
      // Torn down while exec() ran (whatever it set off destroyed this sink).
      proc.stdin?.destroy();
      proc.kill();
      throw new Error(`${this.what} was torn down as it started`);
    }
    this.stderr = new TailCollector(proc.stderr);
    proc.stdout.resume();
    proc.stdin!.on('error', () => undefined);
    return proc;
  }

  private async exitStatus(proc: ExecProcess): Promise<void> {
    const status = await proc.wait();
    if (status.exitCode !== 0) throw commandFailure(this.what, status, this.stderr?.text() ?? '');
  }

  /** A write failed (usually EPIPE): the command's own exit status says more. */
  private async failWith(err: Error): Promise<Error> {
    const proc = this.proc;
    if (!proc) return err;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.exitStatus(proc),
        new Promise((resolve) => (timer = setTimeout(resolve, 5000))),
      ]);
    } catch (exitErr) {
      return exitErr as Error;
    } finally {
      clearTimeout(timer);
    }
    return err;
  }
}

function writeAll(proc: ExecProcess, chunk: Buffer): Promise<void> {
  const stdin = proc.stdin!;
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => {
      stdin.off('drain', onDrain);
      reject(err);
    };
    const onDrain = () => {
      stdin.off('error', onError);
      resolve();
    };
    if (stdin.destroyed) {
      reject(new Error('the command closed its input'));
      return;
    }
    if (stdin.write(chunk)) {
      resolve();
      return;
    }
    stdin.once('drain', onDrain);
    stdin.once('error', onError);
  });
}

/** What a short command said and how it ended (see execCollect). */
export interface CommandResult {
  /** Exit code, or null when it was killed by a signal (`status.signal`). */
  exitCode: number | null;
  status: ExitStatus;
  /** Its stdout as UTF-8: the first MiB (whole chunks until 1 MiB is reached). */
  stdout: string;
  /** The last 16 KiB of its stderr as UTF-8, trimmed (what error messages quote). */
  stderr: string;
}

/** Bytes of stdout execCollect keeps; the rest is read and dropped. */
const COLLECT_STDOUT_BYTES = 1024 * 1024;

/**
 * Runs a short command in the workload with its stdin closed, and collects its
 * output. Resolves whatever the exit status; rejects when the transport fails
 * (the workload's `wait()` rejects: Pebble unreachable, a dropped connection).
 */
export async function execCollect(
  workload: Workload,
  options: Omit<ExecOptions, 'stdin'>,
): Promise<CommandResult> {
  const proc = workload.exec({ ...options, stdin: false });
  const stderr = new TailCollector(proc.stderr);
  const chunks: Buffer[] = [];
  let size = 0;
  proc.stdout.on('data', (chunk: Buffer) => {
    if (size < COLLECT_STDOUT_BYTES) chunks.push(chunk);
    size += chunk.length;
  });
  // A stdout that fails also fails wait(), which says why.
  const stdoutDone = finished(proc.stdout).catch(() => undefined);
  const [status] = await Promise.all([proc.wait(), stdoutDone]);
  return {
    exitCode: status.exitCode,
    status,
    stdout: Buffer.concat(chunks).toString('utf8'),
    stderr: stderr.text(),
  };
}

/**
 * Runs a command to completion and returns its stdout (see execCollect: the first MiB).
 * Throws WorkloadCommandError (commandFailure: `<what> exited with status N: <stderr>`)
 * when it does not exit 0.
 */
export async function runCommand(
  workload: Workload,
  command: string[],
  what: string,
): Promise<string> {
  const result = await execCollect(workload, { command });
  if (result.exitCode !== 0) throw commandFailure(what, result.status, result.stderr);
  return result.stdout;
}

/**
 * Whether `path` is a regular file in the workload (POSIX sh's `[ -f ]`; the path
 * reaches the script as $1, never as script text). Throws WorkloadCommandError
 * when sh itself fails.
 */
export async function fileExists(workload: Workload, path: string): Promise<boolean> {
  const script = '[ -f "$1" ] && echo yes || true';
  const out = await runCommand(
    workload,
    ['sh', '-c', script, 'synapse-backup', path],
    `checking ${path}`,
  );
  return out.trim() === 'yes';
}
