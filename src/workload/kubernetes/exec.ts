import type { ClientRequest, IncomingMessage } from 'node:http';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { errorMessage } from '../../errors';
import { RemoteProcess, type SettleHow } from '../remote-process';
import type { ExecOptions } from '../workload';
import {
  CLOSE,
  KubernetesForbiddenError,
  MARKERS_RECEIVED,
  MarkedOutput,
  STATUS,
  STDERR,
  STDIN,
  STDOUT,
  V4_PROTOCOL,
  V5_PROTOCOL,
  exitMarkerWrap,
  parseStatus,
} from './channel';

export { KubernetesForbiddenError, V4_PROTOCOL, V5_PROTOCOL, exitMarkerWrap } from './channel';

const STDIN_PREFIX = Buffer.from([STDIN]);
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

function toBuffer(data: WebSocket.RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * A command run through the API server's `pods/exec` websocket (remote command
 * protocol v5, or v4 for commands without stdin; see ./channel): stdin on
 * channel 0, stdout and stderr on 1 and 2, the exit status on 3, and (v5) a
 * CLOSE frame for stdin's EOF. The websocket is driven directly, not through
 * client-node's `Exec`, which ignores backpressure and a dropped connection.
 *
 * The command runs under `/bin/sh` (exitMarkerWrap), whose last words on stdout
 * and on stderr are an end marker with the exit code, held back from each stream
 * and checked against the status: a v5 API server says Success also when it merely
 * lost the kubelet, which would pass a truncated archive off as a whole one. A
 * command without stdin is held at its end until both markers have arrived here
 * (MARKERS_RECEIVED on stdin): the kubelet drops its connection once the command
 * has exited, and output still queued in it then would be lost.
 *
 * kill() ends the command as far as this process is concerned: wait() resolves
 * as killed and the connection is dropped. Kubernetes has no signal for an
 * exec'd process: it meets EPIPE on its next write (tar creating an archive)
 * or EOF on stdin (tar extracting one); a command that does neither runs on.
 */
export class KubernetesExecProcess extends RemoteProcess<WebSocket> {
  readonly stdout: MarkedOutput;
  readonly stderr: MarkedOutput;
  /** Names this run in its exit marker (see exitMarkerWrap). */
  private readonly marker = `synapse-backup-exit-${randomBytes(8).toString('hex')}`;
  private socket: WebSocket | null = null;
  private paused = false;
  /** MARKERS_RECEIVED was sent (or is not needed: the command reads stdin to its EOF). */
  private acknowledged: boolean;
  /** The handshake was answered with an HTTP error: its body, not the socket's error, says why. */
  private refusedHandshake = false;

  constructor(
    private readonly target: ExecTarget,
    private readonly options: ExecOptions,
    /** The command actually sent (ExecOptions.command, wrapped for environment or working dir). */
    private readonly argv: string[],
  ) {
    super(
      `cannot run ${JSON.stringify(options.command[0])} in ${target.podName} (container ${target.container})`,
      'the Kubernetes API',
      options.stdin ? { maxMessageBytes: MAX_STDIN_FRAME, splitChunks: true } : null,
    );
    const flow = [() => this.pause(), () => this.resumeIfWanted()] as const;
    this.acknowledged = Boolean(options.stdin);
    this.stdout = new MarkedOutput(this.marker, ...flow, () => this.abandon('stdout'));
    this.stderr = new MarkedOutput(this.marker, ...flow, () => this.abandon('stderr'));
    this.connect().catch((err: Error) => this.settle(err));
  }

  private async connect(): Promise<void> {
    const query = new URLSearchParams();
    const stdin = Boolean(this.options.stdin);
    for (const arg of exitMarkerWrap(this.marker, this.argv, stdin)) query.append('command', arg);
    query.set('container', this.target.container);
    query.set('stdin', 'true'); // without the caller's input, for MARKERS_RECEIVED
    query.set('stdout', 'true');
    query.set('stderr', 'true');
    query.set('tty', 'false');
    let connectOptions: WebSocket.ClientOptions;
    try {
      connectOptions = await this.target.connectOptions();
    } catch (err) {
      throw this.failure(
        `cannot prepare the connection to the Kubernetes API (${errorMessage(err)})`,
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
        this.failure(
          `it needs its input closed at the end, which the Kubernetes API offers only over the ${V5_PROTOCOL} protocol (Kubernetes >= 1.30; here the server chose ${socket.protocol || 'an older protocol'}); upgrade the cluster, or set workload-exec=pebble`,
        ),
      );
      return;
    }
    this.connection.resolve(socket);
  }

