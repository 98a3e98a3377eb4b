/** Workload wrappers that make a real transport misbehave on purpose. */
import { Transform } from 'node:stream';
import type { ExecOptions, ExecProcess, Workload } from '../../src/workload/workload';

/** Wraps a workload and kills the command after `limit` bytes of stdout: tar dying mid-stream. */
export class KillAfterBytes implements Workload {
  readonly description: string;
  constructor(
    private readonly inner: Workload,
    private readonly limit: number,
  ) {
    this.description = inner.description;
  }
  exec(options: ExecOptions): ExecProcess {
    const proc = this.inner.exec(options);
    let seen = 0;
    proc.stdout.on('data', (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > this.limit) proc.kill();
    });
    return proc;
  }
  stopServices = (n: string[]) => this.inner.stopServices(n);
  startServices = (n: string[]) => this.inner.startServices(n);
  serviceStatus = (n: string[]) => this.inner.serviceStatus(n);
}

/**
 * Wraps a workload so that a bulk-output command (the create script) is held at
 * a chosen point: when `marker` (e.g. a tar header's name and its NUL) first
 * passes on stdout, the consumer stops reading until `mutate` resolves, so the
 * command blocks on its full pipe mid-archive; then the stream goes on. No
 * timing: tar cannot get past the pipe's and buffers' few MiB while held.
 */
export class MutateAtMarker implements Workload {
  readonly description: string;
  /** True once `mutate` ran. */
  mutated = false;
  constructor(
    private readonly inner: Workload,
    private readonly marker: Buffer,
    private readonly mutate: () => Promise<void>,
  ) {
    this.description = inner.description;
  }
  exec(options: ExecOptions): ExecProcess {
    const proc = this.inner.exec(options);
    if (!options.directStdout) return proc;
    let tail = Buffer.alloc(0);
    const gate = new Transform({
      highWaterMark: 16 * 1024,
      transform: (chunk: Buffer, _enc, done) => {
        const seen = Buffer.concat([tail, chunk]);
        tail = seen.subarray(Math.max(0, seen.length - this.marker.length));
        if (this.mutated || seen.indexOf(this.marker) === -1) {
          done(null, chunk);
          return;
        }
        this.mutated = true;
        this.mutate().then(
          () => done(null, chunk),
          (err: Error) => done(err),
        );
      },
    });
    proc.stdout.on('error', (err) => gate.destroy(err));
    proc.stdout.pipe(gate);
    return {
      stdout: gate,
      stderr: proc.stderr,
      stdin: proc.stdin,
      wait: () => proc.wait(),
      kill: () => proc.kill(),
    };
  }
  stopServices = (n: string[]) => this.inner.stopServices(n);
  startServices = (n: string[]) => this.inner.startServices(n);
  serviceStatus = (n: string[]) => this.inner.serviceStatus(n);
}
