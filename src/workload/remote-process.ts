/**
 * What the remote transports (Pebble's exec websockets, the Kubernetes API's
 * pods/exec websocket, Pebble's direct socket) share once their protocol has
 * delivered bytes: output streams with backpressure, stdin sent as batched
 * messages, and the one way a command settles (exited, failed, killed).
 */
import { Readable, Writable } from 'node:stream';
import { BackupError, type BackupErrorOptions } from '../errors';
import { deferred, destroyQuietly } from './settling';
import type { ExecProcess, ExitStatus } from './workload';

/** What wait() resolves with after kill(): the command counts as killed, whatever the transport could do. */
export const KILLED: ExitStatus = { exitCode: null, signal: 'SIGKILL' };

/**
 * Bytes buffered in each output stream before its source is paused (Pebble's
 * messages are at most 128 KiB; the Kubernetes API's frames are smaller).
 */
export const STREAM_HIGH_WATER_MARK = 256 * 1024;

/**
 * One output stream of a remote command as a Readable that honours
 * backpressure: when the consumer stops reading, `pauseSource()` stops
 * reading from the transport, whose peer then stops reading from the command,
 * which blocks on its pipe. A consumer that destroys the stream before its end
 * abandons it: `abandonSource()` drops the connection, as closing a pipe's
 * read end would, and the command meets EPIPE.
 */
export abstract class RemoteOutput extends Readable {
  private state: 'open' | 'ended' | 'abandoned' = 'open';
  private full = false;

  constructor() {
    super({ highWaterMark: STREAM_HIGH_WATER_MARK });
  }

  /** Neither ended nor abandoned: data may still come. */
  get isOpen(): boolean {
    return this.state === 'open';
  }

  /** The consumer has not asked for more since push() said stop. */
  get saturated(): boolean {
    return this.full;
  }

  /**
   * Hands data from the transport to the consumer; returns false (after
   * pausing the source) when the consumer is saturated. Ignored once the
   * stream has ended or was abandoned.
   */
  deliver(data: Buffer): boolean {
    if (this.state !== 'open' || data.length === 0) return true;
    this.full = !this.push(data);
    if (this.full) this.pauseSource();
    return !this.full;
  }

  /** The transport says the output is complete: the stream ends (once). */
  finish(): void {
    if (this.state !== 'open') return;
    this.state = 'ended';
    this.full = false;
    this.push(null);
  }

  override _read(): void {
    this.full = false;
    this.resumeSource();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    if (this.state === 'open') {
      this.state = 'abandoned';
      this.full = false;
      this.abandonSource();
    }
    callback(err);
  }

  /** Stop reading from the transport. */
  protected abstract pauseSource(): void;
  /** The consumer wants more: read from the transport again (if nothing else holds it paused). */
  protected abstract resumeSource(): void;
  /** The consumer gave up before the end: drop the transport's side of this stream. */
  protected abstract abandonSource(): void;
}

/** How a transport carries stdin (see RemoteProcess.sendInput). */
export interface StdinFraming {
  /** Largest message: chunks queued while one message is sent go out together, up to this size. */
  maxMessageBytes: number;
  /** Whether a single chunk larger than maxMessageBytes is cut up too (else it goes whole). */
  splitChunks: boolean;
}

/**
 * Groups queued chunks into messages of at most `maxMessageBytes` (each a list
 * of views, not copied). Fewer, larger messages: a peer's cost is per message.
 */
export function batchMessages(
  chunks: Buffer[],
  { maxMessageBytes, splitChunks }: StdinFraming,
): Buffer[][] {
  const messages: Buffer[][] = [];
  let batch: Buffer[] = [];
  let size = 0;
  const flush = () => {
    if (size > 0) messages.push(batch);
    batch = [];
    size = 0;
  };
  for (const chunk of chunks) {
    if (!splitChunks) {
      if (size > 0 && size + chunk.length > maxMessageBytes) flush();
      batch.push(chunk);
      size += chunk.length;
      continue;
    }
    for (let at = 0; at < chunk.length;) {
      const piece = chunk.subarray(at, at + maxMessageBytes - size);
      batch.push(piece);
      size += piece.length;
      at += piece.length;
      if (size === maxMessageBytes) flush();
    }
  }
  flush();
  return messages;
}

export type SettleHow = 'exited' | 'failed' | 'killed';

