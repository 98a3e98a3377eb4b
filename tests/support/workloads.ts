/** Workload wrappers that make a real transport misbehave on purpose. */
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
