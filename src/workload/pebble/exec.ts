import { Readable, Writable } from 'node:stream';
import { BackupError } from '../../errors';
import type { ExecOptions, ExecProcess, ExitStatus } from '../workload';
import { deferred, destroyQuietly } from '../settling';
import type { PebbleChange, PebbleClient } from './client';
import { UnixWebSocket } from './websocket';

/** The TEXT frame that ends a stream in either direction. */
const END_COMMAND = '{"command":"end"}';
const KILL_COMMAND = JSON.stringify({ command: 'signal', signal: { name: 'SIGKILL' } });
/** Bytes buffered in each stream before the websocket is paused (Pebble messages are ≤128 KiB). */
const STREAM_HIGH_WATER_MARK = 256 * 1024;
/**
 * Input chunks waiting while a message is being sent go out together as one
 * message of up to this size: Pebble's cost is per message (a goroutine hand-off
 * and a pipe write each), so fewer, larger messages leave more CPU for the rest.
 */
const STDIN_MESSAGE_BYTES = 1024 * 1024;
/** How long kill() waits for a still-connecting control websocket before giving up on it. */
const KILL_GRACE_MS = 2000;
const KILLED: ExitStatus = { exitCode: null, signal: 'SIGKILL' };

function isEndCommand(text: string): boolean {
  try {
    return (JSON.parse(text) as { command?: unknown }).command === 'end';
  } catch {
    return false;
  }
}

/**
 * One of the command's output streams (stdout on Pebble's "stdio" websocket,
 * or stderr) as a Readable. When the consumer stops reading, the websocket is
 * paused, so Pebble's blocking writes stall and the command blocks on its pipe.
 */
class WebsocketOutput extends Readable {
  /** Settles when all output has arrived or the consumer abandoned it; rejects if the websocket failed first. */
  readonly finished = deferred<void>();
  private socket: UnixWebSocket | null = null;
  private endReceived = false;
  private abandoned = false;

  constructor(
    private readonly streamName: 'stdout' | 'stderr',
    private readonly what: string,
  ) {
    super({ highWaterMark: STREAM_HIGH_WATER_MARK });
  }

  attach(socket: UnixWebSocket): void {
    this.socket = socket;
    if (this.abandoned) socket.terminate();
    socket.on('binary', (piece) => {
      if (this.endReceived || this.abandoned) return;
      if (!this.push(piece)) socket.pause();
    });
    socket.on('text', (text) => {
      if (this.endReceived || this.abandoned || !isEndCommand(text)) return;
      this.endReceived = true;
      this.push(null);
      this.finished.resolve();
    });
    socket.on('close', (code) => {
      if (this.endReceived || this.abandoned) return;
      this.finished.reject(
        new BackupError(
          'workload',
          `${this.what}: the ${this.streamName} websocket closed (code ${code}) before the end of the output; did Pebble stop or the connection drop?`,
        ),
      );
    });
  }

  /** Fails the websocket's side of the stream (the websocket reported an error). */
  lost(err: Error): void {
    if (!this.endReceived && !this.abandoned) this.finished.reject(err);
  }

  override _read(): void {
    this.socket?.resume();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    if (!this.endReceived) {
      // The consumer gave up on the output: drop the connection, as closing a
      // pipe's read end would, and let the command meet EPIPE.
      this.abandoned = true;
      this.socket?.terminate();
      this.finished.resolve();
    }
    callback(err);
  }
}

/**
 * A command run through Pebble's exec API: `POST /v1/exec`, then websockets
 * "control", "stdio" (stdin and stdout) and "stderr" for the task, then
 * `GET /v1/changes/<id>/wait` for the exit code.
 */
export class PebbleExecProcess implements ExecProcess {
  readonly stdin: Writable | null;
  private readonly output: { stdout: WebsocketOutput; stderr: WebsocketOutput };

  private readonly what: string;
  private readonly outcome = deferred<ExitStatus>();
  private readonly stdioOpen = deferred<UnixWebSocket>();
  private readonly abortWait = new AbortController();
  private sockets: { control: UnixWebSocket; stdio: UnixWebSocket; stderr: UnixWebSocket } | null =
    null;
  private settled = false;
  private killed = false;

  /** `name`: the command's name in messages, when `options.command` wraps it. */
  constructor(
    private readonly client: PebbleClient,
    private readonly options: ExecOptions,
    name = options.command[0],
  ) {
    this.what = `cannot run ${JSON.stringify(name)} in the workload`;
    this.output = {
      stdout: new WebsocketOutput('stdout', this.what),
      stderr: new WebsocketOutput('stderr', this.what),
    };
    this.stdin = options.stdin
      ? new Writable({
          highWaterMark: STREAM_HIGH_WATER_MARK,
          write: (chunk: Buffer, _encoding, callback) => this.sendStdin(chunk, callback),
          writev: (chunks, callback) => this.sendStdinBatch(chunks, callback),
          final: (callback) => this.sendStdin(END_COMMAND, callback),
        })
      : null;
    this.run().then(
      (status) => this.settle(status),
      (err: Error) => this.settle(err),
    );
  }

  get stdout(): Readable {
    return this.output.stdout;
  }

  get stderr(): Readable {
    return this.output.stderr;
  }

  wait(): Promise<ExitStatus> {
    return this.outcome.promise;
  }

