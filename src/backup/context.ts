import { ConfigError, InterruptedError } from '../errors';
import type { Workload } from '../workload/workload';
import { ProgressTicker } from './stages';
import type { BackupStore } from './store';
import type { Progress } from './types';

/**
 * What every operation of the engine works with: the options of
 * BackupEngine, checked and with their defaults (src/backup/engine.ts).
 */
export interface EngineContext {
  readonly store: BackupStore;
  readonly workload: Workload;
  /** Synapse's data directory inside the workload: an absolute path. */
  readonly dataDir: string;
  /** See EngineOptions.configRoot: absolute, or undefined. */
  readonly configRoot: string | undefined;
  /** The bucket's name, for messages. */
  readonly bucket: string;
  /** Undefined when none was given: see {@link passphraseOf}. */
  readonly passphrase: string | undefined;
  /** ESDK frame length in bytes. */
  readonly frameLength: number;
  /** Multipart part size in bytes. */
  readonly partSize: number;
  /** Parts uploaded at once. */
  readonly queueSize: number;
  readonly progressIntervalMs: number;
  readonly onProgress: ((progress: Progress) => void) | undefined;
  /** What the operator should hear of that is no failure (a stale lock taken over). */
  readonly onNotice: ((message: string) => void) | undefined;
  /**
   * Aborted when the process is told to stop (the front ends abort it on
   * SIGTERM and SIGINT, with the signal's name as the reason): the running
   * pipeline is torn down with an InterruptedError, and the operation cleans
   * up and throws one; a swap that began is finished or rolled back first.
   */
  readonly signal: AbortSignal | undefined;
}

/** The name of what interrupted the operation ("SIGTERM"), or undefined while it may go on. */
export function interruptedBy(ctx: EngineContext): string | undefined {
  const signal = ctx.signal;
  if (!signal?.aborted) return undefined;
  return typeof signal.reason === 'string' ? signal.reason : 'a signal';
}

/** Throws InterruptedError(reason, `cleanedUp`) once the operation's signal is aborted. */
export function checkInterrupted(ctx: EngineContext, cleanedUp: string): void {
  const by = interruptedBy(ctx);
  if (by) throw new InterruptedError(by, cleanedUp);
}

/** A progress ticker for `phase` that reports the plaintext bytes `read()` returns. */
export function progressTicker(
  ctx: EngineContext,
  phase: Progress['phase'],
  read: () => number,
): ProgressTicker {
  return new ProgressTicker(phase, read, ctx.onProgress, ctx.progressIntervalMs);
}

/** The passphrase, for the operations that encrypt or decrypt; ConfigError when none is set. */
export function passphraseOf(ctx: EngineContext): string {
  if (!ctx.passphrase) {
    throw new ConfigError('no backup passphrase is set', {
      kind: 'set',
      setting: 'backup-passphrase',
    });
  }
  return ctx.passphrase;
}
