/**
 * Issue #13, case 5: an operation's AbortSignal (what SIGTERM and SIGINT abort
 * in the CLI and the charm) tears its pipeline down at once, cleans up, and
 * throws InterruptedError saying what was cleaned up; a restore's swap that
 * began is finished first. On an in-memory store and this host's tar.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { EngineOptions } from '../src/backup/types';
import { InterruptedError } from '../src/errors';
import { LocalWorkload } from '../src/workload/local';
import type { ExecOptions, ExecProcess, Workload } from '../src/workload/workload';
import { MemoryStore } from './support/memory-store';
import { memoryEngine } from './support/memory-engine';
import { tmpDir } from './support/peers';
import { makeSynapseTree, snapshotTree, withoutSkipped } from './support/synapse-tree';

const PASSPHRASE = 'interrupt passphrase';
const engineOn = (store: MemoryStore, dataDir: string, extra: Partial<EngineOptions> = {}) =>
  memoryEngine(store, dataDir, { passphrase: PASSPHRASE, ...extra });
const MiB = 1024 * 1024;

/** Aborts `controller` with "SIGTERM" when a command matching `when` starts (or first writes). */
class AbortingWorkload implements Workload {
  readonly description = 'local host (aborting)';
  private readonly inner = new LocalWorkload();
  constructor(
    private readonly controller: AbortController,
    private readonly when: (command: string[]) => boolean,
    private readonly onOutput = false,
  ) {}
  exec(options: ExecOptions): ExecProcess {
    const proc = this.inner.exec(options);
    if (this.when(options.command) && !this.controller.signal.aborted) {
      if (this.onOutput) proc.stdout.once('data', () => this.controller.abort('SIGTERM'));
      else this.controller.abort('SIGTERM');
    }
    return proc;
  }
  stopServices = async () => undefined;
  startServices = async () => undefined;
  serviceStatus = async () => [];
}

async function interrupted(promise: Promise<unknown>): Promise<InterruptedError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(InterruptedError);
  return err as InterruptedError;
}

const isScript = (needle: string) => (command: string[]) =>
  command[0] === 'sh' && (command[2] ?? '').includes(needle);

describe('an interrupted operation cleans up and says so', () => {
  test('create: the upload is aborted at once, the snapshot removed, nothing stored', async () => {
    const store = new MemoryStore();
    const dataDir = (await tmpDir('interrupt-create')).path;
    await makeSynapseTree(dataDir, { mediaFiles: 2, bigFileBytes: 24 * MiB });
    const controller = new AbortController();
    const workload = new AbortingWorkload(controller, isScript('--create'), true);
    const err = await interrupted(
      engineOn(store, dataDir, { workload, signal: controller.signal }).create({ id: 'c' }),
    );
    expect(err.message).toBe(
      'interrupted by SIGTERM: tar was stopped, the upload of backup c aborted and the database snapshot removed; nothing was stored',
    );
    expect(err.code).toBe('interrupted');
    expect(store.keys()).toEqual([]);
    expect(await store.listUploads()).toEqual([]);
    expect((await fsp.readdir(dataDir)).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  test('restore during extraction: the staging dir goes, the live data is unchanged', async () => {
    const store = new MemoryStore();
    const dataDir = (await tmpDir('interrupt-restore')).path;
    await makeSynapseTree(dataDir, { mediaFiles: 2, bigFileBytes: 8 * MiB });
    await engineOn(store, dataDir).create({ id: 'r' });
    await fsp.writeFile(path.join(dataDir, 'homeserver.yaml'), 'server_name: "example.org"\n#x\n');
    const before = await snapshotTree(dataDir);
    const controller = new AbortController();
    const workload = new AbortingWorkload(controller, (c) => c[0] === 'tar');
    const err = await interrupted(
      engineOn(store, dataDir, { workload, signal: controller.signal }).restore({ id: 'r' }),
    );
    expect(err.message).toBe(
      `interrupted by SIGTERM: the staging dir was removed; ${dataDir} is unchanged`,
    );
    expect(await snapshotTree(dataDir)).toEqual(before);
  });

  test('restore during the swap: the swap is finished first, and the message says so', async () => {
    const store = new MemoryStore();
    const dataDir = (await tmpDir('interrupt-swap')).path;
    await makeSynapseTree(dataDir, { mediaFiles: 2 });
    const backedUp = withoutSkipped(await snapshotTree(dataDir));
    await engineOn(store, dataDir).create({ id: 's' });
    await fsp.writeFile(path.join(dataDir, 'homeserver.yaml'), 'server_name: "example.org"\n#x\n');
    const controller = new AbortController();
    const workload = new AbortingWorkload(controller, isScript('journal moving-out'));
    const err = await interrupted(
      engineOn(store, dataDir, { workload, signal: controller.signal }).restore({ id: 's' }),
    );
    expect(err.message).toBe(
      'interrupted by SIGTERM: the swap had begun, so it was finished: backup s is restored',
    );
    const now = withoutSkipped(await snapshotTree(dataDir));
    expect([...now.keys()].sort()).toEqual([...backedUp.keys()].sort());
    expect(now.get('homeserver.yaml')).toEqual(backedUp.get('homeserver.yaml'));
    expect((await fsp.readdir(dataDir)).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  test('verify and decrypt stop reading', async () => {
    const store = new MemoryStore();
    const dataDir = (await tmpDir('interrupt-read')).path;
    await makeSynapseTree(dataDir, { mediaFiles: 1 });
    await engineOn(store, dataDir).create({ id: 'v' });
    const aborted = new AbortController();
    aborted.abort('SIGINT');
    const engine = engineOn(store, dataDir, { signal: aborted.signal });
    expect((await interrupted(engine.verify('v'))).message).toBe(
      'interrupted by SIGINT: the read was stopped; nothing to clean up',
    );
    const sink = new Writable({ write: (_c, _e, done) => done() });
    expect((await interrupted(engine.decryptTo('v', sink))).message).toBe(
      'interrupted by SIGINT: the read was stopped; the output is incomplete',
    );
  });
});
