import * as fs from 'node:fs';
import * as path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import type WebSocket from 'ws';
import { BackupError, errorMessage } from '../errors';
import { runCommand } from './command';
import { type ExecTarget, KubernetesExecProcess } from './kubernetes/exec';
import {
  type ExecOptions,
  type ExecProcess,
  type ServiceStatus,
  type Workload,
  launchedCommand,
} from './workload';

export { KubernetesForbiddenError } from './kubernetes/exec';

/** Where the kubelet mounts a pod's service-account credentials. */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Pebble as seen from inside a Juju sidecar workload container. */
export const JUJU_WORKLOAD_PEBBLE = {
  command: ['/charm/bin/pebble'],
  socket: '/charm/container/pebble.socket',
};

export interface KubernetesWorkloadOptions {
  /** Credentials and API server. Default: in-cluster (`KubeConfig.loadFromCluster()`). */
  kubeConfig?: KubeConfig;
  namespace: string;
  pod: string;
  container: string;
  /** The Juju application, named in the `juju trust` hint of a 403. Default: `synapse`. */
  appName?: string;
  /**
   * The Pebble CLI inside the container, which services are stopped and started
   * through (over exec). Default: Juju's, {@link JUJU_WORKLOAD_PEBBLE}.
   */
  pebble?: { command: string[]; socket: string };
}

