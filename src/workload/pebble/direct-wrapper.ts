/**
 * The wrapper a direct-stream command runs under (see DirectStreamProcess):
 * a Python program that connects to the charm's socket, sends the token and
 * execs the command with the socket as its stdin or stdout; and its stderr,
 * held back until the command is known to have connected.
 */
import type { PassThrough, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';

/** Which of the command's streams goes over the socket. */
export type DirectStream = 'stdin' | 'stdout';

/** The secret that proves a connection is the command's: this many random bytes, hex in TOKEN_ENV. */
export const TOKEN_BYTES = 32;
export const TOKEN_ENV = 'SYNAPSE_BACKUP_OUTPUT_TOKEN';
/**
 * The wrapper's exit status when it cannot connect, before the command has
 * started: the command is then run again through Pebble's relay.
 */
export const UNAVAILABLE_STATUS = 86;
/**
 * The wrapper's first line on stderr once it has sent the token: Pebble delivers
 * stderr before the exit status, so a status that arrives before the connection is
 * read does not pass for a command that never connected. Removed from stderr.
 */
const CONNECTED_LINE = 'synapse-backup: connected';
const CONNECTED_MARKER = Buffer.from(`${CONNECTED_LINE}\n`);

/**
 * The wrapper's stderr. Until the command connects it is the wrapper's: held
 * back, so that a fallback to the relay does not pass it off as the command's
 * (forward() lets it through, discard() drops it). Its first line, the
 * CONNECTED_MARKER, is taken off.
 */
export class WrapperStderr {
  /** Settles once the source has ended (or failed) and all it said is taken. */
  readonly done: Promise<void>;
  /** The wrapper wrote the marker: it connected and sent the token. */
  saidConnected = false;
  private held: Buffer[] = [];
  private forwarding = false;
  /** What came before the marker was found or ruled out; null after. */
  private head: Buffer | null = Buffer.alloc(0);

  constructor(
    source: Readable,
    private readonly out: PassThrough,
  ) {
    source.on('data', (chunk: Buffer) => this.receive(chunk));
    this.done = finished(source)
      .catch(() => undefined)
      .then(() => {
        if (this.head) this.take(this.head);
        this.head = null;
      });
  }

  forward(): void {
    if (this.forwarding) return;
    this.forwarding = true;
    for (const chunk of this.held.splice(0)) this.out.write(chunk);
  }

  heldText(): string {
    return Buffer.concat(this.held).toString().trim();
  }

  discard(): void {
    this.held.length = 0;
  }

  private receive(chunk: Buffer): void {
    if (this.head === null) return this.take(chunk);
    const head = Buffer.concat([this.head, chunk]);
    const marker = CONNECTED_MARKER;
    if (head.length < marker.length && marker.subarray(0, head.length).equals(head)) {
      this.head = head;
      return;
    }
    this.saidConnected = head.subarray(0, marker.length).equals(marker);
    this.head = null;
    this.take(this.saidConnected ? head.subarray(marker.length) : head);
  }

  private take(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.forwarding) this.out.write(chunk);
    else this.held.push(chunk);
  }
}

/**
 * Run in the workload before the command: connects to our socket, proves it is the
 * command we started (the token comes in its environment, which other users cannot
 * read), makes the connection its stdin or stdout and becomes the command.
 */
export function connectAndExec(stream: DirectStream): string {
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
    `os.write(2, b'${CONNECTED_LINE}\\n')`,
    `os.dup2(s.fileno(), ${fd})`,
    's.close()',
    'os.execvp(sys.argv[2], sys.argv[2:])',
  ].join('\n');
}