  private onMessage(frame: Buffer, isBinary: boolean): void {
    if (this.settled || !isBinary || frame.length === 0) return;
    const channel = frame[0];
    const data = frame.subarray(1);
    if (channel === STDOUT || channel === STDERR) {
      (channel === STDOUT ? this.stdout : this.stderr).deliver(data);
      this.acknowledgeIfComplete();
    } else if (channel === STATUS) this.onStatus(data.toString('utf8'));
    else if (channel === CLOSE) {
      // The server ending an output stream early (v5); the status still follows.
      const closed = data[0];
      if (closed === STDOUT) this.stdout.finish();
      if (closed === STDERR) this.stderr.finish();
    }
  }

  /** Both markers are here: the command (run without stdin) may exit (see exitMarkerWrap). */
  private acknowledgeIfComplete(): void {
    if (this.acknowledged || !this.stdout.markerArrived || !this.stderr.markerArrived) return;
    this.acknowledged = true;
    const socket = this.socket;
    // A closed socket ends the command's stdin all the same.
    if (socket?.readyState === WebSocket.OPEN) socket.send(MARKERS_RECEIVED, { binary: true });
  }

  /** The status frame is the last word: all output has arrived before it. */
  private onStatus(text: string): void {
    const status = parseStatus(text);
    const fromStdout = this.stdout.takeExitMarker();
    const fromStderr = this.stderr.takeExitMarker();
    const marked = fromStdout !== null && fromStdout === fromStderr ? fromStderr : null;
    if (status?.status === 'Success') {
      // An API server that translates v5 to SPDY reports Success when its connection
      // to the kubelet merely ended (a node gone, a kubelet restarted): only the
      // command's own end marker proves that it ran to its end.
      this.settle(
        marked === null
          ? this.failure(
              "the connection to the command was lost before it finished (the API server reported success, but the command's end marker never arrived); did the node or its kubelet go away?",
            )
          : { exitCode: marked },
      );
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
      this.failure(
        `Kubernetes reports: ${status?.message ?? (text.trim() || 'an unreadable status')}`,
      ),
    );
  }

  private onClose(code: number, reason: string): void {
    if (this.settled || this.refusedHandshake) return;
    this.settle(
      this.failure(
        `the connection to the Kubernetes API closed (code ${code}${reason ? `: ${reason}` : ''}) before the command's exit status arrived; did the API server or the node drop it?`,
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
      const said = apiMessage ? `: ${apiMessage}` : '';
      if (code === 403) this.settle(new KubernetesForbiddenError(this.target.appName, apiMessage));
      else if (code === 401) {
        this.settle(
          this.failure(`the Kubernetes API did not accept the charm's credentials (401${said})`),
        );
      } else this.settle(this.failure(`the Kubernetes API answered ${code}${said}`));
    };
    res.on('end', answered);
    res.on('close', answered); // settle() runs once: whichever comes first
  }

  private connectionError(err: Error) {
    const where = this.target.execUrl.replace(/\/api\/.*$/, '');
    return this.failure(
      `the connection to the Kubernetes API at ${where} failed (${err.message})`,
      { cause: err },
    );
  }

  private pause(): void {
    if (this.paused || !this.socket) return;
    this.paused = true;
    this.socket.pause();
  }

  private resumeIfWanted(): void {
    if (!this.paused || this.stdout.saturated || this.stderr.saturated) return;
    this.paused = false;
    this.socket?.resume();
  }

  private abandon(stream: 'stdout' | 'stderr'): void {
    if (this.settled) return;
    this.settle(
      this.failure(
        `its ${stream} was abandoned before it exited; the connection was closed, so its exit status is unknown`,
      ),
    );
  }

  /** One channel-0 frame; calls back when it is written (an awaited send). */
  protected sendInput(
    socket: WebSocket,
    pieces: Buffer[],
    size: number,
    callback: (err?: Error | null) => void,
  ): void {
    this.sendFrame(socket, Buffer.concat([STDIN_PREFIX, ...pieces], size + 1), callback);
  }

  /** v5's [CLOSE, STDIN]: EOF for the command. */
  protected endInput(socket: WebSocket, callback: (err?: Error | null) => void): void {
    this.sendFrame(socket, Buffer.from([CLOSE, STDIN]), callback);
  }

  private sendFrame(
    socket: WebSocket,
    frame: Buffer,
    callback: (err?: Error | null) => void,
  ): void {
    if (socket.readyState !== WebSocket.OPEN) callback(new Error('the websocket is closed'));
    else socket.send(frame, { binary: true }, (err) => callback(err ?? null));
  }

  protected teardown(how: SettleHow): void {
    const socket = this.socket;
    if (!socket) return;
    this.paused = false;
    if (how === 'exited' && socket.readyState === WebSocket.OPEN) {
      socket.close(1000); // the server closes too, after the status
      setTimeout(() => socket.terminate(), 2000).unref();
    } else {
      socket.terminate();
    }
  }
}
