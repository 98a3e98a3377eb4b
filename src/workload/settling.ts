import type { Readable, Writable } from 'node:stream';

/** A promise with its resolve and reject at hand. */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (err: Error) => void;
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Failures are reported through whoever awaits; never as an unhandled rejection.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/** Destroys a stream, carrying `err` only if someone listens (an unheard 'error' would crash). */
export function destroyQuietly(stream: Readable | Writable | null, err?: Error): void {
  if (!stream || stream.destroyed) return;
  stream.destroy(err && stream.listenerCount('error') > 0 ? err : undefined);
}
