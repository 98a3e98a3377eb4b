/**
 * The fault suite's test bed: the built charm run through its dispatch (fake
 * hook tools recording every call), a real Pebble behind a recording proxy
 * (tests/support/pebble-proxy.ts) with a stand-in `synapse` service, and a real
 * MinIO behind a fault-injecting proxy (tests/support/faulty-proxy.ts).
 *
 * `run()` runs an action while sampling every process's command line;
 * `afterFault()` checks what every case promises: nothing that looks complete
 * without a manifest, no multipart upload left, the live data unchanged,
 * Synapse running, and no secret anywhere it could leak.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { inspect } from 'node:util';
import { ListMultipartUploadsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { BackupEngine } from '../../../src/backup/engine';
import { parseS3Settings } from '../../../src/s3/settings';
import { LocalWorkload } from '../../../src/workload/local';
import { PebbleWorkload } from '../../../src/workload/pebble';
import { startFaultyProxy, type FaultyProxy } from '../../support/faulty-proxy';
import {
  findSecretLeaks,
  JujuHarness,
  type ActionResult,
  type DispatchResult,
} from '../../support/juju-harness';
import { startPebbleProxy, type PebbleProxy } from '../../support/pebble-proxy';
import { startMinio, startPebble, type MinioPeer, type PebblePeer } from '../../support/peers';
import { environHas, ProcSampler, type ProcSample } from '../../support/proc-sampler';
import { makeSynapseTree, treeHash } from '../../support/synapse-tree';
import { observed } from './report';

export const PREFIX = 'synapse';

export interface BedOptions {
  /** Run Pebble (and so tar and every workload command) as this uid. */
  pebbleUid?: number;
  /** Synapse's data dir (default: inside the harness's directory). */
  dataDir?: string;
  mediaFiles?: number;
  /** A sparse, zero-filled file of this size in local media: makes backups multipart. */
  blobBytes?: number;
}

export interface Run {
  result: ActionResult;
  proc: ProcSample;
  /** Exec requests, and bytes (bodies, websocket payloads), the charm sent to Pebble. */
  pebble: { execs: number; bytes: number };
}

export interface Before {
  complete: string[];
  tree: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Waits until `condition` holds (polled every 50 ms), or rejects after
 * `timeoutMs` naming `what`: no fault choreography can hang the suite.
 */
export async function until(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(50);
  }
}

/**
 * What a run says when its connection to Pebble went while `command` ran: a
 * websocket closed early or the HTTP connection dropped; after a restart, also
 * what the new Pebble says of a change it does not know.
 */
export function pebbleLost(command: string, restarted = false): RegExp {
  const reasons = [
    'the (stdout|stderr) websocket closed \\(code \\d+\\) before the end of the output; did Pebble stop or the connection drop\\?',
    'lost the connection to Pebble at .*',
    ...(restarted ? ['Pebble reports: .*'] : []),
  ];
  return new RegExp(`^cannot run "${command}" in the workload: (${reasons.join('|')})$`);
}

