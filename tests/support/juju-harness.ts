/**
 * Runs the charm the way Juju does: the built `dispatch` as a subprocess, in
 * the charm directory, with JUJU_* variables set and fake hook tools first on
 * PATH (tests/support/fake-hook-tools/hook-tool.mjs linked under every tool
 * name). The fakes serve config, secrets, relation data, leadership and
 * action params from a JSON state file and log every call (argv + stdin).
 *
 * The charm's test seams (src/charm/overrides.ts) point it at a Pebble and a
 * data directory on this host; the generate and service commands are the
 * small scripts in tests/support/fake-synapse/.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildSync } from 'esbuild';
import { parse as parseYaml } from 'yaml';
import { freePort, tmpDir } from './peers';

interface ConfigYaml {
  options?: Record<string, { type: string; default?: string | number | boolean | null }>;
}

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const FAKE_TOOL = path.join(__dirname, 'fake-hook-tools', 'hook-tool.mjs');
export const FAKE_SYNAPSE = path.join(__dirname, 'fake-synapse');

export const HOOK_TOOLS = [
  'action-get',
  'action-set',
  'action-log',
  'action-fail',
  'config-get',
  'status-set',
  'juju-log',
  'is-leader',
  'application-version-set',
  'open-port',
  'network-get',
  'state-get',
  'state-set',
  'relation-ids',
  'relation-list',
  'relation-get',
  'relation-set',
  'secret-get',
  'secret-add',
];

export interface ToolCall {
  tool: string;
  argv: string[];
  stdin: string | null;
  exitCode: number;
  stderr?: string;
  dispatch?: string;
  /** Epoch milliseconds when the tool ran. */
  t: number;
}

export interface StatusValue {
  status: string;
  message: string;
}

export interface FakeRelation {
  id: number;
  endpoint: string;
  remoteApp: string;
  remoteUnits: string[];
  data: Record<string, Record<string, string>>;
}

export interface FakeSecret {
  content: Record<string, string>;
  granted: boolean;
  /** Secrets the charm created (secret-add). */
  label?: string;
  owner?: string;
}

export interface FakeJujuState {
  leader: boolean;
  config: Record<string, string | number | boolean>;
  secrets: Record<string, FakeSecret>;
  relations: FakeRelation[];
  action?: {
    params: Record<string, unknown>;
    results: Record<string, unknown>;
    failed: boolean;
    message?: string;
    logs: string[];
  };
  status: { unit?: StatusValue; app?: StatusValue };
  statusHistory?: ({ which: string } & StatusValue)[];
  version?: string;
  openPorts?: string[];
  /** network-get --bind-address (the fake's default: 10.1.2.3). */
  bindAddress?: string;
  unitState?: Record<string, string>;
}

export interface DispatchResult {
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** Hook-tool calls made by this dispatch, in order. */
  calls: ToolCall[];
  /** Unit status after the dispatch. */
  status?: StatusValue;
  /** Every unit status set during this dispatch, in order. */
  statuses: StatusValue[];
  durationMs: number;
}

export interface ActionResult extends DispatchResult {
  results: Record<string, unknown>;
  failed: boolean;
  failMessage?: string;
  logs: string[];
}

export interface HarnessOptions {
  /** Directory holding `dispatch` (default: the repo root, which runs build/charm.js). */
  charmDir?: string;
  unit?: string;
  /** Pebble's socket on this host; absent = no container (Pebble unreachable). */
  pebbleSocket?: string;
  /** Synapse's data directory (default: a fresh temp dir). */
  dataDir?: string;
  generateCommand?: string[];
  serviceCommand?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Synapse's base URL (default: the fake Synapse's HTTP face on a free port). */
  synapseUrl?: string;
}

export class JujuHarness {
  state: FakeJujuState = {
    leader: true,
    config: {},
    secrets: {},
    relations: [],
    status: {},
  };
  readonly calls: ToolCall[] = [];
  readonly dir: string;
  readonly dataDir: string;
  readonly containersDir: string;
  private readonly binDir: string;
  private readonly statePath: string;
  private readonly logPath: string;
  private readonly charmDir: string;
  private readonly unit: string;
  private readonly options: HarnessOptions;
  /** Port of the fake Synapse's HTTP face (the default service command serves it). */
  private synapsePort = 0;
  private nextRelationId = 3;
  private logOffset = 0;

