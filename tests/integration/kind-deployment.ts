/**
 * The `kind` Deployment: a Juju 3.6 controller bootstrapped on a Kind cluster (`juju
 * add-k8s` + `juju bootstrap`), driven through the `juju` CLI with `--format json` and
 * `kubectl`. .github/workflows/integration.yaml sets it up; README "Integration tests"
 * says how to run it on one's own machine. It has not run on this project's own CI
 * machines (they have no container engine).
 *
 * Environment (defaults in brackets):
 *  - INTEGRATION_MODEL [synapse-it]: the Juju model (and so the Kubernetes namespace);
 *    added when it does not exist, never destroyed (the workflow collects logs from it).
 *  - INTEGRATION_CHARM [./synapse_amd64.charm]: what `npm run pack` wrote.
 *  - INTEGRATION_SYNAPSE_IMAGE [metadata.yaml's upstream-source]: the synapse-image resource.
 *  - INTEGRATION_STORAGE [10G]: the data storage's size.
 *  - INTEGRATION_S3_NAMESPACE [minio], INTEGRATION_S3_SERVICE [minio], INTEGRATION_S3_PORT
 *    [9000]: a MinIO Service in the cluster; the charm reaches it at
 *    http://SERVICE.NAMESPACE.svc.cluster.local:PORT, this process through kubectl port-forward.
 *  - INTEGRATION_S3_ACCESS_KEY, INTEGRATION_S3_SECRET_KEY: MinIO's root user (required).
 *  - INTEGRATION_S3_BUCKET [synapse-backups]: created here if missing.
 * Secret contents and action parameters go through 0600 files (--file, --params), never argv;
 * with the juju snap those files live under ~/snap/juju/common (the snap cannot read /tmp).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { parse as parseYaml } from 'yaml';
import { REPO_ROOT } from '../support/juju-harness';
import {
  statusMatches,
  type ActionOutcome,
  type Deployment,
  type ExecResult,
  type Params,
  type S3Target,
  type Status,
} from './deployment';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Keys Juju adds to an action's results (not the charm's action-set). */
const JUJU_RESULT_KEYS = new Set(['return-code', 'Code', 'Stdout', 'Stderr', 'stdout', 'stderr']);

export interface CommandResult extends ExecResult {
  command: string;
}

/** Runs a program (no shell) and collects its output; never throws on a non-zero exit. */
export function run(
  program: string,
  args: string[],
  timeoutMs = 30 * 60_000,
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    execFile(
      program,
      args,
      { maxBuffer: 64 * 1024 * 1024, timeout: timeoutMs },
      (err, stdout, stderr) => {
        const code = err ? (err as { code?: unknown }).code : 0;
        if (err && typeof code !== 'number') return reject(err);
        resolve({
          command: [program, ...args].join(' '),
          exitCode: code as number,
          stdout,
          stderr,
        });
      },
    );
  });
}

