import type { ClientRequest, IncomingMessage } from 'node:http';
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import WebSocket from 'ws';
import { BackupError, errorMessage } from '../../errors';
import type { ExecOptions, ExecProcess, ExitStatus } from '../workload';
import { deferred, destroyQuietly } from '../settling';

/** The remote command protocol (channel.k8s.io) over a websocket: one byte of channel, then data. */
export const V5_PROTOCOL = 'v5.channel.k8s.io';
export const V4_PROTOCOL = 'v4.channel.k8s.io';
const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const STATUS = 3;
/** v5 only: [CLOSE, n] ends stream n (for stdin, EOF for the command). */
const CLOSE = 255;
const STDIN_PREFIX = Buffer.from([STDIN]);

/** Bytes buffered in each output stream before the websocket is paused. */
const STREAM_HIGH_WATER_MARK = 256 * 1024;
/**
 * Largest stdin message: input chunks that queue up while one is sent go out
 * together (the API server handles each message whole, so a cap keeps its
 * memory bounded too).
 */
const MAX_STDIN_FRAME = 1024 * 1024;
/**
 * Client frames are masked with an all-zero key, which ws sends without copying
 * or XOR-ing the payload (a random key costs a copy and a byte loop per frame).
 * Masking protects caching HTTP intermediaries from a browser's crafted frames
 * (RFC 6455 section 10.3); this connection is TLS to the API server, which no
 * intermediary can read, let alone cache.
 */
const zeroMask = (mask: Buffer): void => {
  mask.fill(0);
};
const HANDSHAKE_TIMEOUT_MS = 30_000;
const KILLED: ExitStatus = { exitCode: null, signal: 'SIGKILL' };

/** Where a command runs and how to reach it; built by KubernetesWorkload. */
export interface ExecTarget {
  /** wss:// URL of the pod's `exec` subresource, without the query. */
  execUrl: string;
  /** TLS and authentication for the websocket (from the KubeConfig). */
  connectOptions(): Promise<WebSocket.ClientOptions>;
  /** Names the pod in messages: `namespace/pod`. */
  podName: string;
  container: string;
  /** The Juju application, for the remedy of a 403 (`juju trust <app>`). */
  appName: string;
}

/**
 * Runs argv under `sh`, which writes `\n<marker> <exit code>\n` on stderr once it
 * has exited: the proof that the command ran to its end (see onStatus).
 */
export function exitMarkerWrap(marker: string, argv: string[]): string[] {
  return [
    '/bin/sh',
    '-c',
    '"$@"; s=$?; printf \'\\n%s %d\\n\' "$0" "$s" >&2; exit "$s"',
    marker,
    ...argv,
  ];
}

/**
 * The API server refused the exec (403): Juju's default role lacks `get` on `pods/exec`.
 * The message states the problem; the remedy `{ kind: 'grant-exec', app }` is worded by
 * the front end (the charm: `juju trust <app> --scope=cluster`).
 */
export class KubernetesForbiddenError extends BackupError {
  /** What the API server said, e.g. `pods "synapse-0" is forbidden: User ... cannot get ...`. */
  readonly apiMessage: string;

  constructor(appName: string, apiMessage: string) {
    super('workload', 'the charm may not exec into its pod', {
      remedy: { kind: 'grant-exec', app: appName },
    });
    this.apiMessage = apiMessage;
    this.name = 'KubernetesForbiddenError';
  }
}