  private constructor(dir: string, options: HarnessOptions) {
    this.dir = dir;
    this.options = options;
    this.unit = options.unit ?? 'synapse/0';
    this.charmDir = options.charmDir ?? REPO_ROOT;
    this.binDir = path.join(dir, 'bin');
    this.statePath = path.join(dir, 'state.json');
    this.logPath = path.join(dir, 'calls.jsonl');
    this.containersDir = path.join(dir, 'containers');
    this.dataDir = options.dataDir ?? path.join(dir, 'data');
  }

  static async create(options: HarnessOptions = {}): Promise<JujuHarness> {
    if (!options.charmDir) assertFreshBuild();
    const tmp = await tmpDir('juju-harness');
    const h = new JujuHarness(tmp.path, options);
    h.synapsePort = await freePort();
    fs.mkdirSync(h.binDir);
    for (const tool of HOOK_TOOLS) fs.symlinkSync(FAKE_TOOL, path.join(h.binDir, tool));
    fs.mkdirSync(path.join(h.containersDir, 'synapse'), { recursive: true });
    if (options.pebbleSocket) h.attachPebble(options.pebbleSocket);
    fs.mkdirSync(h.dataDir, { recursive: true });
    fs.writeFileSync(h.logPath, '');
    // Like Juju, config-get reports options that have a default.
    const configYaml = path.join(h.charmDir, 'config.yaml');
    const declared = (parseYaml(fs.readFileSync(configYaml, 'utf8')) as ConfigYaml).options ?? {};
    for (const [name, option] of Object.entries(declared)) {
      if (option.default !== undefined && option.default !== null) {
        h.state.config[name] = option.default;
      }
    }
    return h;
  }

  /** Points /charm/containers/synapse/pebble.socket at a Pebble on this host. */
  attachPebble(socketPath: string): void {
    const link = path.join(this.containersDir, 'synapse', 'pebble.socket');
    fs.rmSync(link, { force: true });
    fs.symlinkSync(socketPath, link);
  }

  detachPebble(): void {
    fs.rmSync(path.join(this.containersDir, 'synapse', 'pebble.socket'), { force: true });
  }

  // --- model setup ---

  /** Sets config options; null unsets one. */
  setConfig(values: Record<string, string | number | boolean | null>): void {
    for (const [k, v] of Object.entries(values)) {
      if (v === null) delete this.state.config[k];
      else this.state.config[k] = v;
    }
  }

  /** Adds a user secret and returns its URI (like `juju add-secret`). */
  addSecret(content: Record<string, string>, options: { granted?: boolean } = {}): string {
    const uri = `secret:${randomBytes(10).toString('hex')}`;
    this.state.secrets[uri] = { content, granted: options.granted ?? true };
    return uri;
  }

  grantSecret(uri: string): void {
    this.state.secrets[uri].granted = true;
  }

  /** Adds a relation; `providerData` is the remote application's databag. */
  addRelation(
    endpoint: string,
    remoteApp: string,
    providerData: Record<string, string> = {},
  ): FakeRelation {
    const rel: FakeRelation = {
      id: this.nextRelationId++,
      endpoint,
      remoteApp,
      remoteUnits: [`${remoteApp}/0`],
      data: { [remoteApp]: { ...providerData } },
    };
    this.state.relations.push(rel);
    return rel;
  }

  removeRelation(id: number): void {
    this.state.relations = this.state.relations.filter((r) => r.id !== id);
  }

  relation(id: number): FakeRelation {
    const rel = this.state.relations.find((r) => r.id === id);
    if (!rel) throw new Error(`no relation ${id}`);
    return rel;
  }

  // --- running ---