async function check(program: string, args: string[]): Promise<string> {
  const r = await run(program, args);
  if (r.exitCode !== 0) throw new Error(`${r.command} exited ${r.exitCode}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** One unit's entry in `juju run --format json`'s output. */
interface JujuTask {
  status?: string;
  message?: string;
  results?: Record<string, unknown>;
  log?: string[];
}

/** Turns `juju run --format json`'s stdout into an ActionOutcome (exported for tests). */
export function parseJujuRun(stdout: string): ActionOutcome {
  const parsed = JSON.parse(stdout) as Record<string, JujuTask>;
  const task = Object.values(parsed)[0];
  if (!task) throw new Error(`juju run printed no task: ${stdout}`);
  const results: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(task.results ?? {})) {
    if (!JUJU_RESULT_KEYS.has(k)) results[k] = v;
  }
  // Log lines are "<date> <time> <zone> <message>".
  const logs = (task.log ?? []).map((l) =>
    l.replace(/^\d{4}-\d\d-\d\d[T ][\d:.]+\S*( [+-]\d{4})?( \w+)? /, ''),
  );
  // A charm whose action exits non-zero without action-fail also failed (jubilant's rule).
  const code = Number(task.results?.['return-code'] ?? 0);
  const failed = task.status !== 'completed' || code !== 0;
  const why = task.message || String(task.results?.stderr ?? '') || `exit ${code}`;
  return { results, failed, message: failed ? why : undefined, logs };
}

export class KindDeployment implements Deployment {
  readonly backend = 'kind' as const;
  readonly app = 'synapse';
  readonly unit = 'synapse/0';
  readonly dataDir = '/data';
  readonly hasCharmhub = true;
  readonly model = process.env.INTEGRATION_MODEL ?? 'synapse-it';
  private readonly files = fs.mkdtempSync(path.join(jujuReadableDir(), 'integration-kind-'));
  private forwards = new Map<string, { child: ChildProcess; port: number }>();

  async prepareS3(): Promise<S3Target> {
    const namespace = process.env.INTEGRATION_S3_NAMESPACE ?? 'minio';
    const service = process.env.INTEGRATION_S3_SERVICE ?? 'minio';
    const port = Number(process.env.INTEGRATION_S3_PORT ?? 9000);
    const accessKey = requiredEnv('INTEGRATION_S3_ACCESS_KEY');
    const secretKey = requiredEnv('INTEGRATION_S3_SECRET_KEY');
    const bucket = process.env.INTEGRATION_S3_BUCKET ?? 'synapse-backups';
    const local = await this.forward(namespace, `svc/${service}`, port);
    const client = new S3Client({
      endpoint: `http://127.0.0.1:${local}`,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: accessKey, secretAccessKey: secretKey },
    });
    try {
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
    } catch (err) {
      if ((err as { name?: string }).name !== 'BucketAlreadyOwnedByYou') throw err;
    } finally {
      client.destroy();
    }
    const endpoint = `http://${service}.${namespace}.svc.cluster.local:${port}`;
    return { endpoint, bucket, accessKey, secretKey };
  }

  async deploy(config: Record<string, string>): Promise<void> {
    const models = JSON.parse(await check('juju', ['models', '--format', 'json'])) as {
      models?: { 'short-name'?: string; name?: string }[];
    };
    const names = (models.models ?? []).map((m) => m['short-name'] ?? m.name);
    if (!names.includes(this.model)) await check('juju', ['add-model', this.model]);
    const charm = process.env.INTEGRATION_CHARM ?? path.join(REPO_ROOT, 'synapse_amd64.charm');
    const args = ['deploy', '-m', this.model, charm, this.app];
    args.push('--resource', `synapse-image=${synapseImage()}`);
    args.push('--storage', `data=${process.env.INTEGRATION_STORAGE ?? '10G'}`);
    args.push('--config', this.yamlFile({ [this.app]: config }));
    await check('juju', args);
    await this.settle(this.app, 15 * 60_000);
  }

  async deployCharmhub(
    name: string,
    options: { channel: string; config: Record<string, string> },
  ): Promise<void> {
    const args = ['deploy', '-m', this.model, name, '--channel', options.channel];
    args.push('--config', this.yamlFile({ [name]: options.config }));
    await check('juju', args);
    await this.settle(name, 10 * 60_000);
  }

  async setConfig(values: Record<string, string | null>, app = this.app): Promise<void> {
    const set = Object.entries(values).filter(([, v]) => v !== null);
    const reset = Object.entries(values)
      .filter(([, v]) => v === null)
      .map(([k]) => k);
    if (set.length > 0) {
      await check('juju', ['config', '-m', this.model, app, ...set.map(([k, v]) => `${k}=${v}`)]);
    }
    if (reset.length > 0) {
      await check('juju', ['config', '-m', this.model, app, '--reset', reset.join(',')]);
    }
    await this.settle(app);
  }

  async addSecret(name: string, content: Record<string, string>): Promise<string> {
    const out = await check('juju', [
      'add-secret',
      '-m',
      this.model,
      name,
      '--file',
      this.yamlFile(content),
    ]);
    const uri = /secret:\S+/.exec(out)?.[0];
    if (!uri) throw new Error(`juju add-secret printed no URI: ${out}`);
    return uri;
  }

  async grantSecret(name: string): Promise<void> {
    await check('juju', ['grant-secret', '-m', this.model, name, this.app]);
  }

  async integrate(endpoint: string, remote: string): Promise<void> {
    await check('juju', ['integrate', '-m', this.model, `${this.app}:${endpoint}`, remote]);
    await this.settle(this.app);
  }

  async trust(): Promise<void> {
    await check('juju', ['trust', '-m', this.model, this.app, '--scope=cluster']);
    await this.settle(this.app);
  }

  async runAction(name: string, params: Params = {}, unit = this.unit): Promise<ActionOutcome> {
    const args = Object.keys(params).length > 0 ? ['--params', this.yamlFile(params)] : [];
    return this.runActionArgs(name, args, unit);
  }

  /** `juju run <unit> <action> ARGS` as typed (key=value arguments are parsed as YAML by Juju). */
  async runActionArgs(name: string, extra: string[], unit = this.unit): Promise<ActionOutcome> {
    const args = ['run', '-m', this.model, unit, name, '--format', 'json', '--wait', '30m'];
    const r = await run('juju', [...args, ...extra]);
    if (!r.stdout.trim().startsWith('{')) {
      throw new Error(`${r.command} exited ${r.exitCode} without a result: ${r.stderr.trim()}`);
    }
    return parseJujuRun(r.stdout);
  }

  exec(argv: string[]): Promise<ExecResult> {
    const pod = `${this.app}-${this.unit.split('/')[1]}`;
    return run('kubectl', ['exec', '-n', this.model, pod, '-c', 'synapse', '--', ...argv]);
  }

  async status(): Promise<Status> {
    const s = await this.jujuStatus();
    const unit = s.applications?.[this.app]?.units?.[this.unit]?.['workload-status'];
    return { status: unit?.current ?? 'unknown', message: unit?.message ?? '' };
  }

  async waitForStatus(
    want: { status: string; message?: string | RegExp },
    timeoutMs = 10 * 60_000,
  ): Promise<Status> {
    const deadline = Date.now() + timeoutMs;
    let last = await this.status();
    while (!statusMatches(last, want)) {
      if (Date.now() > deadline) {
        throw new Error(
          `unit status is ${JSON.stringify(last)}, not ${String(want.message ?? want.status)}`,
        );
      }
      await sleep(5000);
      last = await this.status();
    }
    return last;
  }

  async synapseUrl(): Promise<string> {
    const pod = `pod/${this.app}-${this.unit.split('/')[1]}`;
    return `http://127.0.0.1:${await this.forward(this.model, pod, 8008)}`;
  }

  async destroy(): Promise<void> {
    for (const { child } of this.forwards.values()) child.kill('SIGTERM');
    this.forwards.clear();
    fs.rmSync(this.files, { recursive: true, force: true });
  }

  // ------------------------------------------------------------------ helpers

  private async jujuStatus(): Promise<JujuStatus> {
    return JSON.parse(
      await check('juju', ['status', '-m', this.model, '--format', 'json']),
    ) as JujuStatus;
  }

  /**
   * Waits until every unit of `app` has an idle agent for three polls in a row (a config
   * change or a new relation queues hooks the agent runs shortly after).
   */
  private async settle(app: string, timeoutMs = 5 * 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let idle = 0;
    let last = '';
    while (idle < 3) {
      if (Date.now() > deadline) throw new Error(`${app} did not settle: ${last}`);
      await sleep(3000);
      const units = Object.values((await this.jujuStatus()).applications?.[app]?.units ?? {});
      last = JSON.stringify(units.map((u) => [u['juju-status']?.current, u['workload-status']]));
      const ready = units.length > 0 && units.every((u) => u['juju-status']?.current === 'idle');
      idle = ready ? idle + 1 : 0;
    }
  }

  /** A live `kubectl port-forward` to `target`'s port; returns the local port. */
  private async forward(namespace: string, target: string, port: number): Promise<number> {
    const key = `${namespace}/${target}:${port}`;
    const existing = this.forwards.get(key);
    if (existing && existing.child.exitCode === null && existing.child.signalCode === null) {
      return existing.port;
    }
    const child = spawn('kubectl', ['port-forward', '-n', namespace, target, `:${port}`], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const local = await new Promise<number>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(
        () => reject(new Error(`kubectl port-forward ${key}: ${out}`)),
        60_000,
      );
      const onData = (c: Buffer) => {
        out += c.toString('utf8');
        const m = /Forwarding from 127\.0\.0\.1:(\d+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`kubectl port-forward ${key} exited ${code}: ${out}`));
      });
    });
    this.forwards.set(key, { child, port: local });
    return local;
  }

  /** Writes `value` as YAML (JSON is YAML) to a fresh 0600 file; returns its path. */
  private yamlFile(value: unknown): string {
    const file = path.join(this.files, `${randomBytes(6).toString('hex')}.yaml`);
    fs.writeFileSync(file, JSON.stringify(value), { mode: 0o600 });
    return file;
  }
}

