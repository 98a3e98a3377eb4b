import { Readable, Writable } from 'node:stream';
import WebSocket from 'ws';
import { BackupError } from '../../errors';
import type { ExecOptions, ExecProcess, ExitStatus } from '../workload';
import type { PebbleChange, PebbleClient } from './client';

/** The TEXT frame that ends a stream in either direction. */
const END_COMMAND = '{"command":"end"}';
const KILL_COMMAND = JSON.stringify({ command: 'signal', signal: { name: 'SIGKILL' } });
/** Bytes buffered in each stream before the websocket is paused (Pebble frames are ≤128 KiB). */
const STREAM_HIGH_WATER_MARK = 256 * 1024;
/**
 * Input chunks waiting while a message is being sent go out together as one
 * message of up to this size: Pebble's cost is per message (a goroutine hand-off
 * and a pipe write each), so fewer, larger messages leave more CPU for the rest.
 */
const STDIN_MESSAGE_BYTES = 1024 * 1024;
/**
 * Client frames are masked with this key: all zeros, which ws sends without
 * copying or XOR-ing the payload (a random key costs a copy and a byte loop per
 * frame, about 3 s of CPU per GiB of restore input). Masking protects
 * intermediaries that cache HTTP from a browser's crafted frames (RFC 6455
 * section 10.3); this connection is a unix socket to Pebble, with no intermediary.
 */
const zeroMask = (mask: Buffer): void => {
  mask.fill(0);
};
/** How long kill() waits for a still-connecting control websocket before giving up on it. */
const KILL_GRACE_MS = 2000;
const KILLED: ExitStatus = { exitCode: null, signal: 'SIGKILL' };

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (err: Error) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Failures are reported through whoever awaits; never as an unhandled rejection.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

function toBuffer(data: WebSocket.RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function isEndCommand(data: WebSocket.RawData): boolean {
  try {
    return (JSON.parse(toBuffer(data).toString()) as { command?: unknown }).command === 'end';
  } catch {
    return false;
  }
}

/** Destroys a stream, carrying `err` only if someone listens (an unheard 'error' would crash). */
function destroyQuietly(stream: Readable | Writable | null, err?: Error): void {
  if (!stream || stream.destroyed) return;
  stream.destroy(err && stream.listenerCount('error') > 0 ? err : undefined);
}

/**
 * One of the command's output streams (stdout on Pebble's "stdio" websocket,
 * or stderr) as a Readable. When the consumer stops reading, the websocket is
 * paused, so Pebble's blocking writes stall and the command blocks on its pipe.
 */
class WebsocketOutput extends Readable {
  /** Settles when all output has arrived or the consumer abandoned it; rejects if the websocket failed first. */
  readonly finished = deferred<void>();
  private socket: WebSocket | null = null;
  private endReceived = false;
  private abandoned = false;

  constructor(
    private readonly streamName: 'stdout' | 'stderr',
    private readonly what: string,
  ) {
    super({ highWaterMark: STREAM_HIGH_WATER_MARK });
  }

  attach(socket: WebSocket): void {
    this.socket = socket;
    if (this.abandoned) socket.terminate();
    socket.on('message', (data, isBinary) => {
      if (this.endReceived || this.abandoned) return;
      if (!isBinary) {
        if (isEndCommand(data)) {
          this.endReceived = true;
          this.push(null);
          this.finished.resolve();
        }
        return;
      }
      if (!this.push(toBuffer(data))) socket.pause();
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
  private readonly stdioOpen = deferred<WebSocket>();
  private readonly abortWait = new AbortController();
  private sockets: { control: WebSocket; stdio: WebSocket; stderr: WebSocket } | null = null;
  private settled = false;
  private killed = false;

  constructor(
    private readonly client: PebbleClient,
    private readonly options: ExecOptions,
  ) {
    this.what = `cannot run ${JSON.stringify(options.command[0])} in the workload`;
    this.output = {
      stdout: new WebsocketOutput('stdout', this.what),
      stderr: new WebsocketOutput('stderr', this.what),
    };
    this.stdin = options.stdin
      ? new Writable({
          highWaterMark: STREAM_HIGH_WATER_MARK,
          write: (chunk: Buffer, _encoding, callback) =>
            this.sendStdin(chunk, { binary: true }, callback),
          writev: (chunks, callback) => this.sendStdinBatch(chunks, callback),
          final: (callback) => this.sendStdin(END_COMMAND, { binary: false }, callback),
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
    if (control.readyState === WebSocket.OPEN) sendSignal();
    else if (control.readyState === WebSocket.CONNECTING) control.once('open', sendSignal);
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
      if (!this.stdin) stdio.send(END_COMMAND, { binary: false });
    });

    const [change] = await Promise.all([
      this.client.waitChange(changeId, this.what, this.abortWait.signal),
      stdoutOutput.finished.promise,
      stderrOutput.finished.promise,
    ]);
    return this.exitStatus(change);
  }

  private connect(path: string, output: WebsocketOutput | null): WebSocket {
    const socket = new WebSocket(this.client.websocketUrl(path), {
      perMessageDeflate: false,
      generateMask: zeroMask,
    });
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

  private sendStdin(
    data: Buffer | string,
    options: { binary: boolean },
    callback: (err?: Error | null) => void,
  ): void {
    this.stdioOpen.promise.then(
      (socket) => socket.send(data, options, (err) => callback(err ? this.inputError(err) : null)),
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
      this.sendStdin(messages[i]!, { binary: true }, (err) => (err ? callback(err) : next(i + 1)));
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