  /** Runs a hook. Relation hooks get JUJU_RELATION*, pebble-ready JUJU_WORKLOAD_NAME. */
  async hook(
    name: string,
    options: { relationId?: number; secretId?: string; env?: Record<string, string> } = {},
  ): Promise<DispatchResult> {
    const env: Record<string, string> = { JUJU_HOOK_NAME: name, ...options.env };
    const relMatch = /^(.+)-relation-(joined|changed|departed|broken|created)$/.exec(name);
    if (relMatch) {
      const rel =
        options.relationId !== undefined
          ? this.relation(options.relationId)
          : this.state.relations.find((r) => r.endpoint === relMatch[1]);
      if (!rel) throw new Error(`no ${relMatch[1]} relation for ${name}`);
      env.JUJU_RELATION = rel.endpoint;
      env.JUJU_RELATION_ID = `${rel.endpoint}:${rel.id}`;
      env.JUJU_REMOTE_APP = rel.remoteApp;
      if (relMatch[2] !== 'broken' && relMatch[2] !== 'created') {
        env.JUJU_REMOTE_UNIT = rel.remoteUnits[0] ?? '';
      }
    }
    const pebble = /^(.+)-pebble-ready$/.exec(name);
    if (pebble) env.JUJU_WORKLOAD_NAME = pebble[1];
    if (options.secretId) {
      env.JUJU_SECRET_ID = options.secretId;
      env.JUJU_SECRET_REVISION = '2';
    }
    return this.dispatch(`hooks/${name}`, env);
  }

  /** Runs an action; `env` overrides the environment (the seams too) for this run only. */
  async action(
    name: string,
    params: Record<string, unknown> = {},
    env: Record<string, string> = {},
  ): Promise<ActionResult> {
    this.state.action = { params, results: {}, failed: false, logs: [] };
    const result = await this.dispatch(`actions/${name}`, {
      ...env,
      JUJU_ACTION_NAME: name,
      JUJU_ACTION_UUID: randomBytes(8).toString('hex'),
    });
    const action = this.state.action;
    return {
      ...result,
      results: action.results,
      failed: action.failed,
      failMessage: action.message,
      logs: action.logs,
    };
  }

  private dispatch(dispatchPath: string, extra: Record<string, string>): Promise<DispatchResult> {
    fs.writeFileSync(this.statePath, JSON.stringify(this.state, null, 2));
    const seams: Record<string, string> = {
      SYNAPSE_CHARM_CONTAINERS_DIR: this.containersDir,
      // Pebble runs on this host: the shared directory has the same path on both sides.
      SYNAPSE_CHARM_WORKLOAD_SHARED_DIR: path.join(this.containersDir, 'synapse'),
      SYNAPSE_CHARM_DATA_DIR: this.dataDir,
      SYNAPSE_CHARM_GENERATE_COMMAND: JSON.stringify(
        this.options.generateCommand ?? [path.join(FAKE_SYNAPSE, 'generate')],
      ),
      SYNAPSE_CHARM_SERVICE_COMMAND:
        this.options.serviceCommand ?? `${path.join(FAKE_SYNAPSE, 'start')} ${this.synapsePort}`,
      SYNAPSE_CHARM_SYNAPSE_URL: this.options.synapseUrl ?? `http://127.0.0.1:${this.synapsePort}`,
      SYNAPSE_CHARM_HEALTH_WAIT_MS: '10000',
    };
    // A clean environment, as Juju gives: nothing from the test process (no AWS_* etc.).
    const env: Record<string, string> = {
      PATH: `${this.binDir}:${process.env.PATH ?? '/usr/bin:/bin'}`,
      HOME: this.dir,
      LANG: 'C.UTF-8',
      JUJU_DISPATCH_PATH: dispatchPath,
      JUJU_UNIT_NAME: this.unit,
      JUJU_MODEL_NAME: 'test-model',
      JUJU_MODEL_UUID: '6a1a2b3c-0000-4000-8000-000000000001',
      JUJU_CHARM_DIR: this.charmDir,
      JUJU_VERSION: '3.6.8',
      FAKE_JUJU_STATE: this.statePath,
      FAKE_JUJU_LOG: this.logPath,
      ...seams,
      ...this.options.env,
      ...extra,
    };
    const started = Date.now();
    const historyBefore = this.state.statusHistory?.length ?? 0;
    return new Promise((resolve, reject) => {
      const child = spawn(path.join(this.charmDir, 'dispatch'), [], {
        cwd: this.charmDir,
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (c: Buffer) => out.push(c));
      child.stderr.on('data', (c: Buffer) => err.push(c));
      const timer = setTimeout(() => child.kill('SIGKILL'), this.options.timeoutMs ?? 180_000);
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.once('close', (code) => {
        clearTimeout(timer);
        this.state = JSON.parse(fs.readFileSync(this.statePath, 'utf8')) as FakeJujuState;
        const calls = this.readNewCalls();
        const history = (this.state.statusHistory ?? []).slice(historyBefore);
        resolve({
          exitCode: code,
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
          calls,
          status: this.state.status.unit,
          statuses: history
            .filter((s) => s.which === 'unit')
            .map(({ status, message }) => ({ status, message })),
          durationMs: Date.now() - started,
        });
      });
    });
  }

  private readNewCalls(): ToolCall[] {
    const text = fs.readFileSync(this.logPath, 'utf8');
    const fresh = text.slice(this.logOffset);
    this.logOffset = text.length;
    const calls = fresh
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as ToolCall);
    this.calls.push(...calls);
    return calls;
  }
}

