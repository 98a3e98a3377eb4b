/**
 * What the integration scenario (scenario.test.ts) needs of a place the charm is deployed:
 * the Juju operations an operator runs, Pebble/Kubernetes exec into the workload, and
 * Synapse's HTTP API. Two implementations:
 *  - `local` (local-deployment.ts): the packed charm under the fake hook tools, a real
 *    Pebble, the real Synapse (matrix-synapse from PyPI, run as uid 991) and MinIO, all on
 *    this host. It runs in .ci/run.
 *  - `kind` (kind-deployment.ts): a Juju 3.6 controller on a Kind cluster, driven through
 *    the `juju` CLI (`--format json`) and `kubectl`. It runs in
 *    .github/workflows/integration.yaml.
 * The backend comes from INTEGRATION_BACKEND, which scripts/test-integration.mjs sets from
 * `npm run test:integration -- --backend kind|local` (default local).
 */

export type Backend = 'local' | 'kind';

/** A unit or application status, as `juju status` shows it. */
export interface Status {
  status: string;
  message: string;
}

/** How an action ended, as `juju run ... --format json` reports it. */
export interface ActionOutcome {
  /** The action's results (action-set keys; dotted keys nest). Juju's own keys left out. */
  results: Record<string, unknown>;
  failed: boolean;
  /** action-fail's message, when failed. */
  message?: string;
  /** action-log lines, in order. */
  logs: string[];
}

/** A command's outcome in the workload container. */
export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** The S3 store the scenario backs up to. */
export interface S3Target {
  /** The endpoint as the charm reaches it (from its pod on kind). */
  endpoint: string;
  bucket: string;
  accessKey: string;
  secretKey: string;
}

/** Action parameters (strings, booleans and numbers, as actions.yaml types them). */
export type Params = Record<string, string | boolean | number>;

export interface Deployment {
  readonly backend: Backend;
  /** The charm's application name (synapse). */
  readonly app: string;
  /** Its unit (synapse/0). */
  readonly unit: string;
  /** Synapse's data directory as the workload container sees it (/data on kind). */
  readonly dataDir: string;
  /** Whether deployCharmhub works (kind: yes; local: there is no Charmhub here). */
  readonly hasCharmhub: boolean;

  /**
   * Makes the S3 store ready (local: starts MinIO; kind: creates the bucket in the
   * cluster's MinIO) and says how the charm reaches it.
   */
  prepareS3(): Promise<S3Target>;
  /**
   * Deploys the charm (its image resource and data storage) with this config, and
   * lets it settle (install, config-changed, pebble-ready on local).
   */
  deploy(config: Record<string, string>): Promise<void>;
  /** Deploys another charm from Charmhub with config (kind only; local throws). */
  deployCharmhub(
    name: string,
    options: { channel: string; config: Record<string, string> },
  ): Promise<void>;
  /** `juju config <app> k=v ...` (null resets an option to its default). */
  setConfig(values: Record<string, string | null>, app?: string): Promise<void>;
  /** `juju add-secret <name> k=v ...` (content from a file, never argv); returns its URI. */
  addSecret(name: string, content: Record<string, string>): Promise<string>;
  /** `juju grant-secret <name> <app>`. */
  grantSecret(name: string): Promise<void>;
  /** `juju integrate <app>:<endpoint> <remote>` and let the hooks run. */
  integrate(endpoint: string, remote: string): Promise<void>;
  /** `juju trust <app> --scope=cluster` (kind only; local throws). */
  trust(): Promise<void>;
  /** `juju run <unit> <action> ...` (params from a file on kind); never throws on failure. */
  runAction(name: string, params?: Params, unit?: string): Promise<ActionOutcome>;
  /** Runs argv in the workload container (Pebble exec on local, kubectl exec on kind). */
  exec(argv: string[]): Promise<ExecResult>;
  /** The unit's workload status now. */
  status(): Promise<Status>;
  /**
   * Waits until the unit's workload status satisfies `want` (status equal, message
   * equal or matching), at most timeoutMs; throws with the last status seen.
   */
  waitForStatus(
    want: { status: string; message?: string | RegExp },
    timeoutMs?: number,
  ): Promise<Status>;
  /** Synapse's client-server API base URL, reachable from this process. */
  synapseUrl(): Promise<string>;
  /** Removes everything deploy made. Idempotent. */
  destroy(): Promise<void>;
}

/** The backend named by INTEGRATION_BACKEND (scripts/test-integration.mjs sets it). */
export function selectedBackend(): Backend {
  const value = process.env.INTEGRATION_BACKEND ?? 'local';
  if (value !== 'local' && value !== 'kind') {
    throw new Error(`INTEGRATION_BACKEND must be local or kind, not "${value}"`);
  }
  return value;
}

/** Whether a status satisfies a waitForStatus `want`. */
export function statusMatches(
  s: Status,
  want: { status: string; message?: string | RegExp },
): boolean {
  if (s.status !== want.status) return false;
  if (want.message === undefined) return true;
  return typeof want.message === 'string'
    ? s.message === want.message
    : want.message.test(s.message);
}
