/** An object's body as the engine reads it (ObjectStore.getStream). */
import type { Socket } from 'node:net';
import { PassThrough, type Readable } from 'node:stream';
import type { BackupError } from '../errors';

/**
 * `body` (the SDK's response stream) passed through, with its errors given as
 * `describe` says (a stalled body, destroyed by the HTTP handler's socket
 * timeout, becomes "cannot download KEY: ... stopped answering for 60 s"), and
 * an end that never came as an error rather than a short read. While the
 * engine is the side not reading (its consumer, e.g. tar in the workload,
 * holds back), the connection's idle timer is off: that is no stall of S3's;
 * it is armed again with `stallMs` (milliseconds) when reading resumes.
 * Destroying the result destroys `body`.
 */
export function describedBody(
  body: Readable,
  describe: (err: unknown) => BackupError,
  stallMs: number,
): Readable {
  const out = new PassThrough({ highWaterMark: 256 * 1024 });
  const socket = (body as { socket?: Socket | null }).socket ?? undefined;
  body.on('data', (chunk: Buffer) => {
    if (!out.write(chunk)) {
      body.pause();
      socket?.setTimeout(0);
    }
  });
  out.on('drain', () => {
    if (body.readableEnded || body.destroyed) return;
    socket?.setTimeout(stallMs);
    body.resume();
  });
  body.once('end', () => out.end());
  body.once('error', (err) => out.destroy(describe(err)));
  body.once('close', () => {
    if (!body.readableEnded) {
      out.destroy(describe(new Error('the connection closed before the end of the object')));
    }
  });
  out.once('close', () => {
    if (!body.destroyed) body.destroy();
  });
  return out;
}