/**
 * The repo's dispatch runs build/charm.js. When the bundle is missing or older
 * than src/ (someone edited without `npm run build`), rebuild it the way
 * scripts/bundle.mjs does, into a temporary file renamed into place, so that a
 * dispatch running meanwhile in another test worker never reads half a file.
 */
export function assertFreshBuild(): void {
  const bundle = path.join(REPO_ROOT, 'build', 'charm.js');
  const newest = (dir: string): number =>
    fs
      .readdirSync(dir, { withFileTypes: true })
      .map((e) =>
        e.isDirectory()
          ? newest(path.join(dir, e.name))
          : fs.statSync(path.join(dir, e.name)).mtimeMs,
      )
      .reduce((a, b) => Math.max(a, b), 0);
  if (fs.existsSync(bundle) && newest(path.join(REPO_ROOT, 'src')) <= fs.statSync(bundle).mtimeMs) {
    return;
  }
  const tmp = `${bundle}.${process.pid}.tmp`;
  buildSync({
    entryPoints: [path.join(REPO_ROOT, 'src', 'charm', 'main.ts')],
    outfile: tmp,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    legalComments: 'none',
    logLevel: 'error',
  });
  fs.renameSync(tmp, bundle);
}

/**
 * Everywhere a secret must never appear: hook-tool argv and stdin (which
 * covers juju-log, status, action results and action-fail messages) and the
 * charm's own stdout/stderr (exception text). Returns the places it appears.
 */
export function findSecretLeaks(
  secrets: string[],
  calls: ToolCall[],
  outputs: { stdout: string; stderr: string }[] = [],
): string[] {
  const leaks: string[] = [];
  for (const secret of secrets.filter((s) => s.length >= 4)) {
    for (const call of calls) {
      const text = [...call.argv, call.stdin ?? ''].join('\n');
      if (text.includes(secret)) leaks.push(`${call.tool} ${JSON.stringify(call.argv)}`);
    }
    for (const o of outputs) {
      if (o.stdout.includes(secret) || o.stderr.includes(secret)) leaks.push('dispatch output');
    }
  }
  return leaks;
}

/** Renders an action's outcome the way `juju run` shows it, for test logs and reports. */
export function describeAction(name: string, r: ActionResult): string {
  const lines = [`$ juju run synapse/0 ${name}`];
  for (const log of r.logs) lines.push(`  log: ${log}`);
  if (r.failed) lines.push(`Action failed: ${r.failMessage}`);
  const dump = (obj: Record<string, unknown>, indent: string) => {
    for (const [k, v] of Object.entries(obj)) {
      if (v !== null && typeof v === 'object') {
        lines.push(`${indent}${k}:`);
        dump(v as Record<string, unknown>, `${indent}  `);
      } else if (typeof v === 'string' && v.includes('\n')) {
        lines.push(`${indent}${k}: |-`);
        for (const l of v.split('\n')) lines.push(`${indent}  ${l}`);
      } else {
        lines.push(`${indent}${k}: ${String(v)}`);
      }
    }
  };
  dump(r.results, '');
  return lines.join('\n');
}