/**
 * A command run over a connection to a remote peer. Subclasses speak the
 * protocol: they connect, feed `stdout`/`stderr` (RemoteOutput), resolve
 * `connection` once stdin can be sent, send input messages, and call
 * `settle()` with the exit status or the failure; this class does the rest.
 *
 * Settling: an exit status ends both output streams (it comes after all
 * output, in every protocol here) and resolves wait(); a failure destroys the
 * streams, stdout with the error (stdout's consumer must learn that the output
 * is not whole), and rejects wait(); kill() resolves wait() with KILLED at
 * once and destroys the streams without an error. Then `teardown()`.
 */
export abstract class RemoteProcess<Connection> implements ExecProcess {
  readonly stdin: Writable | null;
  abstract readonly stdout: RemoteOutput;
  abstract readonly stderr: RemoteOutput;
  /** Resolves with what input is sent over, once it can be; rejected once the command settled. */
  protected readonly connection = deferred<Connection>();
  protected settled = false;
  protected killed = false;
  private readonly outcome = deferred<ExitStatus>();

  /**
   * `what`: the failure's prefix in messages, e.g. `cannot run "tar" in the workload`.
   * `peer`: who input goes to, in messages, e.g. `Pebble`.
   * `stdin`: how input is framed, or null for a command whose stdin is closed at once.
   */
  constructor(
    protected readonly what: string,
    private readonly peer: string,
    stdin: StdinFraming | null,
  ) {
    this.stdin = stdin
      ? new Writable({
          highWaterMark: STREAM_HIGH_WATER_MARK,
          write: (chunk: Buffer, _encoding, callback) => this.sendChunks([chunk], stdin, callback),
          writev: (chunks, callback) =>
            this.sendChunks(
              chunks.map(({ chunk }) => chunk as Buffer),
              stdin,
              callback,
            ),
          final: (callback) => this.whenConnected(callback, (c, done) => this.endInput(c, done)),
        })
      : null;
  }

  wait(): Promise<ExitStatus> {
    return this.outcome.promise;
  }

  kill(): void {
    if (this.settled) return;
    this.killed = true;
    this.settle(KILLED);
  }

  /** Sends one input message, made of `pieces` (`size` bytes in all); calls back once written. */
  protected abstract sendInput(
    connection: Connection,
    pieces: Buffer[],
    size: number,
    callback: (err?: Error | null) => void,
  ): void;

  /** Delivers EOF on the command's stdin. */
  protected abstract endInput(connection: Connection, callback: (err?: Error | null) => void): void;

  /** Drops or closes the transport's connections once settled (`killed`: kill the command too). */
  protected abstract teardown(how: SettleHow): void;

  /** A failure of this command: `<what>: <message>`. */
  protected failure(message: string, options?: BackupErrorOptions): BackupError {
    return new BackupError('workload', `${this.what}: ${message}`, options);
  }

  protected inputError(err: Error): BackupError {
    return this.failure(
      `cannot send its input; it has exited or the connection to ${this.peer} dropped (${err.message})`,
      { cause: err },
    );
  }

  protected settle(result: ExitStatus | Error): void {
    if (this.settled) return;
    this.settled = true;
    const { stdin, stdout, stderr } = this;
    if (result instanceof Error) {
      destroyQuietly(stdin);
      destroyQuietly(stderr);
      destroyQuietly(stdout, result);
      this.connection.reject(result);
      this.outcome.reject(result);
    } else if (this.killed) {
      destroyQuietly(stdin);
      destroyQuietly(stderr);
      destroyQuietly(stdout);
      this.connection.reject(this.failure('it was killed'));
      this.outcome.resolve(result);
    } else {
      stdout.finish();
      stderr.finish();
      this.connection.reject(this.inputError(new Error('the command has exited')));
      this.outcome.resolve(result);
    }
    this.teardown(result instanceof Error ? 'failed' : this.killed ? 'killed' : 'exited');
  }

  private sendChunks(
    chunks: Buffer[],
    framing: StdinFraming,
    callback: (err?: Error | null) => void,
  ): void {
    const messages = batchMessages(chunks, framing);
    this.whenConnected(callback, (connection, done) => {
      const next = (err?: Error | null): void => {
        const pieces = messages.shift();
        if (err || !pieces) done(err);
        else {
          const size = pieces.reduce((sum, piece) => sum + piece.length, 0);
          this.sendInput(connection, pieces, size, next);
        }
      };
      next();
    });
  }

  /** Runs `send` once connected; its errors come back as input errors. */
  private whenConnected(
    callback: (err?: Error | null) => void,
    send: (connection: Connection, done: (err?: Error | null) => void) => void,
  ): void {
    this.connection.promise.then(
      (connection) => send(connection, (err) => callback(err ? this.inputError(err) : null)),
      (err: Error) => callback(err),
    );
  }
}