export interface FromClusterOptions {
  /** The Juju application (`JUJU_UNIT_NAME` before the slash). */
  appName: string;
  unitNumber: number;
  /** The workload container's name in metadata.yaml, e.g. `synapse`. */
  container: string;
  /** `JUJU_MODEL_NAME`: the namespace when the service-account file is missing. */
  modelName?: string;
  /** Root to find `var/run/secrets/...` under (tests); default `/`. */
  rootDir?: string;
  pebble?: { command: string[]; socket: string };
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * The workload container reached through the Kubernetes API's `pods/exec`
 * (the alternative to Pebble's exec API; it needs `juju trust <app> --scope=cluster`).
 *
 * Commands run with the container's own environment and working directory;
 * ExecOptions.environment and .workingDir are applied by wrapping the command
 * in `env` and `sh -c 'cd …'`, and every command runs under `/bin/sh` for its
 * end marker (see KubernetesExecProcess), so the image needs `sh` and `env`
 * (Synapse's has them). Services are managed by running the Pebble CLI that Juju
 * mounts into the container (`/charm/bin/pebble`), over exec.
 *
 * kill() cannot signal the command (Kubernetes has no such call): it drops the
 * connection, so the command meets EPIPE on its next write or EOF on stdin.
 */
export class KubernetesWorkload implements Workload {
  readonly description: string;
  readonly namespace: string;
  readonly pod: string;
  readonly container: string;
  private readonly kubeConfig: KubeConfig;
  private readonly target: ExecTarget;
  private readonly pebble: { command: string[]; socket: string };

  constructor(options: KubernetesWorkloadOptions) {
    this.namespace = options.namespace;
    this.pod = options.pod;
    this.container = options.container;
    this.pebble = options.pebble ?? JUJU_WORKLOAD_PEBBLE;
    this.kubeConfig = options.kubeConfig ?? inClusterConfig();
    const cluster = this.kubeConfig.getCurrentCluster();
    if (!cluster) {
      throw new BackupError('workload', 'no Kubernetes cluster is configured for the charm');
    }
    const server = new URL(cluster.server);
    if (server.protocol !== 'https:' && server.protocol !== 'http:') {
      throw new BackupError(
        'workload',
        `the Kubernetes API address ${cluster.server} is not http(s)`,
      );
    }
    server.protocol = server.protocol === 'https:' ? 'wss:' : 'ws:';
    const base = server.toString().replace(/\/+$/, '');
    const enc = encodeURIComponent;
    const kubeConfig = this.kubeConfig;
    this.target = {
      execUrl: `${base}/api/v1/namespaces/${enc(this.namespace)}/pods/${enc(this.pod)}/exec`,
      async connectOptions() {
        const opts: WebSocket.ClientOptions = {};
        await kubeConfig.applyToHTTPSOptions(opts);
        return opts;
      },
      podName: `${this.namespace}/${this.pod}`,
      container: this.container,
      appName: options.appName ?? 'synapse',
    };
    this.description = `pod ${this.namespace}/${this.pod} (container ${this.container}, over Kubernetes exec)`;
  }

  /**
   * The workload of a Juju sidecar unit, from inside the charm's pod: in-cluster
   * credentials, pod `<app>-<unit number>`, namespace from the service account
   * (falling back to the model's name, which Juju uses as the namespace).
   */
  static fromCluster(options: FromClusterOptions): KubernetesWorkload {
    const root = options.rootDir ?? '/';
    const saDir = path.join(root, SERVICE_ACCOUNT_DIR);
    let namespace: string | undefined;
    try {
      namespace = fs.readFileSync(path.join(saDir, 'namespace'), 'utf8').trim() || undefined;
    } catch {
      namespace = undefined;
    }
    namespace ??= options.modelName;
    if (!namespace) {
      throw new BackupError(
        'workload',
        `cannot tell the charm's namespace: ${path.join(saDir, 'namespace')} is missing and JUJU_MODEL_NAME is not set`,
      );
    }
    return new KubernetesWorkload({
      kubeConfig: inClusterConfig(options.rootDir),
      namespace,
      pod: `${options.appName}-${options.unitNumber}`,
      container: options.container,
      appName: options.appName,
      pebble: options.pebble,
    });
  }

  exec(options: ExecOptions): ExecProcess {
    if (!options.command[0]) throw new BackupError('workload', 'empty command');
    return new KubernetesExecProcess(this.target, options, wrapCommand(options));
  }

  async stopServices(names: string[]): Promise<void> {
    if (names.length === 0) return;
    await this.pebbleCommand(['stop', ...names], `stopping services ${names.join(', ')}`);
  }

  async startServices(names: string[]): Promise<void> {
    if (names.length === 0) return;
    await this.pebbleCommand(['start', ...names], `starting services ${names.join(', ')}`);
  }

  async serviceStatus(names: string[]): Promise<ServiceStatus[]> {
    const out = await this.pebbleCommand(
      ['services', ...names],
      `getting the status of services ${names.join(', ') || '(all)'}`,
    );
    return parsePebbleServices(out);
  }

  private pebbleCommand(args: string[], what: string): Promise<string> {
    return runCommand(
      this,
      ['env', `PEBBLE_SOCKET=${this.pebble.socket}`, ...this.pebble.command, ...args],
      `${what} with Pebble in ${this.target.podName} (container ${this.container})`,
    );
  }
}

/** `KubeConfig.loadFromCluster()`, with errors an operator can act on. */
function inClusterConfig(rootDir?: string): KubeConfig {
  if (!process.env.KUBERNETES_SERVICE_HOST || !process.env.KUBERNETES_SERVICE_PORT) {
    throw new BackupError(
      'workload',
      'cannot reach the Kubernetes API: KUBERNETES_SERVICE_HOST/PORT are not set (is the charm running in a pod?)',
    );
  }
  const prefix = rootDir ? path.resolve(rootDir).replace(/\/+$/, '') : undefined;
  const token = path.join(prefix ?? '/', SERVICE_ACCOUNT_DIR, 'token');
  if (!fs.existsSync(token)) {
    throw new BackupError(
      'workload',
      `cannot use the Kubernetes API: the charm's service-account token ${token} is missing`,
    );
  }
  const kubeConfig = new KubeConfig();
  try {
    kubeConfig.loadFromCluster(prefix);
  } catch (err) {
    throw new BackupError(
      'workload',
      `cannot load the charm's in-cluster Kubernetes credentials: ${errorMessage(err)}`,
      { cause: err },
    );
  }
  return kubeConfig;
}

/**
 * The exec API takes only argv: apply the environment with `env NAME=value …`
 * and the working directory with `sh -c 'cd …'`.
 */
export function wrapCommand(options: ExecOptions): string[] {
  let argv = launchedCommand(options);
  const env = Object.entries(options.environment ?? {});
  for (const [name] of env) {
    if (!ENV_NAME.test(name)) {
      throw new BackupError(
        'workload',
        `invalid environment variable name ${JSON.stringify(name)}`,
      );
    }
  }
  if (env.length > 0) {
    if (argv[0].includes('=')) {
      throw new BackupError(
        'workload',
        `cannot pass an environment to ${JSON.stringify(argv[0])}: env would take it for a variable`,
      );
    }
    argv = ['env', ...env.map(([name, value]) => `${name}=${value}`), ...argv];
  }
  if (options.workingDir) {
    argv = ['/bin/sh', '-c', 'cd -- "$1" && shift && exec "$@"', 'sh', options.workingDir, ...argv];
  }
  return argv;
}

/**
 * Reads `pebble services` output:
 *   Service  Startup  Current  Since
 *   synapse  enabled  active   today at 10:00 UTC
 */
export function parsePebbleServices(text: string): ServiceStatus[] {
  const lines = text.split('\n').filter((line) => line.trim() !== '');
  if (lines.length === 0 || !/^Service\s+Startup\s+Current\b/.test(lines[0])) return [];
  return lines.slice(1).map((line) => {
    const [name, , current] = line.trim().split(/\s+/);
    return { name, current: current ?? '' };
  });
}
