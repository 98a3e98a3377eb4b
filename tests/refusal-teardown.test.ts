/**
 * Issue #13, case 10: a restore whose archive the entry checks refuse must tear
 * the extracting tar down, on every transport, every time: a tar left waiting
 * for input kept the CLI from exiting after it printed the refusal (3 of 23
 * runs). Each transport (local, Pebble relay, Pebble direct socket,
 * Kubernetes exec) runs the refused restore 24 times; after each, every
 * command the engine started must have ended (its wait() settles, and no tar
 * extracts into the data dir on this host) and the staging dir must be gone.
 */
import { promises as fsp } from 'node:fs';
import { BackupEngine } from '../src/backup/engine';
import { parseS3Settings } from '../src/s3/settings';
import { LocalWorkload } from '../src/workload/local';
import { KubernetesWorkload } from '../src/workload/kubernetes';
import { PebbleWorkload } from '../src/workload/pebble';
import type { ExecOptions, ExecProcess, ExitStatus, Workload } from '../src/workload/workload';
import { buildTar, encrypt } from './support/backups';
import { type KubeRig, startKubeRig } from './support/kube';
import { MemoryStore } from './support/memory-store';
import { type PebblePeer, describeWithPeers, startPebble, tmpDir } from './support/peers';
import { makeSynapseTree } from './support/synapse-tree';

const PASSPHRASE = 'refusal teardown passphrase';
const RUNS = 24;
/** A generous "does not hang" bound for one command to end after the refusal. */
const ENDS_WITHIN_MS = 30_000;

/** Records every command the engine starts, to check that each one ended. */
class Recording implements Workload {
  readonly description: string;
  readonly started: { command: string[]; proc: ExecProcess }[] = [];
  constructor(private readonly inner: Workload) {
    this.description = inner.description;
  }
  exec(options: ExecOptions): ExecProcess {
    const proc = this.inner.exec(options);
    this.started.push({ command: options.command, proc });
    return proc;
  }
  stopServices = (n: string[]) => this.inner.stopServices(n);
  startServices = (n: string[]) => this.inner.startServices(n);
  serviceStatus = (n: string[]) => this.inner.serviceStatus(n);
}

function endsWithin(what: string, status: Promise<ExitStatus>): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} still runs`)), ENDS_WITHIN_MS);
  });
  return Promise.race([status.catch((err: unknown) => err), bound]).finally(() =>
    clearTimeout(timer),
  );
}

/**
 * A store holding backups `refused-<run>`: some good files, then an absolute
 * path, in frames of varying length, so the refusal lands at varying moments
 * of tar's start (before it, with its first write, later).
 */
async function refusedBackupStore(): Promise<MemoryStore> {
  const store = new MemoryStore();
  for (let run = 0; run < RUNS; run++) {
    const tar = await buildTar([
      { name: 'homeserver.yaml', content: 'server_name: "example.org"\n' },
      ...Array.from({ length: run % 6 }, (_, i) => ({
        name: `media_store/local_content/f${i}`,
        content: 'x'.repeat(700 * (run % 4)),
      })),
      { name: '/tmp/evil', content: 'x' },
    ]);
    const frame = [512, 1024, 4096][run % 3];
    // Only the object (the engine's default prefix): the restore runs without a manifest.
    store.putObject(`backups/refused-${run}.tar.enc`, await encrypt(tar, PASSPHRASE, frame));
  }
  return store;
}

/** Extracting tars on this host (where every test transport runs them) whose command line names `dir`. */
async function extractingTarsIn(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const pid of (await fsp.readdir('/proc')).filter((e) => /^\d+$/.test(e))) {
    const cmdline = await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('tar\0--extract\0') && cmdline.includes(`${dir}/`)) found.push(pid);
  }
  return found;
}

/** Waits (up to the "does not hang" bound) until no tar extracts into `dir`. */
async function noTarLeftIn(dir: string): Promise<void> {
  const deadline = Date.now() + ENDS_WITHIN_MS;
  for (;;) {
    const left = await extractingTarsIn(dir);
    if (left.length === 0) return;
    if (Date.now() > deadline) throw new Error(`tar still extracting into ${dir}: ${left}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function refuseRepeatedly(store: MemoryStore, inner: Workload): Promise<void> {
  const dataDir = (await tmpDir('refusal-live')).path;
  await makeSynapseTree(dataDir, { mediaFiles: 1 });
  const before = (await fsp.readdir(dataDir)).sort();
  for (let run = 0; run < RUNS; run++) {
    const workload = new Recording(inner);
    const engine = new BackupEngine({
      s3: parseS3Settings({ bucket: store.bucket, region: 'us-east-1' }),
      store,
      workload,
      dataDir,
      passphrase: PASSPHRASE,
    });
    await expect(
      engine.restore({ id: `refused-${run}`, allowMissingManifest: true, force: true }),
    ).rejects.toThrow('entry "/tmp/evil" has an absolute path: refused');
    for (const { command, proc } of workload.started) {
      await endsWithin(`run ${run}: ${command.join(' ').slice(0, 80)}`, proc.wait());
    }
    // wait() of a remote command settles once it is killed, whatever the transport could
    // do: the host's processes say whether tar itself ended.
    await noTarLeftIn(dataDir);
    expect((await fsp.readdir(dataDir)).sort()).toEqual(before);
  }
}

describe('a refused restore ends its tar (local)', () => {
  test(`${RUNS} refused restores each end with the refusal and no command left running`, async () => {
    await refuseRepeatedly(await refusedBackupStore(), new LocalWorkload());
  }, 300_000);
});

describeWithPeers(['pebble'])('a refused restore ends its tar (Pebble)', () => {
  let pebble: PebblePeer;
  let store: MemoryStore;
  beforeAll(async () => {
    pebble = await startPebble();
    store = await refusedBackupStore();
  });
  afterAll(async () => {
    await pebble?.stop();
  });

  test(`relay: ${RUNS} refused restores each end with the refusal and no command left running`, async () => {
    await refuseRepeatedly(store, new PebbleWorkload({ socketPath: pebble.socketPath }));
  }, 300_000);

  test(`direct socket: ${RUNS} refused restores each end with the refusal and no command left running`, async () => {
    const shared = (await tmpDir('refusal-shared')).path;
    await refuseRepeatedly(
      store,
      new PebbleWorkload({
        socketPath: pebble.socketPath,
        sharedDir: { local: shared, workload: shared },
      }),
    );
  }, 300_000);
});

describeWithPeers(['kube'])('a refused restore ends its tar (Kubernetes exec)', () => {
  let rig: KubeRig;
  let store: MemoryStore;
  beforeAll(async () => {
    rig = await startKubeRig();
    store = await refusedBackupStore();
  }, 180_000);
  afterAll(async () => {
    await rig?.stop();
  });

  test(`${RUNS} refused restores each end with the refusal and no command left running`, async () => {
    const workload = new KubernetesWorkload({
      kubeConfig: rig.kubeConfig(),
      namespace: rig.namespace,
      pod: rig.pod,
      container: 'synapse',
    });
    await refuseRepeatedly(store, workload);
  }, 300_000);
});
