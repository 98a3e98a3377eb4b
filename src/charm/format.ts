/** Formatting for action output: sizes, rates, tables (src/format.ts), progress. */
import type { Progress } from '../backup/types';
import { formatBytes } from '../format';

export { counted, formatBytes, formatTable } from '../format';

export function formatSeconds(seconds: number): string {
  return (Math.round(seconds * 10) / 10).toFixed(1);
}

const VERB: Record<Progress['phase'], string> = {
  create: 'backed up',
  restore: 'restored',
  verify: 'verified',
  decrypt: 'decrypted',
};

export function describeProgress(p: Progress): string {
  return `${VERB[p.phase] ?? p.phase} ${formatBytes(p.bytes)} so far (${formatBytes(p.bytesPerSecond)}/s, ${Math.round(p.elapsedSeconds)} s)`;
}

/**
 * Sends progress to action-log: every engine progress event, and a heartbeat
 * when nothing was logged for `maxSilenceMs`, so the operator hears from the
 * action at least every 5 seconds even while the engine waits on S3.
 */
export class ProgressReporter {
  private last: Progress | undefined;
  private lastLoggedAt = Date.now();
  private readonly started = Date.now();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: (message: string) => Promise<void>,
    private readonly what: string,
    private readonly maxSilenceMs = 4000,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      if (Date.now() - this.lastLoggedAt >= this.maxSilenceMs) {
        const elapsed = Math.round((Date.now() - this.started) / 1000);
        this.emit(
          this.last
            ? `${describeProgress(this.last)}; still working (${elapsed} s)`
            : `${this.what}: working (${elapsed} s)`,
        );
      }
    }, 500);
    this.timer.unref();
  }

  onProgress = (p: Progress): void => {
    this.last = p;
    this.emit(describeProgress(p));
  };

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private emit(message: string): void {
    this.lastLoggedAt = Date.now();
    this.log(message).catch(() => undefined);
  }
}
