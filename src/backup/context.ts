import { ConfigError } from '../errors';
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
