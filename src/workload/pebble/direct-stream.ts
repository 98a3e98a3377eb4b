import { randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { BackupError, errorMessage } from '../../errors';
import { deferred, destroyQuietly } from '../settling';
import type { ExecOptions, ExecProcess, ExitStatus } from '../workload';
import { PebbleRefusedError, type PebbleClient } from './client';
import { PebbleExecProcess } from './exec';

/** A directory both containers see: in Juju, the Pebble socket's (see PebbleWorkloadOptions). */
export interface SharedDir {
  /** Its path here, in the charm's container. */
  local: string;
  /** Its path in the workload container. */
  workload: string;
}

/** Which of the command's streams goes over the socket. */
export type DirectStream = 'stdin' | 'stdout';

/** Why a stream could not go directly; it goes through Pebble's relay instead. */
export type DirectStreamUnavailable = (reason: string) => void;

const TOKEN_BYTES = 32;
const TOKEN_ENV = 'SYNAPSE_BACKUP_OUTPUT_TOKEN';
/**
 * The wrapper's exit status when it cannot connect, before the command has
 * started: the command is then run again through Pebble's relay.
 */
const UNAVAILABLE_STATUS = 86;
/**
 * The wrapper's first line on stderr once it has sent the token: Pebble delivers
 * stderr before the exit status, so a status that arrives before the connection is
 * read does not pass for a command that never connected. Removed from stderr.
 */
const CONNECTED_MARKER = 'synapse-backup: connected';
/** How long a command that said it connected may take to be seen connecting. */
const CONNECT_GRACE_MS = 10_000;
const KILLED: ExitStatus = { exitCode: null, signal: 'SIGKILL' };
const SOCKET_NAME = /^\.synapse-backup-[0-9a-f]{16}\.sock$/;

/**
 * Run in the workload before the command: connects to our socket, proves it is the
 * command we started (the token comes in its environment, which other users cannot
 * read), makes the connection its stdin or stdout and becomes the command.
 */
function connectAndExec(stream: DirectStream): string {
  const [fd, buffer] = stream === 'stdout' ? [1, 'SO_SNDBUF'] : [0, 'SO_RCVBUF'];
  return [
    'import os, socket, sys',
    'try:',
    '    s = socket.socket(socket.AF_UNIX)',
    `    s.setsockopt(socket.SOL_SOCKET, socket.${buffer}, 1 << 20)`,
    '    s.connect(sys.argv[1])',
    `    s.sendall(bytes.fromhex(os.environ.pop('${TOKEN_ENV}')))`,
    'except OSError as e:',
    "    sys.stderr.write('cannot connect to %s in the workload: %s' % (sys.argv[1], e))",
    `    sys.exit(${UNAVAILABLE_STATUS})`,
    `os.write(2, b'${CONNECTED_MARKER}\\n')`,
    `os.dup2(s.fileno(), ${fd})`,
    's.close()',
    'os.execvp(sys.argv[2], sys.argv[2:])',
  ].join('\n');
}

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
  private async runConnected(
    client: PebbleClient,
    options: ExecOptions,
  ): Promise<{ status: ExitStatus } | { unavailable: string }> {
    const inner = new PebbleExecProcess(
      client,
      {
        ...options,
        command: [
          'python3',
          '-c',
          connectAndExec(this.stream),
          this.workloadPath,
          ...options.command,
        ],
        environment: { ...options.environment, [TOKEN_ENV]: this.token.toString('hex') },
        stdin: false,
      },
      options.command[0],
    );
    this.inner = inner;
    // Until the command connects, stderr (and stdout) are the wrapper's: held back, so
    // that a fallback to the relay does not pass them off as the command's.
    const held: Buffer[] = [];
    let forwarding = false;
    const marker = Buffer.from(`${CONNECTED_MARKER}\n`);
    let head: Buffer | null = Buffer.alloc(0); // until the marker is found or ruled out
    let saidConnected = false;
    const take = (chunk: Buffer): void => {
      if (chunk.length === 0) return;
      if (forwarding) this.stderr.write(chunk);
      else held.push(chunk);
    };
    inner.stderr.on('data', (chunk: Buffer) => {
      if (head === null) return take(chunk);
      head = Buffer.concat([head, chunk]);
      if (head.length < marker.length && marker.subarray(0, head.length).equals(head)) return;
      saidConnected = head.subarray(0, marker.length).equals(marker);
      const rest = saidConnected ? head.subarray(marker.length) : head;
      head = null;
      take(rest);
    });
    const stderrDone = finished(inner.stderr)
      .catch(() => undefined)
      .then(() => {
        if (head) take(head);
        head = null;
      });
    const forward = (): void => {
      if (forwarding) return;
      forwarding = true;
      for (const chunk of held.splice(0)) this.stderr.write(chunk);
    };
    if (this.stream === 'stdout') {
      inner.stdout.resume(); // nothing comes this way: fd 1 is the socket
    }
    this.onConnected = () => {
      forward();
      if (this.stream === 'stdin') this.stdout.attach(inner.stdout);
    };
    const unavailable = (reason: string) => {
      this.onConnected = () => undefined;
      held.length = 0;
      inner.stdout.resume();
      return { unavailable: reason };
    };

    let status: ExitStatus;
    try {
      status = await inner.wait();
    } catch (err) {
      if (
        !this.connected &&
        !this.killed &&
        err instanceof PebbleRefusedError &&
        err.request === 'POST /v1/exec'
      ) {
        // Pebble is there but would not start the wrapper (no python3 in the image).
        return unavailable(err.message);
      }
      // Pebble failed (unreachable, dropped, restarted): the exit status is lost, so the
      // output cannot be trusted to be whole, and a command still using the socket gets EPIPE.
      destroyQuietly(this.stdout, err as Error);
      destroyQuietly(this.stdin, err as Error);
      forward();
      this.stderr.end();
      throw err;
    }
    await stderrDone;
    if (!this.connected && saidConnected && !this.killed) {
      // It connected and sent the token; reading them lost the race with the status.
      await Promise.race([
        this.connection.promise,
        new Promise((resolve) => setTimeout(resolve, CONNECT_GRACE_MS).unref()),
      ]);
    }
    if (!this.connected && !this.killed && status.exitCode === UNAVAILABLE_STATUS) {
      const said = Buffer.concat(held).toString().trim();
      return unavailable(said || `the wrapper exited with status ${UNAVAILABLE_STATUS}`);
    }
    forward();
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

/** A Readable whose source comes later: the connected socket, or the relay's stream. */
class LateReadable extends Readable {
  private source: Readable | null = null;

  constructor() {
    super({ highWaterMark: 256 * 1024 });
  }

  attach(source: Readable, head: Buffer = Buffer.alloc(0)): void {
    this.source = source;
    if (this.destroyed) {
      source.destroy();
      return;
    }
    if (head.length > 0) this.push(head);
    source.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) source.pause();
    });
    source.on('end', () => this.push(null));
    source.on('error', (err) => destroyQuietly(this, err));
    source.resume();
  }

  override _read(): void {
    this.source?.resume();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.source?.destroy();
    callback(err);
  }
}

/**
 * A Writable whose destination comes later: the connected socket, or the
 * relay's stdin. Writes wait for it, and each waits until the destination has
 * taken it (the socket's backpressure).
 */
class LateWritable extends Writable {
  private dest: Writable | null = null;
  private readonly ready = deferred<Writable>();

  constructor() {
    super({ highWaterMark: 1024 * 1024 });
  }

  attach(dest: Writable): void {
    this.dest = dest;
    if (this.destroyed) {
      dest.destroy();
      return;
    }
    dest.on('error', (err) => destroyQuietly(this, err));
    this.ready.resolve(dest);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.ready.promise.then(
      (dest) => dest.write(chunk, (err) => done(err ?? null)),
      (err: Error) => done(err),
    );
  }

  override _final(done: (err?: Error | null) => void): void {
    this.ready.promise.then(
      (dest) => dest.end(() => done()),
      (err: Error) => done(err),
    );
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.ready.reject(err ?? new Error('destroyed before the command connected'));
    this.dest?.destroy();
    callback(err);
  }
}