function toBuffer(data: WebSocket.RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/** A Kubernetes `Status` object, as sent on the status channel and in refused handshakes. */
interface ApiStatus {
  status?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: { causes?: { reason?: string; type?: string; message?: string }[] };
}

function parseStatus(text: string): ApiStatus | null {
  try {
    const parsed = JSON.parse(text) as unknown;
    return parsed && typeof parsed === 'object' ? (parsed as ApiStatus) : null;
  } catch {
    return null;
  }
}

/**
 * The command's stdout or stderr. Both arrive on one websocket, so when either
 * consumer stops reading the websocket is paused: the API server and kubelet
 * stop reading from the command, which blocks on its pipe.
 */
class ChannelOutput extends Readable {
  /** push() said stop; cleared when the consumer asks for more. */
  full = false;
  ended = false;
  abandoned = false;
  /** The last `holdBack` bytes received, not yet pushed (where the exit marker will be). */
  tail: Buffer = Buffer.alloc(0);

  constructor(
    private readonly onRead: () => void,
    private readonly onAbandon: () => void,
    private readonly holdBack = 0,
  ) {
    super({ highWaterMark: STREAM_HIGH_WATER_MARK });
  }

  /** Delivers data; returns false when this stream's consumer is saturated. */
  deliver(data: Buffer): boolean {
    if (this.ended || this.abandoned || data.length === 0) return true;
    let out = data;
    if (this.holdBack > 0) {
      const all = this.tail.length > 0 ? Buffer.concat([this.tail, data]) : data;
      const cut = Math.max(0, all.length - this.holdBack);
      this.tail = Buffer.from(all.subarray(cut));
      out = all.subarray(0, cut);
      if (out.length === 0) return true;
    }
    this.full = !this.push(out);
    return !this.full;
  }

  /** Pushes what is held back (after the caller stripped the marker from `tail`), then ends. */
  finish(): void {
    if (this.ended || this.abandoned) return;
    this.ended = true;
    this.full = false;
    if (this.tail.length > 0) this.push(this.tail);
    this.push(null);
  }

  override _read(): void {
    this.full = false;
    this.onRead();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    if (!this.ended && !this.abandoned) {
      // The consumer gave up on the output: drop the connection, as closing a
      // pipe's read end would, and let the command meet EPIPE.
      this.abandoned = true;
      this.full = false;
      this.onAbandon();
    }
    callback(err);
  }
}

/**
 * A command run through the API server's `pods/exec` websocket (remote command
 * protocol v5, or v4 for commands without stdin): stdin on channel 0, stdout
 * and stderr on 1 and 2, the exit status on 3, and (v5) a CLOSE frame for
 * stdin's EOF. The websocket is driven directly, not through client-node's
 * `Exec`, which ignores backpressure and a dropped connection.
 *
 * The command runs under `/bin/sh` (exitMarkerWrap), whose last words on stderr
 * are an end marker with the exit code, held back from the stderr stream and
 * checked against the status: a v5 API server says Success also when it merely
 * lost the kubelet, which would pass a truncated archive off as a whole one.
 */
export class KubernetesExecProcess implements ExecProcess {
  readonly stdin: Writable | null;
  /** Names this run in its exit marker (see exitMarkerWrap). */
  private readonly marker = `synapse-backup-exit-${randomBytes(8).toString('hex')}`;
  private readonly output: { stdout: ChannelOutput; stderr: ChannelOutput };
  private readonly what: string;
  private readonly outcome = deferred<ExitStatus>();
  private readonly opened = deferred<WebSocket>();
  private socket: WebSocket | null = null;
  private paused = false;
  /** The handshake was answered with an HTTP error: its body, not the socket's error, says why. */
  private refusedHandshake = false;
  private settled = false;
  private killed = false;

  constructor(
    private readonly target: ExecTarget,
    private readonly options: ExecOptions,
    /** The command actually sent (ExecOptions.command, wrapped for environment or working dir). */
    private readonly argv: string[],
  ) {
    this.what = `cannot run ${JSON.stringify(options.command[0])} in ${target.podName} (container ${target.container})`;
    this.output = {
      stdout: new ChannelOutput(
        () => this.resumeIfWanted(),
        () => this.abandon('stdout'),
      ),
      stderr: new ChannelOutput(
        () => this.resumeIfWanted(),
        () => this.abandon('stderr'),
        this.marker.length + 8, // "\n<marker> <0-255>\n"
      ),
    };
    this.stdin = options.stdin
      ? new Writable({
          highWaterMark: STREAM_HIGH_WATER_MARK,
          write: (chunk: Buffer, _encoding, callback) => this.sendStdin([chunk], callback),
          writev: (chunks, callback) =>
            this.sendStdin(
              chunks.map(({ chunk }) => chunk as Buffer),
              callback,
            ),
          final: (callback) => this.sendFrame(Buffer.from([CLOSE, STDIN]), callback),
        })
      : null;
    this.connect().catch((err: Error) => this.settle(err));
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

  /**
   * Ends the command as far as this process is concerned: wait() resolves as
   * killed and the connection is dropped. Kubernetes has no signal for an
   * exec'd process: it meets EPIPE on its next write (tar creating an archive)
   * or EOF on stdin (tar extracting one); a command that does neither runs on.
   */
  kill(): void {
    if (this.settled) return;
    this.killed = true;
    this.settle(KILLED);
  }

  private async connect(): Promise<void> {
    const query = new URLSearchParams();
    for (const arg of exitMarkerWrap(this.marker, this.argv)) query.append('command', arg);
    query.set('container', this.target.container);
    query.set('stdin', String(Boolean(this.options.stdin)));
    query.set('stdout', 'true');
    query.set('stderr', 'true');
    query.set('tty', 'false');
    let connectOptions: WebSocket.ClientOptions;
    try {
      connectOptions = await this.target.connectOptions();
    } catch (err) {
      throw new BackupError(
        'workload',
        `${this.what}: cannot prepare the connection to the Kubernetes API (${errorMessage(err)})`,
        { cause: err },
      );
    }
    if (this.settled) return; // killed before we got this far: the command never starts
    // Only v5 can end stdin without closing the socket (and losing the exit status);
    // v4 is still fine for commands that take no input.
    const protocols = [V5_PROTOCOL, V4_PROTOCOL];
    const socket = new WebSocket(`${this.target.execUrl}?${query.toString()}`, protocols, {
      ...connectOptions,
      perMessageDeflate: false,
      generateMask: zeroMask,
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
    });
    this.socket = socket;
    socket.on('unexpected-response', (req, res) => this.refused(req, res));
    socket.on('error', (err) => {
      if (!this.refusedHandshake) this.settle(this.connectionError(err));
    });
    socket.on('open', () => this.onOpen(socket));
    socket.on('message', (data, isBinary) => this.onMessage(toBuffer(data), isBinary));
    socket.on('close', (code, reason) => this.onClose(code, reason.toString()));
  }

  private onOpen(socket: WebSocket): void {
    if (socket.protocol !== V5_PROTOCOL && this.stdin) {
      // Without v5 the command would never see the end of its input.
      this.settle(
        new BackupError(
          'workload',
          `${this.what}: it needs its input closed at the end, which the Kubernetes API offers only over the ${V5_PROTOCOL} protocol (Kubernetes >= 1.30; here the server chose ${socket.protocol || 'an older protocol'}); upgrade the cluster, or set workload-exec=pebble`,
        ),
      );
      return;
    }
    this.opened.resolve(socket);
  }

  private onMessage(frame: Buffer, isBinary: boolean): void {
    if (this.settled || !isBinary || frame.length === 0) return;
    const channel = frame[0];
    const data = frame.subarray(1);
    if (channel === STDOUT || channel === STDERR) {
      const output = channel === STDOUT ? this.output.stdout : this.output.stderr;
      if (!output.deliver(data)) this.pause();
    } else if (channel === STATUS) {
      this.onStatus(data.toString('utf8'));
    } else if (channel === CLOSE) {
      // The server ending an output stream early (v5); the status still follows.
      const closed = data[0];
      if (closed === STDOUT) this.output.stdout.finish();
      if (closed === STDERR) this.output.stderr.finish();
    }
  }

  /** The status frame is the last word: all output has arrived before it. */
  private onStatus(text: string): void {
    const status = parseStatus(text);
    const marked = this.takeExitMarker();
    if (status?.status === 'Success') {
      // An API server that translates v5 to SPDY reports Success when its connection
      // to the kubelet merely ended (a node gone, a kubelet restarted): only the
      // command's own end marker proves that it ran to its end.
      if (marked === null) {
        this.settle(
          new BackupError(
            'workload',
            `${this.what}: the connection to the command was lost before it finished (the API server reported success, but the command's end marker never arrived); did the node or its kubelet go away?`,
          ),
        );
        return;
      }
      this.settle({ exitCode: marked });
      return;
    }
    if (status?.reason === 'NonZeroExitCode') {
      // Without a marker the wrapping shell died too (say, the OOM killer): the status is all there is.
      const cause = status.details?.causes?.find(
        (c) => c.reason === 'ExitCode' || c.type === 'ExitCode',
      );
      const exitCode = marked ?? Number.parseInt(cause?.message ?? '', 10);
      if (Number.isInteger(exitCode)) {
        this.settle({ exitCode });
        return;
      }
    }
    this.settle(
      new BackupError(
        'workload',
        `${this.what}: Kubernetes reports: ${status?.message ?? (text.trim() || 'an unreadable status')}`,
      ),
    );
  }

  /** Strips `\n<marker> <code>\n` from the end of stderr; returns the code, or null if absent. */
  private takeExitMarker(): number | null {
    const stderr = this.output.stderr;
    const tail = stderr.tail.toString('latin1');
    const match = new RegExp(`\n${this.marker} (\\d{1,3})\n$`).exec(tail);
    if (!match) return null;
    stderr.tail = stderr.tail.subarray(0, match.index);
    return Number(match[1]);
  }

  private onClose(code: number, reason: string): void {
    if (this.settled || this.refusedHandshake) return;
    this.settle(
      new BackupError(
        'workload',
        `${this.what}: the connection to the Kubernetes API closed (code ${code}${reason ? `: ${reason}` : ''}) before the command's exit status arrived; did the API server or the node drop it?`,
      ),
    );
  }

  /** The handshake got an HTTP answer instead of an upgrade. */
  private refused(req: ClientRequest, res: IncomingMessage): void {
    this.refusedHandshake = true;
    const chunks: Buffer[] = [];
    res.on('data', (chunk: Buffer) => {
      if (chunks.length < 64) chunks.push(chunk);
    });
    res.on('error', (err) => this.settle(this.connectionError(err)));
    const answered = () => {
      req.destroy();
      const body = Buffer.concat(chunks).toString('utf8');
      const apiMessage = parseStatus(body)?.message ?? body.trim();
      const code = res.statusCode ?? 0;
      let err: BackupError;
      if (code === 403) {
        err = new KubernetesForbiddenError(this.target.appName, apiMessage);
      } else if (code === 401) {
        err = new BackupError(
          'workload',
          `${this.what}: the Kubernetes API did not accept the charm's credentials (401${apiMessage ? `: ${apiMessage}` : ''})`,
        );
      } else {
        err = new BackupError(
          'workload',
          `${this.what}: the Kubernetes API answered ${code}${apiMessage ? `: ${apiMessage}` : ''}`,
        );
      }
      this.settle(err);
    };
    res.on('end', answered);
    res.on('close', answered); // settle() runs once: whichever comes first
  }

  private connectionError(err: Error): BackupError {
    const where = this.target.execUrl.replace(/\/api\/.*$/, '');
    return new BackupError(
      'workload',
      `${this.what}: the connection to the Kubernetes API at ${where} failed (${err.message})`,
      { cause: err },
    );
  }

  private pause(): void {
    if (this.paused || !this.socket) return;
    this.paused = true;
    this.socket.pause();
  }

  private resumeIfWanted(): void {
    if (!this.paused || this.output.stdout.full || this.output.stderr.full) return;
    this.paused = false;
    this.socket?.resume();
  }

  private abandon(stream: 'stdout' | 'stderr'): void {
    if (this.settled) return;
    this.settle(
      new BackupError(
        'workload',
        `${this.what}: its ${stream} was abandoned before it exited; the connection was closed, so its exit status is unknown`,
      ),
    );
  }

  /** Sends chunks as channel-0 frames of at most MAX_STDIN_FRAME bytes each, one after another. */
  private sendStdin(chunks: Buffer[], callback: (err?: Error | null) => void): void {
    const frames: Buffer[] = [];
    let batch: Buffer[] = [STDIN_PREFIX];
    let size = 0;
    const flush = () => {
      if (size > 0) frames.push(Buffer.concat(batch, size + 1));
      batch = [STDIN_PREFIX];
      size = 0;
    };
    for (const chunk of chunks) {
      for (let at = 0; at < chunk.length;) {
        const piece = chunk.subarray(at, at + MAX_STDIN_FRAME - size);
        batch.push(piece);
        size += piece.length;
        at += piece.length;
        if (size === MAX_STDIN_FRAME) flush();
      }
    }
    flush();
    const sendNext = (err?: Error | null): void => {
      const frame = frames.shift();
      if (err || !frame) callback(err);
      else this.sendFrame(frame, sendNext);
    };
    sendNext();
  }

  /** Sends once the websocket is open; calls back when the frame is written (an awaited send). */
  private sendFrame(frame: Buffer, callback: (err?: Error | null) => void): void {
    this.opened.promise.then(
      (socket) => {
        if (socket.readyState !== WebSocket.OPEN) {
          callback(this.inputError(new Error('the websocket is closed')));
          return;
        }
        socket.send(frame, { binary: true }, (err) => callback(err ? this.inputError(err) : null));
      },
      (err: Error) => callback(err),
    );
  }

  private inputError(err: Error): BackupError {
    return new BackupError(
      'workload',
      `${this.what}: cannot send its input; it has exited or the connection to the Kubernetes API dropped (${err.message})`,
      { cause: err },
    );
  }

  private settle(result: ExitStatus | Error): void {
    if (this.settled) return;
    this.settled = true;
    const { stdout, stderr } = this.output;
    if (result instanceof Error) {
      destroyQuietly(this.stdin);
      destroyQuietly(stderr);
      destroyQuietly(stdout, result);
      this.opened.reject(result);
      this.outcome.reject(result);
    } else if (this.killed) {
      destroyQuietly(this.stdin);
      destroyQuietly(stderr);
      destroyQuietly(stdout);
      this.opened.reject(new BackupError('workload', `${this.what}: it was killed`));
      this.outcome.resolve(result);
    } else {
      // The exit status comes after all output: end both streams, then report it.
      stdout.finish();
      stderr.finish();
      this.opened.reject(this.inputError(new Error('the command has exited')));
      this.outcome.resolve(result);
    }
    this.teardown(result);
  }

  private teardown(result: ExitStatus | Error): void {
    const socket = this.socket;
    if (!socket) return;
    this.paused = false;
    if (!(result instanceof Error) && !this.killed && socket.readyState === WebSocket.OPEN) {
      socket.close(1000); // the server closes too, after the status
      setTimeout(() => socket.terminate(), 2000).unref();
    } else {
      socket.terminate();
    }
  }
}
