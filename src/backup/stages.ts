import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import type { Progress } from './types';

/** Counts bytes and computes SHA-256 of everything that passes. */
export class HashingCounter extends Transform {
  bytes = 0;
  private readonly hash = createHash('sha256');
  private digestHex: string | undefined;

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    this.digestHex = this.hash.digest('hex');
    done();
  }

  /** Available once the stream has flushed. */
  get sha256(): string {
    if (this.digestHex === undefined) throw new Error('sha256 read before the stream ended');
    return this.digestHex;
  }
}

/** Counts bytes only. */
export class ByteCounter extends Transform {
  bytes = 0;

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    done(null, chunk);
  }
}

/**
 * Holds the end of a stream until `settle` resolves: a command's stdout must
 * not end cleanly before we know the command succeeded, or encryption would
 * seal a truncated archive as if it were whole.
 */
export class EndGate extends Transform {
  constructor(private readonly settle: () => Promise<void>) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    this.settle().then(
      () => done(),
      (err: Error) => done(err),
    );
  }
}

/** Calls `report` every `intervalMs` with the bytes `read()` returns, and once at stop. */
export class ProgressTicker {
  private readonly started = Date.now();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly phase: Progress['phase'],
    private readonly read: () => number,
    private readonly report: ((p: Progress) => void) | undefined,
    intervalMs: number,
  ) {
    if (report) {
      this.timer = setInterval(() => this.emit(), intervalMs);
      this.timer.unref();
    }
  }

  get elapsedSeconds(): number {
    return (Date.now() - this.started) / 1000;
  }

  stop(final: boolean): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (final) this.emit();
  }

  private emit(): void {
    const elapsedSeconds = this.elapsedSeconds;
    const bytes = this.read();
    this.report?.({
      phase: this.phase,
      bytes,
      elapsedSeconds,
      bytesPerSecond: elapsedSeconds > 0 ? bytes / elapsedSeconds : 0,
    });
  }
}