interface JujuStatus {
  applications?: Record<
    string,
    {
      units?: Record<
        string,
        {
          'workload-status'?: { current?: string; message?: string };
          'juju-status'?: { current?: string };
        }
      >;
    }
  >;
}

/**
 * Where the juju CLI can read the files given to it: a strictly confined snap cannot read
 * /tmp, so under ~/snap/juju/common then (as jubilant does).
 */
function jujuReadableDir(): string {
  const found = (process.env.PATH ?? '')
    .split(':')
    .map((dir) => path.join(dir, 'juju'))
    .find((file) => fs.existsSync(file));
  const resolved = found ? fs.realpathSync(found) : '';
  if (!found?.includes('/snap/') && !resolved.includes('/snap/')) return os.tmpdir();
  const dir = path.join(os.homedir(), 'snap', 'juju', 'common');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

function requiredEnv(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (see README, "Integration tests")`);
  return value;
}

/** The synapse-image resource: INTEGRATION_SYNAPSE_IMAGE, else the charm's pin. */
export function synapseImage(): string {
  if (process.env.INTEGRATION_SYNAPSE_IMAGE) return process.env.INTEGRATION_SYNAPSE_IMAGE;
  const metadata = parseYaml(fs.readFileSync(path.join(REPO_ROOT, 'metadata.yaml'), 'utf8')) as {
    resources: Record<string, { 'upstream-source': string }>;
  };
  return metadata.resources['synapse-image']['upstream-source'];
}
