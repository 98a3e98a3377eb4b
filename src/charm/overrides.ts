/**
 * The charm's only test seams: where Pebble's socket and Synapse's data live,
 * and which commands the image provides. Juju never sets these variables, so
 * a deployed charm always uses the defaults (the real Juju and image paths);
 * tests set them to run the charm against a Pebble started on the test host.
 *
 *   SYNAPSE_CHARM_CONTAINERS_DIR      default /charm/containers
 *       Juju mounts each workload container's Pebble socket at
 *       <dir>/<container>/pebble.socket in the charm container.
 *   SYNAPSE_CHARM_DATA_DIR            default /data
 *       Synapse's data directory inside the workload (homeserver.yaml, media, signing key).
 *   SYNAPSE_CHARM_GENERATE_COMMAND    default ["/start.py","generate"]
 *       The image's step that writes homeserver.yaml (JSON array of argv).
 *   SYNAPSE_CHARM_SERVICE_COMMAND     default /start.py
 *       The Pebble service command that runs Synapse.
 *   SYNAPSE_CHARM_SYNAPSE_URL         default http://localhost:8008
 *       Synapse's client/admin listener as the charm container and Pebble see
 *       it (the pod shares one network namespace; the image listens on 8008).
 *   SYNAPSE_CHARM_HEALTH_WAIT_MS      default 60000
 *       How long a hook that (re)starts Synapse waits for /health to answer.
 */
import { join } from 'node:path';

export const CONTAINER_NAME = 'synapse';
export const SERVICE_NAME = 'synapse';

export interface Overrides {
  containersDir: string;
  pebbleSocket: string;
  /** The Pebble socket's directory as the workload container sees it (Juju: /charm/container). */
  workloadSharedDir: string;
  dataDir: string;
  configPath: string;
  generateCommand: string[];
  serviceCommand: string;
  /** Base URL of Synapse's HTTP listener, without a trailing slash. */
  synapseUrl: string;
  /** Milliseconds a starting hook waits for /health (0: probe once). */
  healthWaitMs: number;
}

/** Synapse's listener port in the image (ghcr.io/element-hq/synapse: SYNAPSE_HTTP_PORT 8008). */
export const SYNAPSE_PORT = 8008;

type Env = Record<string, string | undefined>;

function parseCommand(raw: string | undefined, fallback: string[], name: string): string[] {
  if (!raw) return fallback;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new Error(`${name} must be a JSON array of strings`);
  }
  if (
    !Array.isArray(parsed) ||
    parsed.length === 0 ||
    !parsed.every((p): p is string => typeof p === 'string')
  ) {
    throw new Error(`${name} must be a non-empty JSON array of strings`);
  }
  return parsed;
}

export function loadOverrides(env: Env = process.env): Overrides {
  const containersDir = env.SYNAPSE_CHARM_CONTAINERS_DIR || '/charm/containers';
  const dataDir = (env.SYNAPSE_CHARM_DATA_DIR || '/data').replace(/\/+$/, '') || '/';
  return {
    containersDir,
    pebbleSocket: join(containersDir, CONTAINER_NAME, 'pebble.socket'),
    workloadSharedDir: env.SYNAPSE_CHARM_WORKLOAD_SHARED_DIR || '/charm/container',
    dataDir,
    configPath: `${dataDir}/homeserver.yaml`,
    generateCommand: parseCommand(
      env.SYNAPSE_CHARM_GENERATE_COMMAND,
      ['/start.py', 'generate'],
      'SYNAPSE_CHARM_GENERATE_COMMAND',
    ),
    serviceCommand: env.SYNAPSE_CHARM_SERVICE_COMMAND || '/start.py',
    synapseUrl: (env.SYNAPSE_CHARM_SYNAPSE_URL || `http://localhost:${SYNAPSE_PORT}`).replace(
      /\/+$/,
      '',
    ),
    healthWaitMs: /^\d+$/.test(env.SYNAPSE_CHARM_HEALTH_WAIT_MS ?? '')
      ? Number(env.SYNAPSE_CHARM_HEALTH_WAIT_MS)
      : 60_000,
  };
}
