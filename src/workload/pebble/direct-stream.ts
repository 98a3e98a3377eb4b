import { randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { BackupError, errorMessage } from '../../errors';
import { KILLED } from '../remote-process';
import { deferred, destroyQuietly } from '../settling';
import { type ExecOptions, type ExecProcess, type ExitStatus, launchedCommand } from '../workload';
import { PebbleRefusedError, type PebbleClient } from './client';
import { PebbleExecProcess } from './exec';
import {
  type DirectStream,
  TOKEN_BYTES,
  TOKEN_ENV,
  UNAVAILABLE_STATUS,
  WrapperStderr,
  connectAndExec,
} from './direct-wrapper';

export type { DirectStream } from './direct-wrapper';
import { LateReadable, LateWritable } from './late-streams';

/** A directory both containers see: in Juju, the Pebble socket's (see PebbleWorkloadOptions). */
export interface SharedDir {
  /** Its path here, in the charm's container. */
  local: string;
  /** Its path in the workload container. */
  workload: string;
}

/** Why a stream could not go directly; it goes through Pebble's relay instead. */
export type DirectStreamUnavailable = (reason: string) => void;

/** How long a command that said it connected may take to be seen connecting. */
const CONNECT_GRACE_MS = 10_000;
const SOCKET_NAME = /^\.synapse-backup-[0-9a-f]{16}\.sock$/;

/** How a run with the direct socket ended: with a status, or unable to use the socket. */
type Outcome = { status: ExitStatus } | { unavailable: string };

/**
 * A command whose bulk stream (create's archive on stdout, restore's on stdin)
 * goes straight over a unix socket in a directory both containers share,
 * instead of through Pebble's websocket relay, which costs Pebble a message
 * and a fresh buffer per 128 KiB (about 3 CPU s per GiB) and the engine the
 * websocket framing. Everything else (start, the other streams, exit status,
 * kill) still goes through Pebble's exec.
 *
 * When the socket cannot be set up (the directory is not there or not
 * writable, the workload cannot reach it, it has no python3) the command has
 * not started, and it runs through Pebble's relay instead; `onUnavailable`
 * says why. A failure after the command started is the command's.
 */
export class DirectStreamProcess implements ExecProcess {
  readonly stdin: LateWritable | null;
  readonly stdout = new LateReadable();
  readonly stderr = new PassThrough();
  private readonly what: string;
  private readonly localPath: string;
  private readonly workloadPath: string;
  private readonly token = randomBytes(TOKEN_BYTES);
  private readonly server: net.Server;
  private readonly outcome: Promise<ExitStatus>;
  private inner: PebbleExecProcess | null = null;
  /** Connections not yet admitted or refused. */
  private readonly pending = new Set<net.Socket>();
  /** The command connected: its stream is attached, and it has started. */
  private connected = false;
  private onConnected: () => void = () => undefined;
  private readonly connection = deferred<void>();
  private killed = false;

  constructor(
    client: PebbleClient,
    options: ExecOptions,
    dir: SharedDir,
    private readonly stream: DirectStream,
    private readonly onUnavailable: DirectStreamUnavailable = () => undefined,
  ) {
    this.what = `cannot run ${JSON.stringify(options.command[0])} in the workload`;
    this.stdin = stream === 'stdin' ? new LateWritable() : null;
    const name = `.synapse-backup-${randomBytes(8).toString('hex')}.sock`;
    this.localPath = path.join(dir.local, name);
    this.workloadPath = path.posix.join(dir.workload, name);
    this.server = net.createServer({ pauseOnConnect: true }, (conn) => this.accept(conn));
    this.outcome = this.run(client, options);
    this.outcome.catch(() => undefined);
  }

  wait(): Promise<ExitStatus> {
    return this.outcome;
  }

  kill(): void {
    this.killed = true;
    this.inner?.kill();
    this.stdout.destroy();
    this.stdin?.destroy();
    this.closeServer();
  }

  private async run(client: PebbleClient, options: ExecOptions): Promise<ExitStatus> {
    try {
      await removeStaleSockets(path.dirname(this.localPath));
      await this.listen();
    } catch (err) {
      this.closeServer();
      return this.relay(
        client,
        options,
        `cannot listen on ${this.localPath} (${errorMessage(err)})`,
      );
    }
    if (this.killed) {
      this.closeServer();
      return KILLED;
    }
    const outcome = await this.runConnected(client, options).finally(() => this.closeServer());
    if ('unavailable' in outcome) return this.relay(client, options, outcome.unavailable);
    return outcome.status;
  }

  /** The command behind the wrapper that connects it to our socket. */
  private async runConnected(client: PebbleClient, options: ExecOptions): Promise<Outcome> {
    const inner = new PebbleExecProcess(
      client,
      {
        ...options,
        // The launcher (if any) behind the wrapper: Pebble is asked for python3 itself, so a
        // workload without it refuses the exec and the relay takes over (the launcher is sh).
        command: [
          'python3',
          '-c',
          connectAndExec(this.stream),
          this.workloadPath,
          ...launchedCommand(options),
        ],
        launcher: undefined,
        environment: { ...options.environment, [TOKEN_ENV]: this.token.toString('hex') },
        stdin: false,
      },
      options.command[0],
    );
    this.inner = inner;
    const stderr = new WrapperStderr(inner.stderr, this.stderr);
    if (this.stream === 'stdout') inner.stdout.resume(); // nothing comes this way: fd 1 is the socket
    this.onConnected = () => {
      stderr.forward();
      if (this.stream === 'stdin') this.stdout.attach(inner.stdout);
    };
    let status: ExitStatus;
    try {
      status = await inner.wait();
    } catch (err) {
      return this.wrapperFailed(err as Error, inner, stderr);
    }
    await stderr.done;
    return this.wrapperExited(status, inner, stderr);
  }

  /** Pebble failed the wrapper: not there to start it (the relay may do), or lost mid-way. */
  private wrapperFailed(err: Error, inner: PebbleExecProcess, stderr: WrapperStderr): Outcome {
    if (
      !this.connected &&
      !this.killed &&
      err instanceof PebbleRefusedError &&
      err.request === 'POST /v1/exec'
    ) {
      // Pebble is there but would not start the wrapper (no python3 in the image).
      return this.unavailable(err.message, inner, stderr);
    }
    // Pebble failed (unreachable, dropped, restarted): the exit status is lost, so the
    // output cannot be trusted to be whole, and a command still using the socket gets EPIPE.
    destroyQuietly(this.stdout, err);
    destroyQuietly(this.stdin, err);
    stderr.forward();
    this.stderr.end();
    throw err;
  }

  private async wrapperExited(
    status: ExitStatus,
    inner: PebbleExecProcess,
    stderr: WrapperStderr,
  ): Promise<Outcome> {
    if (!this.connected && stderr.saidConnected && !this.killed) {
      // It connected and sent the token; reading them lost the race with the status.
      await Promise.race([
        this.connection.promise,
        new Promise((resolve) => setTimeout(resolve, CONNECT_GRACE_MS).unref()),
      ]);
    }
    if (!this.connected && !this.killed && status.exitCode === UNAVAILABLE_STATUS) {
      const said = stderr.heldText();
      return this.unavailable(
        said || `the wrapper exited with status ${UNAVAILABLE_STATUS}`,
        inner,
        stderr,
      );
    }
    stderr.forward();
    this.stderr.end();
    if (!this.connected) {
      // Never connected, and not for want of a socket: the wrapper itself failed.
      const error = new BackupError(
        'workload',
        `${this.what}: it exited without connecting to ${this.workloadPath} in the workload`,
      );
      destroyQuietly(this.stdin, error);
      if (status.exitCode === 0) destroyQuietly(this.stdout, error);
      else this.stdout.attach(Readable.from([]));
    }
    return { status };
  }

  /** The command has not started: what the wrapper said is dropped, and the relay runs it. */
  private unavailable(reason: string, inner: PebbleExecProcess, stderr: WrapperStderr): Outcome {
    this.onConnected = () => undefined;
    stderr.discard();
    inner.stdout.resume();
    return { unavailable: reason };
  }

  /** Runs the command through Pebble's websocket relay, after saying why. */
  private async relay(
    client: PebbleClient,
    options: ExecOptions,
    reason: string,
  ): Promise<ExitStatus> {
    // Killed, or nobody reads the output any more: nothing to run again for.
    if (this.killed || this.stdout.destroyed) return KILLED;
    this.onUnavailable(reason);
    const relay = new PebbleExecProcess(client, options);
    this.inner = relay;
    relay.stderr.pipe(this.stderr);
    relay.stderr.once('close', () => {
      if (!this.stderr.writableEnded) this.stderr.end();
    });
    this.stdout.attach(relay.stdout);
    if (this.stdin && relay.stdin) this.stdin.attach(relay.stdin);
    return relay.wait();
  }

  private listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.localPath, () => {
        this.server.off('error', reject);
        // Accepting can fail too (EMFILE): the command's stream is then lost, not late.
        this.server.on('error', (err) => this.lose(err));
        // The command may run as another user than the charm; the token keeps others out.
        fsp.chmod(this.localPath, 0o666).then(resolve, reject);
      });
    });
  }

  /** The first connection that presents the token becomes the stream; any other is dropped. */
  private accept(conn: net.Socket): void {
    if (this.connected) {
      conn.destroy();
      return;
    }
    this.pending.add(conn);
    conn.once('close', () => this.pending.delete(conn));
    let received = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      received = Buffer.concat([received, chunk]);
      if (received.length < TOKEN_BYTES) return;
      conn.off('data', onData);
      conn.pause();
      this.pending.delete(conn);
      const token = received.subarray(0, TOKEN_BYTES);
      if (this.connected || !timingSafeEqual(token, this.token)) {
        conn.destroy();
        return;
      }
      this.connected = true;
      this.closeServer();
      if (this.stream === 'stdout') this.stdout.attach(conn, received.subarray(TOKEN_BYTES));
      else {
        this.stdin!.attach(conn);
        conn.resume(); // nothing comes this way; reading sees the command's end and closes
      }
      this.onConnected();
      this.connection.resolve();
    };
    conn.on('data', onData);
    conn.on('error', () => undefined);
    conn.resume();
  }

  private lose(err: Error): void {
    if (this.connected) return;
    const error = new BackupError(
      'workload',
      `${this.what}: cannot accept its connection (${errorMessage(err)})`,
      { cause: err },
    );
    this.inner?.kill();
    destroyQuietly(this.stdout, error);
    destroyQuietly(this.stdin, error);
    this.closeServer();
  }

  private closeServer(): void {
    if (this.server.listening) this.server.close();
    for (const conn of this.pending) conn.destroy();
    this.pending.clear();
    fsp.rm(this.localPath, { force: true }).catch(() => undefined);
  }
}

/**
 * Removes the sockets that runs killed before they could clean up left in
 * `dir` (a charm killed with SIGKILL): those that refuse connections. A live
 * one accepts, and drops the probe as it drops any connection without the token.
 */
export async function removeStaleSockets(dir: string): Promise<string[]> {
  const names = (await fsp.readdir(dir).catch(() => [])).filter((n) => SOCKET_NAME.test(n));
  const removed: string[] = [];
  for (const name of names) {
    const file = path.join(dir, name);
    const stale = await new Promise<boolean>((resolve) => {
      const probe = net.connect(file);
      probe.once('connect', () => {
        probe.destroy();
        resolve(false);
      });
      probe.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
    });
    if (
      stale &&
      (await fsp.rm(file).then(
        () => true,
        () => false,
      ))
    ) {
      removed.push(name);
    }
  }
  return removed;
}
