import { PassThrough, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { InterruptedError } from '../errors';

/** A stream stage: a source (Readable), a transform (Duplex) or a sink (Writable). */
export type Stage = Readable | Writable;

/**
 * Reads the output of the last stage from outside the pipeline, concurrently
 * (the store's upload): `consume` gets a Readable of that output and settles
 * when it has taken all of it, rejecting with its own error when it fails.
 */
export interface Consumer {
  readonly consume: (source: Readable) => Promise<void>;
}

/** The first stage, or the consumer, to fail, and its error. */
export interface StageFailure {
  /**
   * Undefined when no stage reported an error but a stream closed before its
   * end (the pipeline's premature close).
   */
  stage: Stage | Consumer | undefined;
  /** For the consumer: the error it rejected with (its own words), not the teardown's. */
  error: unknown;
}

export interface PipelineOptions {
  consumer?: Consumer;
  /** Called once, as soon as the first failure is known, before the teardown settles. */
  onFailure?: (failure: StageFailure) => void;
  /**
   * Aborting it tears the pipeline down at once: the first stage is destroyed
   * with an InterruptedError (the abort reason as its signal name), which is
   * the failure returned.
   */
  signal?: AbortSignal;
}

/**
 * Joins `stages` with stream.pipeline (and, with `consumer`, hands the last
 * stage's output to it through a pass-through outlet of the pipeline's own)
 * and waits for everything to settle. Resolves undefined when all succeeded,
 * else the FIRST failure: once one stage fails, the teardown makes every other
 * stage fail too, with errors that only say that they were torn down. Each
 * stage's first 'error' is listened to; the consumer counts as failing when
 * its outlet errors or closes before its end (it destroys its source when it
 * fails) or when its promise rejects, whichever comes first, so one mechanism
 * orders both. A consumer's failure destroys the outlet, which tears the
 * pipeline down.
 */
export async function runPipeline(
  stages: Stage[],
  options: PipelineOptions = {},
): Promise<StageFailure | undefined> {
  const { consumer, onFailure, signal } = options;
  let first: StageFailure | undefined;
  const record = (stage: StageFailure['stage'], error: unknown): void => {
    if (first) return;
    first = { stage, error };
    onFailure?.(first);
  };
  const outlet = consumer ? new PassThrough() : undefined;
  for (const stage of stages) stage.on('error', (error: unknown) => record(stage, error));
  outlet?.on('error', (error: unknown) => record(consumer, error));
  // A consumer may also stop by destroying its source without an error. (Registered
  // before the pipeline's own listener, which then tears the stages down.)
  outlet?.on('close', () => {
    if (!outlet.readableEnded) record(consumer, new Error('the consumer stopped reading'));
  });

  const streams: Stage[] = outlet ? [...stages, outlet] : stages;
  const joined = (pipeline as (...streams: Stage[]) => Promise<void>)(...streams).catch(
    (error: unknown) => record(undefined, error),
  );
  let consumerError: { error: unknown } | undefined;
  const consumed = consumer?.consume(outlet!).catch((error: unknown) => {
    consumerError = { error };
    record(consumer, error);
    outlet!.destroy(error as Error);
  });
  const onAbort = (): void => {
    const reason = typeof signal?.reason === 'string' ? signal.reason : 'a signal';
    const error = new InterruptedError(reason, '');
    record(stages[0], error);
    stages[0]?.destroy(error);
    outlet?.destroy(error);
  };
  if (signal?.aborted) onAbort();
  else signal?.addEventListener('abort', onAbort, { once: true });
  await Promise.all([joined, consumed]).finally(() =>
    signal?.removeEventListener('abort', onAbort),
  );
  const failure = first as StageFailure | undefined;
  if (failure && failure.stage === consumer && consumerError) {
    return { stage: consumer, error: consumerError.error };
  }
  return failure;
}
