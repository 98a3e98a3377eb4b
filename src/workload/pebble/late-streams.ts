/**
 * Streams whose other end comes later: a direct-stream command's stdout and
 * stdin exist before it is known whether the command's socket connects or the
 * command runs through Pebble's relay instead (see DirectStreamProcess).
 */
import type { Readable } from 'node:stream';
import { Writable } from 'node:stream';
import { RemoteOutput } from '../remote-process';
import { deferred, destroyQuietly } from '../settling';

/**
 * A Readable whose source comes later: the connected socket, or the relay's
 * stdout. Backpressure pauses the source; destroying this before the end
 * destroys the source (and one attached later at once).
 */
export class LateReadable extends RemoteOutput {
  private source: Readable | null = null;

  /** `head`: bytes already read from `source`, delivered first. */
  attach(source: Readable, head: Buffer = Buffer.alloc(0)): void {
    this.source = source;
    if (this.destroyed) {
      source.destroy();
      return;
    }
    this.deliver(head);
    source.on('data', (chunk: Buffer) => this.deliver(chunk));
    source.on('end', () => this.finish());
    source.on('error', (err) => destroyQuietly(this, err));
    source.resume();
  }

  protected pauseSource(): void {
    this.source?.pause();
  }

  protected resumeSource(): void {
    this.source?.resume();
  }

  protected abandonSource(): void {
    this.source?.destroy();
  }
}

/**
 * A Writable whose destination comes later: the connected socket, or the
 * relay's stdin. Writes wait for it, and each waits until the destination has
 * taken it (the socket's backpressure). A destination gone before it took a
 * write, or before its end, fails that write or the end: bytes nobody read are
 * never reported written.
 */
export class LateWritable extends Writable {
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
      // A socket destroyed (the command's end read as ECONNRESET) while a write was
      // under way calls it back without an error (Node's onWriteComplete drops the
      // status of a destroyed stream's writes): the write was cut off, not done.
      (dest) => dest.write(chunk, (err) => done(err ?? (dest.destroyed ? lost(dest) : null))),
      (err: Error) => done(err),
    );
  }

  /**
   * Chunks that queued while a write was under way go out together: corked, so a
   * socket writes them with one writev instead of a syscall (and a callback) each.
   */
  override _writev(chunks: { chunk: Buffer }[], done: (err?: Error | null) => void): void {
    this.ready.promise.then(
      (dest) => {
        dest.cork();
        const last = chunks.length - 1;
        chunks.forEach(({ chunk }, i) => {
          if (i < last) dest.write(chunk);
          else dest.write(chunk, (err) => done(err ?? (dest.destroyed ? lost(dest) : null)));
        });
        dest.uncork();
      },
      (err: Error) => done(err),
    );
  }

  override _final(done: (err?: Error | null) => void): void {
    this.ready.promise.then(
      (dest) =>
        dest.end((err?: Error | null) => {
          // Already finished: the command read to the end and closed (the socket then
          // ends its side itself). Any other error: the end never reached it.
          const finished = (err as NodeJS.ErrnoException | null | undefined)?.code;
          done(err && finished !== 'ERR_STREAM_ALREADY_FINISHED' ? lost(dest, err) : null);
        }),
      (err: Error) => done(err),
    );
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.ready.reject(err ?? new Error('destroyed before the command connected'));
    this.dest?.destroy();
    callback(err);
  }
}

/** Why a destination's write or end did not arrive: what destroyed it, if it says. */
function lost(dest: Writable, err?: Error): Error {
  return dest.errored ?? err ?? new Error('the command closed its input before reading it all');
}