/** Resolves as `promise` does, or rejects after `timeoutMs` naming `what`. */
export function within<T>(what: string, promise: Promise<T>, timeoutMs = 60_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export class FaultBed {
  /** Secrets beyond the passphrase and MinIO's secret key (e.g. a wrong one a case used). */
  readonly extraSecrets: string[] = [];

  private constructor(
    readonly minio: MinioPeer,
    readonly s3: FaultyProxy,
    readonly pebble: PebblePeer,
    readonly pebbleProxy: PebbleProxy,
    readonly h: JujuHarness,
    readonly passphrase: string,
    readonly credentialsUri: string,
    readonly passphraseUri: string,
  ) {}

  static async start(options: BedOptions = {}): Promise<FaultBed> {
    const minio = await startMinio();
    const s3 = await startFaultyProxy(minio.endpoint);
    const pebble = await startPebble({ uid: options.pebbleUid });
    const pebbleProxy = await startPebbleProxy(
      pebble.socketPath,
      path.join(pebble.dir, 'proxy.socket'),
    );
    const h = await JujuHarness.create({
      pebbleSocket: pebbleProxy.socketPath,
      dataDir: options.dataDir,
    });
    await makeSynapseTree(h.dataDir, { mediaFiles: options.mediaFiles ?? 6 });
    if (options.blobBytes) {
      const blob = path.join(h.dataDir, 'media_store/local_content/big/blob');
      await fsp.mkdir(path.dirname(blob), { recursive: true });
      await fsp.writeFile(blob, '');
      await fsp.truncate(blob, options.blobBytes);
    }
    if (options.pebbleUid !== undefined) {
      // Synapse's files belong to the user the workload runs as.
      execFileSync('chown', ['-R', `${options.pebbleUid}:${options.pebbleUid}`, h.dataDir]);
    }
    const credentialsUri = h.addSecret({
      'access-key': minio.accessKeyId,
      'secret-key': minio.secretAccessKey,
    });
    const passphrase = `fault-suite ${randomBytes(12).toString('base64')}`;
    const passphraseUri = h.addSecret({ passphrase });
    const bed = new FaultBed(
      minio,
      s3,
      pebble,
      pebbleProxy,
      h,
      passphrase,
      credentialsUri,
      passphraseUri,
    );
    h.setConfig({
      'server-name': 'example.org',
      's3-endpoint': s3.endpoint,
      's3-bucket': minio.bucket,
      's3-path': PREFIX,
      's3-uri-style': 'path',
      's3-credentials': credentialsUri,
      'backup-passphrase': passphraseUri,
    });
    pebbleProxy.watchSecrets(bed.secrets());
    await bed.pebbleReady();
    return bed;
  }

  /** Runs pebble-ready (as Juju does when the container (re)starts); Synapse must come up. */
  async pebbleReady(): Promise<DispatchResult> {
    const ready = await this.h.hook('synapse-pebble-ready');
    expect(findSecretLeaks(this.secrets(), ready.calls, [ready])).toEqual([]);
    if (ready.status?.status !== 'active') {
      throw new Error(
        `the bed's charm is not active after pebble-ready: ${JSON.stringify(ready.status)}\n${ready.stderr}`,
      );
    }
    return ready;
  }

  /** The Pebble socket as the charm sees it (its description of the workload names it). */
  get charmSocket(): string {
    return path.join(this.h.containersDir, 'synapse', 'pebble.socket');
  }

  secrets(): string[] {
    return [this.passphrase, this.minio.secretAccessKey, ...this.extraSecrets];
  }

  async stop(): Promise<void> {
    // Stop the stand-in Synapse first: killing Pebble would leave it running, orphaned.
    await new PebbleWorkload({ socketPath: this.pebble.socketPath })
      .stopServices(['synapse'])
      .catch(() => undefined);
    await this.pebbleProxy?.close();
    await this.s3?.close();
    await this.pebble?.stop();
    await this.minio?.stop();
    // What a Pebble killed by a case left running (its services, reparented to init).
    for (const pid of (await fsp.readdir('/proc')).filter((e) => /^\d+$/.test(e))) {
      try {
        const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
        if (stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1] !== '1') continue;
        if (environHas(pid, `PEBBLE=${this.pebble.dir}`)) process.kill(Number(pid), 'SIGKILL');
      } catch {
        // gone, or not ours
      }
    }
  }

  /** An engine straight to MinIO (no proxy, no charm), for checks and fixtures. */
  engine(dataDir = '/nonexistent', minio: MinioPeer = this.minio): BackupEngine {
    return new BackupEngine({
      s3: parseS3Settings({
        bucket: minio.bucket,
        prefix: PREFIX,
        endpoint: minio.endpoint,
        uriStyle: 'path',
        accessKeyId: minio.accessKeyId,
        secretAccessKey: minio.secretAccessKey,
        caChain: minio.caCert,
      }),
      passphrase: this.passphrase,
      workload: new LocalWorkload(),
      dataDir,
    });
  }

  /**
   * Runs an action through dispatch while sampling /proc; `during` runs
   * alongside; `env` is added to the charm's environment for this run.
   */
  async run(
    name: string,
    params: Record<string, unknown> = {},
    during?: () => Promise<void>,
    env: Record<string, string> = {},
  ): Promise<Run> {
    this.pebbleProxy.watchSecrets(this.secrets());
    // Environments are checked below this bed's charm process and its Pebble daemon.
    const state = `FAKE_JUJU_STATE=${path.join(this.h.dir, 'state.json')}`;
    const sampler = new ProcSampler(
      this.secrets(),
      (cmd, pid) =>
        (cmd.includes('build/charm.js') && environHas(pid, state)) ||
        (/^\S*pebble\S* run /.test(cmd) && environHas(pid, `PEBBLE=${this.pebble.dir}`)),
    );
    const execs = this.pebbleProxy.execs.length;
    const bytes = this.pebbleProxy.scannedBytes();
    sampler.start();
    let result: ActionResult;
    let proc: ProcSample;
    try {
      const running = this.h.action(name, params, env);
      const duringDone = during?.().then(
        () => undefined,
        (err: unknown) => err,
      );
      result = await running;
      const duringError = await duringDone;
      if (duringError) {
        const outcome = result.failed
          ? `failed: ${result.failMessage}`
          : `returned ${inspect(result.results)}`;
        throw new Error(`${errorText(duringError)}\n(the ${name} action ${outcome})`);
      }
    } finally {
      proc = sampler.stop();
    }
    const pebble = {
      execs: this.pebbleProxy.execs.length - execs,
      bytes: this.pebbleProxy.scannedBytes() - bytes,
    };
    return { result, proc, pebble };
  }

  /**
   * A case where the charm loses Pebble while `command` runs: `runWith` runs the action and
   * calls the fault it is given at the moment it means (the connection dropped, or with
   * `restart` Pebble killed and restarted). The action must fail naming the loss; after a
   * restart, pebble-ready must bring Synapse back, as Juju runs it when a container restarts.
   */
  async pebbleLostCase(
    command: string,
    restart: boolean,
    runWith: (fault: () => Promise<void>) => Promise<Run>,
  ): Promise<void> {
    const before = await this.before();
    const run = await runWith(async () => {
      if (restart) await this.pebble.restart();
      else this.pebbleProxy.dropAll();
    });
    const msg = FaultBed.failure(run);
    observed(`action failed: ${msg}`);
    expect(msg).toMatch(pebbleLost(command, restart));
    if (restart) {
      // A restarted Pebble has lost the charm's layer, as a restarted container does.
      expect(await this.synapseState()).toBe('(no synapse service)');
      const ready = await this.pebbleReady();
      observed(`synapse after the restart: no service; pebble-ready: ${ready.status?.status}`);
    }
    observed(await this.afterFault(before, [run]));
  }

  /** The id of the backup a create-backup run made; fails the test if the run failed. */
  static succeeded(run: Run): string {
    if (run.result.failed) throw new Error(`create-backup failed: ${run.result.failMessage}`);
    const id = run.result.results['backup-id'] as string;
    expect(id).toMatch(/^\d{14}$/);
    return id;
  }

  /** Verifies a backup straight from MinIO (decrypts it whole, compares with its manifest). */
  async verifyIntact(id: string, minio: MinioPeer = this.minio): Promise<string> {
    const engine = this.engine('/nonexistent', minio);
    try {
      const verified = await engine.verify(id);
      return `verify: ${verified.files} files, SHA-256 matches the manifest`;
    } finally {
      engine.close();
    }
  }

  /** The run's action-fail message; fails the test if the action succeeded. */
  static failure(run: Run): string {
    if (!run.result.failed) {
      throw new Error(`expected the action to fail; it returned ${inspect(run.result.results)}`);
    }
    return run.result.failMessage ?? '';
  }

  async before(minio: MinioPeer = this.minio): Promise<Before> {
    return { complete: await this.completeIds(minio), tree: await treeHash(this.h.dataDir) };
  }

  async completeIds(minio: MinioPeer = this.minio): Promise<string[]> {
    const engine = this.engine('/nonexistent', minio);
    try {
      return (await engine.list()).backups
        .filter((b) => b.status === 'complete')
        .map((b) => b.backupId)
        .sort();
    } finally {
      engine.close();
    }
  }

  /**
   * In-progress multipart uploads: the whole bucket listed without Prefix (as
   * src/s3/store.ts does), and each key uploads were sent for listed by exact
   * key (MinIO lists an upload that began before it restarted only that way).
   */
  async uploads(minio: MinioPeer = this.minio): Promise<string[]> {
    const list = async (Prefix?: string) =>
      (
        await minio.client.send(new ListMultipartUploadsCommand({ Bucket: minio.bucket, Prefix }))
      ).Uploads?.map((u) => u.Key ?? '?') ?? [];
    const keys = minio === this.minio ? [...this.s3.keys] : [];
    const found = [await list(), ...(await Promise.all(keys.map((k) => list(k))))].flat();
    return [...new Set(found)].sort();
  }

  /** Sets the backup-passphrase secret's content. */
  setPassphrase(passphrase: string): void {
    this.h.state.secrets[this.passphraseUri].content = { passphrase };
  }

  /** Sets the content of the s3-credentials secret (h.state is replaced by every dispatch). */
  setCredentials(accessKey: string, secretKey: string): void {
    this.h.state.secrets[this.credentialsUri].content = {
      'access-key': accessKey,
      'secret-key': secretKey,
    };
  }

  async objectKeys(minio: MinioPeer = this.minio): Promise<string[]> {
    const out = await minio.client.send(new ListObjectsV2Command({ Bucket: minio.bucket }));
    return (out.Contents ?? []).map((o) => o.Key ?? '?').sort();
  }

  /** Polls until an upload is in progress; returns its key. */
  async waitForUpload(timeoutMs = 60_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const uploads = await this.uploads();
      if (uploads.length > 0) return uploads[0];
      await sleep(50);
    }
    throw new Error('no multipart upload started');
  }

  /** The pid of this bed's charm process (the dispatch running build/charm.js), if one runs. */
  async dispatchPid(): Promise<number | undefined> {
    const marker = `FAKE_JUJU_STATE=${path.join(this.h.dir, 'state.json')}\0`;
    for (const pid of (await fsp.readdir('/proc')).filter((e) => /^\d+$/.test(e))) {
      try {
        const cmdline = (await fsp.readFile(`/proc/${pid}/cmdline`)).toString();
        if (!cmdline.includes('build/charm.js')) continue;
        if ((await fsp.readFile(`/proc/${pid}/environ`)).toString().includes(marker)) {
          return Number(pid);
        }
      } catch {
        // gone
      }
    }
    return undefined;
  }

  /** `tar --create` processes still running in this bed's data dir (the workload's). */
  async tarsRunning(): Promise<string[]> {
    const found: string[] = [];
    for (const pid of (await fsp.readdir('/proc')).filter((e) => /^\d+$/.test(e))) {
      try {
        const cmdline = (await fsp.readFile(`/proc/${pid}/cmdline`)).toString();
        if (!cmdline.startsWith('tar\0--create\0')) continue;
        if ((await fsp.readlink(`/proc/${pid}/cwd`)) === this.h.dataDir) found.push(pid);
      } catch {
        // gone
      }
    }
    return found;
  }

  /** Waits (up to 20 s) until no tar of this bed runs; fails the test otherwise. */
  async noTarLeft(): Promise<void> {
    const deadline = Date.now() + 20_000;
    while ((await this.tarsRunning()).length > 0) {
      if (Date.now() > deadline) {
        throw new Error(`tar still running in ${this.h.dataDir}: ${await this.tarsRunning()}`);
      }
      await sleep(200);
    }
  }

  /** Direct-output sockets in the directory the charm shares with the workload. */
  directOutputSockets(): string[] {
    return readdirSync(path.dirname(this.charmSocket)).filter((n) =>
      n.startsWith('.synapse-backup-'),
    );
  }

  async synapseState(): Promise<string> {
    const workload = new PebbleWorkload({ socketPath: this.pebble.socketPath });
    const services = await workload.serviceStatus(['synapse']);
    return services[0]?.current ?? '(no synapse service)';
  }

  /**
   * What every case promises, checked after the fault (and any cleanup):
   * every backup listed complete has its manifest and none appeared unless
   * `newComplete` says so; no multipart upload in progress; the live data tree
   * unchanged; Synapse active; no secret in any run's hook-tool calls, output,
   * process command lines or what was sent to Pebble. Returns a summary.
   */
  async afterFault(
    before: Before,
    runs: Run[],
    newComplete: string[] = [],
    minio: MinioPeer = this.minio,
  ): Promise<string> {
    const complete = await this.completeIds(minio);
    const keys = await this.objectKeys(minio);
    for (const id of complete) {
      expect(keys).toContain(`${PREFIX}/${id}.manifest.json`);
    }
    expect(complete).toEqual([...before.complete, ...newComplete].sort());
    const incomplete = keys.filter(
      (k) => k.endsWith('.tar.enc') && !keys.includes(k.replace(/\.tar\.enc$/, '.manifest.json')),
    );
    const uploads = await this.uploads(minio);
    expect(uploads).toEqual([]);
    await this.noTarLeft();
    expect(this.directOutputSockets()).toEqual([]);
    expect(await treeHash(this.h.dataDir)).toBe(before.tree);
    expect(await this.synapseState()).toBe('active');
    const secrets = this.secretsSummary(runs);
    return [
      newComplete.length
        ? `listed complete: ${newComplete.join(', ')} (with manifest)`
        : 'no new complete backup listed',
      incomplete.length ? `${incomplete.length} object(s) without manifest` : undefined,
      'uploads: 0',
      'no tar left',
      'no socket left',
      'tree: unchanged',
      'synapse: active',
      secrets,
    ]
      .filter(Boolean)
      .join(', ');
  }

  /** Asserts that no secret leaked in these runs; returns a summary of what was looked at. */
  secretsSummary(runs: Run[]): string {
    const secrets = this.secrets();
    const leaks = findSecretLeaks(
      secrets,
      runs.flatMap((r) => r.result.calls),
      runs.map((r) => r.result),
    );
    for (const r of runs) {
      const text = JSON.stringify([r.result.results, r.result.failMessage, r.result.logs]);
      for (const s of secrets) if (text.includes(s)) leaks.push('action results or logs');
    }
    expect(leaks).toEqual([]);
    expect(runs.flatMap((r) => r.proc.leaks)).toEqual([]);
    expect(this.pebbleProxy.sightings).toEqual([]);
    // The sampling saw this bed's charm process, so it was looking while the run was in
    // flight, and this bed's Pebble, so the workload's environments were checked too.
    for (const r of runs) {
      const roots = [...r.proc.rootCommands];
      expect(roots.some((c) => c.includes('build/charm.js'))).toBe(true);
      expect(roots.some((c) => /^\S*pebble\S* run /.test(c))).toBe(true);
    }
    const sum = (f: (r: Run) => number) => runs.reduce((n, r) => n + f(r), 0);
    const kib = Math.ceil(sum((r) => r.pebble.bytes) / 1024);
    return `secrets: none in ${sum((r) => r.result.calls.length)} hook-tool calls, ${sum((r) => r.proc.samples)} /proc samples, ${sum((r) => r.pebble.execs)} Pebble execs (${kib} KiB sent to Pebble)`;
  }
}

/** Exception text, cause chain included, for secret checks on in-process errors. */
export function errorText(err: unknown): string {
  return inspect(err, { depth: 8 });
}