  kill(): void {
    if (this.settled) return;
    this.killed = true;
    this.settle(KILLED);
    const control = this.sockets?.control;
    if (!control) return; // run() sees `killed` and never connects: the command never starts
    // Pebble also SIGKILLs the command when the control websocket drops
    // abnormally, so tearing down is enough if the signal cannot be sent.
    const sendSignal = () => control.send(KILL_COMMAND, () => this.teardown());
    if (control.state === 'open') sendSignal();
    else if (control.state === 'connecting') control.once('open', sendSignal);
    else this.teardown();
    setTimeout(() => this.teardown(), KILL_GRACE_MS).unref();
  }

  private async run(): Promise<ExitStatus> {
    const { command, environment, workingDir } = this.options;
    const { changeId, result } = await this.client.async<{ 'task-id': string }>(
      'POST',
      '/v1/exec',
      {
        what: this.what,
        body: {
          command,
          environment,
          'working-dir': workingDir,
          'split-stderr': true,
        },
      },
    );
    if (this.killed) return KILLED;

    // Pebble starts the command once "stdio" and "stderr" are connected, and
    // gives up if they are not within 5 seconds: connect at once.
    const taskPath = `/v1/tasks/${encodeURIComponent(result['task-id'])}/websocket`;
    const { stdout: stdoutOutput, stderr: stderrOutput } = this.output;
    const stdio = this.connect(`${taskPath}/stdio`, stdoutOutput);
    const stderr = this.connect(`${taskPath}/stderr`, stderrOutput);
    const control = this.connect(`${taskPath}/control`, null);
    this.sockets = { control, stdio, stderr };
    stdoutOutput.attach(stdio);
    stderrOutput.attach(stderr);
    stdio.once('open', () => {
      this.stdioOpen.resolve(stdio);
      if (!this.stdin) stdio.send(END_COMMAND, () => undefined);
    });

    const [change] = await Promise.all([
      this.client.waitChange(changeId, this.what, this.abortWait.signal),
      stdoutOutput.finished.promise,
      stderrOutput.finished.promise,
    ]);
    return this.exitStatus(change);
  }

  private connect(path: string, output: WebsocketOutput | null): UnixWebSocket {
    const socket = new UnixWebSocket(this.client.socketPath, path);
    // Without a listener an 'error' event would crash the process. Errors on
    // the output websockets fail the command; the control websocket is
    // best effort (Pebble drops it when the command exits).
    socket.on('error', (err) => output?.lost(this.client.connectionError(this.what, err)));
    return socket;
  }

  private exitStatus(change: PebbleChange): ExitStatus {
    const exitCode = change.tasks?.[0]?.data?.['exit-code'];
    if (typeof exitCode === 'number' && exitCode >= 0) return { exitCode };
    throw new BackupError(
      'workload',
      `${this.what}: ${change.err ? `Pebble reports: ${change.err}` : 'Pebble reported no exit code'}`,
    );
  }

  /** A Buffer goes out as a binary message, a string as a text message. */
  private sendStdin(data: Buffer | string, callback: (err?: Error | null) => void): void {
    this.stdioOpen.promise.then(
      (socket) => socket.send(data, (err) => callback(err ? this.inputError(err) : null)),
      (err: Error) => callback(err),
    );
  }

  /** Chunks that queued up while the previous message was sent: one message per MiB. */
  private sendStdinBatch(
    chunks: { chunk: Buffer }[],
    callback: (err?: Error | null) => void,
  ): void {
    const messages: Buffer[] = [];
    let batch: Buffer[] = [];
    let size = 0;
    for (const { chunk } of chunks) {
      if (size > 0 && size + chunk.length > STDIN_MESSAGE_BYTES) {
        messages.push(batch.length === 1 ? batch[0]! : Buffer.concat(batch, size));
        batch = [];
        size = 0;
      }
      batch.push(chunk);
      size += chunk.length;
    }
    if (size > 0) messages.push(batch.length === 1 ? batch[0]! : Buffer.concat(batch, size));
    const next = (i: number): void => {
      if (i === messages.length) {
        callback();
        return;
      }
      this.sendStdin(messages[i]!, (err) => (err ? callback(err) : next(i + 1)));
    };
    next(0);
  }

  private inputError(err: Error): BackupError {
    return new BackupError(
      'workload',
      `${this.what}: cannot send its input; it has exited or the connection to Pebble dropped (${err.message})`,
      { cause: err },
    );
  }

  private settle(result: ExitStatus | Error): void {
    if (this.settled) return;
    this.settled = true;
    if (result instanceof Error) {
      destroyQuietly(this.stdin);
      destroyQuietly(this.stderr);
      destroyQuietly(this.stdout, result);
      this.stdioOpen.reject(result);
      this.outcome.reject(result);
    } else {
      if (this.killed) {
        destroyQuietly(this.stdin);
        destroyQuietly(this.stderr);
        destroyQuietly(this.stdout);
        this.stdioOpen.reject(new BackupError('workload', `${this.what}: it was killed`));
      }
      this.outcome.resolve(result);
    }
    if (!this.killed) this.teardown();
  }

  private teardown(): void {
    this.abortWait.abort();
    if (!this.sockets) return;
    for (const socket of Object.values(this.sockets)) socket.terminate();
  }
}
