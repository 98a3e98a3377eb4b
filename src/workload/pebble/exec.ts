import { BackupError } from '../../errors';
import { KILLED, RemoteOutput, RemoteProcess, type SettleHow } from '../remote-process';
import { deferred } from '../settling';
import { type ExecOptions, type ExitStatus, launchedCommand } from '../workload';
import type { PebbleChange, PebbleClient } from './client';
import { UnixWebSocket } from './websocket';

/** The TEXT frame that ends a stream in either direction (Pebble: internals/wsutil/wsutil.go). */
const END_COMMAND = '{"command":"end"}';
const KILL_COMMAND = JSON.stringify({ command: 'signal', signal: { name: 'SIGKILL' } });
/**
 * Input chunks waiting while a message is being sent go out together as one
 * message of up to this size: Pebble's cost is per message (a goroutine hand-off
 * and a pipe write each), so fewer, larger messages leave more CPU for the rest.
 */
const STDIN_MESSAGE_BYTES = 1024 * 1024;
/** How long kill() waits for a still-connecting control websocket before giving up on it. */
const KILL_GRACE_MS = 2000;

function isEndCommand(text: string): boolean {
  try {
    return (JSON.parse(text) as { command?: unknown }).command === 'end';
  } catch {
    return false;
  }
}

/**
 * One of the command's output streams: stdout on Pebble's "stdio" websocket,
 * or stderr on "stderr". Binary messages are the output, the end command ends
 * it. Pausing the websocket stalls Pebble's blocking writes, and the command.
 */
class WebsocketOutput extends RemoteOutput {
  /** Settles when all output has arrived or the consumer abandoned it; rejects if the websocket failed first. */
  readonly finished = deferred<void>();
  private socket: UnixWebSocket | null = null;

  constructor(
    private readonly streamName: 'stdout' | 'stderr',
    private readonly what: string,
  ) {
    super();
  }

  attach(socket: UnixWebSocket): void {
    this.socket = socket;
    if (!this.isOpen) socket.terminate(); // abandoned before it connected
    socket.on('binary', (piece) => this.deliver(piece));
    socket.on('text', (text) => {
      if (!this.isOpen || !isEndCommand(text)) return;
      this.finish();
      this.finished.resolve();
    });
    socket.on('close', (code) => {
      if (!this.isOpen) return;
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
    if (this.isOpen) this.finished.reject(err);
  }

  protected pauseSource(): void {
    this.socket?.pause();
  }

  protected resumeSource(): void {
    this.socket?.resume();
  }

  protected abandonSource(): void {
    this.socket?.terminate();
    this.finished.resolve();
  }
}

/**
 * A command run through Pebble's exec API (Pebble: internals/daemon/api_exec.go,
 * client/exec.go): `POST /v1/exec`, then websockets "control", "stdio" (stdin
 * and stdout) and "stderr" for the task, then `GET /v1/changes/<id>/wait` for
 * the exit code (the task's `exit-code` data).
 */
export class PebbleExecProcess extends RemoteProcess<UnixWebSocket> {
  readonly stdout: WebsocketOutput;
  readonly stderr: WebsocketOutput;
  private readonly abortWait = new AbortController();
  private sockets: { control: UnixWebSocket; stdio: UnixWebSocket; stderr: UnixWebSocket } | null =
    null;

  /** `name`: the command's name in messages, when `options.command` wraps it. */
  constructor(
    private readonly client: PebbleClient,
    private readonly options: ExecOptions,
    name = options.command[0],
  ) {
    super(
      `cannot run ${JSON.stringify(name)} in the workload`,
      'Pebble',
      options.stdin ? { maxMessageBytes: STDIN_MESSAGE_BYTES, splitChunks: false } : null,
    );
    this.stdout = new WebsocketOutput('stdout', this.what);
    this.stderr = new WebsocketOutput('stderr', this.what);
    this.run().then(
      (status) => this.settle(status),
      (err: Error) => this.settle(err),
    );
  }

  private async run(): Promise<ExitStatus> {
    const { environment, workingDir } = this.options;
    const command = launchedCommand(this.options);
    const { changeId, result } = await this.client.async<{ 'task-id': string }>(
      'POST',
      '/v1/exec',
      {
        what: this.what,
        body: { command, environment, 'working-dir': workingDir, 'split-stderr': true },
      },
    );
    if (this.killed) return KILLED; // never connect: the command never starts

    // Pebble starts the command once "stdio" and "stderr" are connected, and
    // gives up if they are not within 5 seconds: connect at once.
    const taskPath = `/v1/tasks/${encodeURIComponent(result['task-id'])}/websocket`;
    const stdio = this.connect(`${taskPath}/stdio`, this.stdout);
    const stderr = this.connect(`${taskPath}/stderr`, this.stderr);
    const control = this.connect(`${taskPath}/control`, null);
    this.sockets = { control, stdio, stderr };
    this.stdout.attach(stdio);
    this.stderr.attach(stderr);
    stdio.once('open', () => {
      this.connection.resolve(stdio);
      if (!this.stdin) stdio.send(END_COMMAND, () => undefined);
    });

    const [change] = await Promise.all([
      this.client.waitChange(changeId, this.what, this.abortWait.signal),
      this.stdout.finished.promise,
      this.stderr.finished.promise,
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
    throw this.failure(
      change.err ? `Pebble reports: ${change.err}` : 'Pebble reported no exit code',
    );
  }

  /** One binary message (a Buffer is sent as binary, a string as text). */
  protected sendInput(
    socket: UnixWebSocket,
    pieces: Buffer[],
    size: number,
    callback: (err?: Error | null) => void,
  ): void {
    socket.send(pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces, size), callback);
  }

  protected endInput(socket: UnixWebSocket, callback: (err?: Error | null) => void): void {
    socket.send(END_COMMAND, callback);
  }

  protected teardown(how: SettleHow): void {
    if (how !== 'killed') {
      this.dropConnections();
      return;
    }
    const control = this.sockets?.control;
    if (!control) return; // run() sees `killed` and never connects
    // Pebble also SIGKILLs the command when the control websocket drops
    // abnormally, so tearing down is enough if the signal cannot be sent.
    const sendSignal = () => control.send(KILL_COMMAND, () => this.dropConnections());
    if (control.state === 'open') sendSignal();
    else if (control.state === 'connecting') control.once('open', sendSignal);
    else this.dropConnections();
    setTimeout(() => this.dropConnections(), KILL_GRACE_MS).unref();
  }

  private dropConnections(): void {
    this.abortWait.abort();
    if (!this.sockets) return;
    for (const socket of Object.values(this.sockets)) socket.terminate();
  }
}
