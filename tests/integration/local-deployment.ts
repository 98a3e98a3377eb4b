/**
 * The `local` Deployment: what `npm run pack` writes (scripts/pack-charm.mjs), unpacked
 * and run by its own `dispatch` and bundled Node under the fake hook tools
 * (tests/support/juju-harness.ts), against a real Pebble running the real Synapse as uid
 * 991 (tests/support/real-synapse.ts) and a real MinIO (tests/support/peers.ts).
 *
 * Juju's part is played the way Juju plays it: deploy runs the hooks a new sidecar unit
 * gets, a config change runs config-changed, granting a secret runs nothing, waiting for a
 * status runs update-status, an action runs its dispatch. There is no Charmhub here, so
 * deployCharmhub, integrate and trust throw: the scenario configures S3 from config and
 * secrets on this backend.
 */
import { execFile, execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { assertFreshBuild, REPO_ROOT } from '../support/juju-harness';
import { peerPath, startMinio, tmpDir, type MinioPeer, type TmpDir } from '../support/peers';
import { SYNAPSE_URL, startRealSynapseUnit, type RealSynapseUnit } from '../support/real-synapse';
import { extractZip } from '../support/unzip';
import {
  statusMatches,
  type ActionOutcome,
  type Deployment,
  type ExecResult,
  type Params,
  type S3Target,
  type Status,
} from './deployment';

/** The hooks Juju runs on a new sidecar unit that is the leader, in its order. */
const DEPLOY_HOOKS = [
  'data-storage-attached',
  'install',
  'leader-elected',
  'config-changed',
  'start',
  'synapse-pebble-ready',
];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class LocalDeployment implements Deployment {
  readonly backend = 'local' as const;
  readonly app = 'synapse';
  readonly unit = 'synapse/0';
  readonly hasCharmhub = false;
  private minio?: MinioPeer;
  private synapse?: RealSynapseUnit;
  private charm?: TmpDir;
  private readonly secrets = new Map<string, string>();

  get dataDir(): string {
    return this.running().dataDir;
  }

  async prepareS3(): Promise<S3Target> {
    this.minio ??= await startMinio();
    return {
      endpoint: this.minio.endpoint,
      bucket: this.minio.bucket,
      accessKey: this.minio.accessKeyId,
      secretKey: this.minio.secretAccessKey,
    };
  }

  async deploy(config: Record<string, string>): Promise<void> {
    assertFreshBuild();
    this.charm = await tmpDir('integration-charm');
    const charmFile = path.join(this.charm.path, 'synapse_amd64.charm');
    execFileSync('node', [path.join(REPO_ROOT, 'scripts', 'pack-charm.mjs'), '--out', charmFile], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const charmDir = path.join(this.charm.path, 'charm');
    extractZip(charmFile, charmDir);
    const { 'server-name': serverName, ...rest } = config;
    this.synapse = await startRealSynapseUnit({
      serverName,
      charmDir,
      configure: (h) => h.setConfig(rest),
    });
    for (const hook of DEPLOY_HOOKS) {
      const r = await this.synapse.h.hook(hook);
      if (r.exitCode !== 0) throw new Error(`hook ${hook} exited ${r.exitCode}: ${r.stderr}`);
    }
  }

  deployCharmhub(name: string): Promise<void> {
    return Promise.reject(new Error(`no Charmhub on the local backend (${name})`));
  }

  async setConfig(values: Record<string, string | null>, app = this.app): Promise<void> {
    this.ownApp(app);
    const h = this.running().h;
    h.setConfig(values);
    const r = await h.hook('config-changed');
    if (r.exitCode !== 0) throw new Error(`config-changed exited ${r.exitCode}: ${r.stderr}`);
  }

  async addSecret(name: string, content: Record<string, string>): Promise<string> {
    if (this.secrets.has(name)) throw new Error(`secret ${name} already exists`);
    const uri = this.running().h.addSecret(content, { granted: false });
    this.secrets.set(name, uri);
    return uri;
  }

  async grantSecret(name: string): Promise<void> {
    const uri = this.secrets.get(name);
    if (!uri) throw new Error(`no secret named ${name}`);
    this.running().h.grantSecret(uri); // Juju runs no hook on a grant
  }

  integrate(endpoint: string, remote: string): Promise<void> {
    return Promise.reject(
      new Error(`no ${remote} to integrate ${endpoint} with on the local backend`),
    );
  }

  trust(): Promise<void> {
    return Promise.reject(new Error('no Kubernetes API on the local backend: nothing to trust'));
  }

  async runAction(name: string, params: Params = {}, unit = this.unit): Promise<ActionOutcome> {
    this.ownApp(unit.split('/')[0]);
    const r = await this.running().h.action(name, params);
    return { results: r.results, failed: r.failed, message: r.failMessage, logs: r.logs };
  }

  /** Through the real Pebble's exec API (the `pebble exec` client), as the charm's workload runs. */
  exec(argv: string[]): Promise<ExecResult> {
    const env = { ...process.env, PEBBLE: this.running().pebble.dir };
    return new Promise((resolve, reject) => {
      execFile(peerPath('pebble'), ['exec', '--', ...argv], { env }, (err, stdout, stderr) => {
        const code = err ? (err as { code?: unknown }).code : 0;
        if (typeof code !== 'number') return reject(err ?? new Error('pebble exec failed'));
        resolve({ exitCode: code, stdout, stderr });
      });
    });
  }

  async status(): Promise<Status> {
    const unit = this.running().h.state.status.unit;
    return unit ?? { status: 'unknown', message: '' };
  }

  async waitForStatus(
    want: { status: string; message?: string | RegExp },
    timeoutMs = 120_000,
  ): Promise<Status> {
    const deadline = Date.now() + timeoutMs;
    let last = await this.status();
    while (!statusMatches(last, want)) {
      if (Date.now() > deadline) {
        throw new Error(
          `unit status is ${JSON.stringify(last)}, not ${String(want.message ?? want.status)}`,
        );
      }
      await sleep(1000);
      await this.running().h.hook('update-status'); // what Juju runs every few minutes
      last = await this.status();
    }
    return last;
  }

  async synapseUrl(): Promise<string> {
    return SYNAPSE_URL;
  }

  async destroy(): Promise<void> {
    await this.synapse?.stop();
    await this.minio?.stop();
    await this.charm?.cleanup();
  }

  private running(): RealSynapseUnit {
    if (!this.synapse) throw new Error('not deployed yet');
    return this.synapse;
  }

  private ownApp(app: string): void {
    if (app !== this.app)
      throw new Error(`only ${this.app} is deployed on the local backend, not ${app}`);
  }
}
