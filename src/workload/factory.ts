/**
 * One place that turns a transport's name into a Workload, for the charm
 * (config option `workload-exec`) and the CLI (its flags). Modes:
 *
 *   pebble        Pebble's exec API, the bulk stream (create's archive, restore's)
 *                 over a unix socket in the directory of Pebble's socket, which
 *                 both containers see; Pebble's websocket relay when that socket
 *                 cannot be used (PebbleWorkload with a shared dir)
 *   pebble-relay  Pebble's exec API, every stream through its websockets
 *   kubernetes    the Kubernetes API's pods/exec (needs `juju trust`); its client
 *                 module is loaded only for this mode (loadWorkload)
 *   local         commands on this host (the CLI's disaster recovery)
 *
 * Aliases: `pebble-direct` (the opt-in name of an earlier release) is `pebble`.
 */
import * as path from 'node:path';
import { ConfigError } from '../errors';
import type { FromClusterOptions } from './kubernetes';
import { LocalWorkload } from './local';
import { PebbleWorkload } from './pebble';
import type { DirectStreamUnavailable } from './pebble/direct-stream';
import type { Workload } from './workload';

export const WORKLOAD_MODES = ['pebble', 'pebble-relay', 'kubernetes', 'local'] as const;
export type WorkloadMode = (typeof WORKLOAD_MODES)[number];

/** Other names a mode is known by. */
export const WORKLOAD_MODE_ALIASES: Readonly<Record<string, WorkloadMode>> = {
  'pebble-direct': 'pebble',
};

/** A mode name that is neither a mode nor an alias of one that the caller allows. */
export class WorkloadModeError extends ConfigError {
  constructor(
    /** The name as given. */
    readonly mode: string,
    /** The modes the caller allows, in its order. */
    readonly allowed: readonly WorkloadMode[],
  ) {
    super(`workload mode "${mode}" is not valid: use ${quotedList(allowed)}`);
    this.name = 'WorkloadModeError';
  }
}

/** `"a", "b" or "c"`. */
export function quotedList(items: readonly string[]): string {
  const quoted = items.map((item) => `"${item}"`);
  return quoted.length > 1
    ? `${quoted.slice(0, -1).join(', ')} or ${quoted[quoted.length - 1]}`
    : (quoted[0] ?? '');
}

/**
 * The mode `name` stands for (a mode or an alias), when it is one of `allowed`;
 * `fallback` when `name` is unset. Throws WorkloadModeError otherwise.
 */
export function parseWorkloadMode(
  name: string | undefined,
  allowed: readonly WorkloadMode[] = WORKLOAD_MODES,
  fallback: WorkloadMode = 'pebble',
): WorkloadMode {
  if (name === undefined) return fallback;
  const mode = WORKLOAD_MODE_ALIASES[name] ?? name;
  const found = allowed.find((m) => m === mode);
  if (!found) throw new WorkloadModeError(name, allowed);
  return found;
}

export interface WorkloadSettings {
  /** pebble, pebble-relay: Pebble's unix socket here, e.g. `/charm/containers/synapse/pebble.socket`. */
  pebbleSocket?: string;
  /**
   * pebble: the socket's directory as the workload container sees it (Juju mounts
   * it at `/charm/container`); default: the same path (one host). This side of it
   * is always the socket's own directory.
   */
  workloadSharedDir?: string;
  /** pebble: told why, when a bulk stream goes through the relay after all. */
  onDirectStreamUnavailable?: DirectStreamUnavailable;
  /** kubernetes: the unit whose pod to exec into (KubernetesWorkload.fromCluster). */
  kubernetes?: FromClusterOptions;
}

/**
 * The Workload for a mode that needs no module loaded: pebble, pebble-relay
 * (a PebbleWorkload, which also manages the Pebble layer) or local. Throws
 * ConfigError when a setting the mode needs is missing.
 */
export function createWorkload(
  mode: 'pebble' | 'pebble-relay',
  settings: WorkloadSettings,
): PebbleWorkload;
export function createWorkload(
  mode: Exclude<WorkloadMode, 'kubernetes'>,
  settings?: WorkloadSettings,
): Workload;
export function createWorkload(
  mode: Exclude<WorkloadMode, 'kubernetes'>,
  settings: WorkloadSettings = {},
): Workload {
  if (mode === 'local') return new LocalWorkload();
  const socketPath = settings.pebbleSocket;
  if (!socketPath) throw new ConfigError(`the ${mode} transport needs Pebble's socket`);
  if (mode === 'pebble-relay') return new PebbleWorkload({ socketPath });
  const local = path.dirname(socketPath);
  return new PebbleWorkload({
    socketPath,
    sharedDir: { local, workload: settings.workloadSharedDir ?? local },
    onDirectStreamUnavailable: settings.onDirectStreamUnavailable,
  });
}

/**
 * The Workload for any mode; the Kubernetes client (a large module that most
 * charm hooks never need) is loaded only for `kubernetes`. Throws ConfigError
 * when a setting the mode needs is missing, and what KubernetesWorkload.fromCluster
 * throws outside a pod.
 */
export async function loadWorkload(
  mode: WorkloadMode,
  settings: WorkloadSettings = {},
): Promise<Workload> {
  if (mode !== 'kubernetes') return createWorkload(mode, settings);
  if (!settings.kubernetes) {
    throw new ConfigError('the kubernetes transport needs the unit to exec into');
  }
  const { KubernetesWorkload } = await import('./kubernetes');
  return KubernetesWorkload.fromCluster(settings.kubernetes);
}
