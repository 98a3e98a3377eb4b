import { dirname } from 'node:path';
import { BackupError } from '../errors';
import { PebbleClient } from './pebble/client';
import {
  DirectStreamProcess,
  type DirectStreamUnavailable,
  type SharedDir,
  removeStaleSockets,
} from './pebble/direct-stream';
import { PebbleExecProcess } from './pebble/exec';
import type { ExecOptions, ExecProcess, ServiceStatus, Workload } from './workload';

export interface PebbleWorkloadOptions {
  /** Pebble's unix socket, e.g. `/charm/containers/synapse/pebble.socket`. */
  socketPath: string;
  /**
   * A directory both containers see, for bulk streams that bypass Pebble's websocket relay
   * (`directStdout`, `directStdin`). Juju mounts the socket's directory in the workload container too,
   * at /charm/container: `{ local: '/charm/containers/synapse', workload: '/charm/container' }`
   * (juju/juju caas/kubernetes/provider/application: the `charm-data` volume's
   * `charm/containers/<name>` at both paths). On one host, the socket's directory on both sides.
   */
  sharedDir?: SharedDir;
  /** Told why, when a stream meant to bypass the relay goes through it after all. */
  onDirectStreamUnavailable?: DirectStreamUnavailable;
}

/** The workload container, reached through its Pebble daemon (the Juju sidecar transport). */
export class PebbleWorkload implements Workload {
  readonly description: string;
  private readonly client: PebbleClient;
  private readonly sharedDir: SharedDir | undefined;
  private readonly socketPath: string;
  private readonly onDirectStreamUnavailable: DirectStreamUnavailable | undefined;

  constructor(options: PebbleWorkloadOptions) {
    this.client = new PebbleClient(options.socketPath);
    this.sharedDir = options.sharedDir;
    this.socketPath = options.socketPath;
    this.onDirectStreamUnavailable = options.onDirectStreamUnavailable;
    this.description = `Pebble at ${options.socketPath}`;
  }

  exec(options: ExecOptions): ExecProcess {
    if (!options.command[0]) throw new BackupError('workload', 'empty command');
    const direct = options.stdin
      ? options.directStdin && 'stdin'
      : options.directStdout && 'stdout';
    if (direct && this.sharedDir) {
      return new DirectStreamProcess(
        this.client,
        options,
        this.sharedDir,
        direct,
        this.onDirectStreamUnavailable,
      );
    }
    return new PebbleExecProcess(this.client, options);
  }

  async stopServices(names: string[]): Promise<void> {
    await this.changeServices('stop', names);
  }

  async startServices(names: string[]): Promise<void> {
    await this.changeServices('start', names);
  }

  async serviceStatus(names: string[]): Promise<ServiceStatus[]> {
    const query = names.length > 0 ? `?names=${encodeURIComponent(names.join(','))}` : '';
    const services = await this.client.sync<{ name: string; current: string }[]>(
      'GET',
      `/v1/services${query}`,
      { what: `cannot get the status of services ${names.join(', ') || '(all)'}` },
    );
    return services.map(({ name, current }) => ({ name, current }));
  }

  /**
   * Removes the archive sockets that runs killed before they could clean up
   * (a charm killed with SIGKILL mid-create) left in the shared dir's local
   * side: those that refuse connections; a live run's socket stays. Returns
   * their file names. Without a shared dir (pebble-relay) it still sweeps the
   * socket's directory, where an earlier run with one left them.
   */
  async removeStale(): Promise<string[]> {
    return removeStaleSockets(this.sharedDir?.local ?? dirname(this.socketPath));
  }

  /** Adds (or, with `combine`, merges into) the configuration layer `label`. */
  async addLayer(label: string, yamlText: string, combine = true): Promise<void> {
    await this.client.sync('POST', '/v1/layers', {
      what: `cannot add the Pebble layer ${JSON.stringify(label)}`,
      body: { action: 'add', combine, label, format: 'yaml', layer: yamlText },
    });
  }

  /** Starts or restarts services so that they match the current plan. */
  async replan(): Promise<void> {
    const what = 'cannot replan the Pebble services';
    const { changeId } = await this.client.async('POST', '/v1/services', {
      what,
      body: { action: 'replan' },
    });
    await this.client.waitChangeSucceeded(changeId, what);
  }

  private async changeServices(action: 'start' | 'stop', names: string[]): Promise<void> {
    if (names.length === 0) return;
    const what = `cannot ${action} services ${names.join(', ')}`;
    const { changeId } = await this.client.async('POST', '/v1/services', {
      what,
      body: { action, services: names },
    });
    await this.client.waitChangeSucceeded(changeId, what);
  }
}
