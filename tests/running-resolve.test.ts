/**
 * The running-Synapse check (src/backup/running.ts) resolves paths before it
 * compares: a synapse.app.homeserver process started elsewhere with a relative
 * `-c`, or a data dir given through a symlink, is found. A stand-in process
 * whose argv names synapse.app.homeserver plays Synapse.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { EngineContext } from '../src/backup/context';
import { refuseRunningSynapse } from '../src/backup/running';
import { BackupError } from '../src/errors';
import { LocalWorkload } from '../src/workload/local';
import type { ExecOptions, ExecProcess } from '../src/workload/workload';
import { memoryEngine, memorySynapseDir } from './support/memory-engine';
import { MemoryStore } from './support/memory-store';
import { snapshotTree } from './support/synapse-tree';

let root: string;
let dataDir: string;
let link: string;
const children: ChildProcess[] = [];

beforeEach(() => {
  root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'running-resolve-')));
  dataDir = path.join(root, 'data');
  fs.mkdirSync(dataDir);
  fs.writeFileSync(path.join(dataDir, 'homeserver.yaml'), 'server_name: "resolve.test"\n');
  fs.mkdirSync(path.join(root, 'other'));
  link = path.join(root, 'link');
  fs.symlinkSync(dataDir, link);
});

afterEach(async () => {
  for (const child of children.splice(0)) {
    const exited = new Promise((r) => child.once('exit', r));
    process.kill(-child.pid!, 'SIGKILL');
    await exited;
  }
  fs.rmSync(root, { recursive: true, force: true });
});

/** A stand-in Synapse: `sh` whose argv is `synapse.app.homeserver ...args`, in `cwd`. */
async function fakeSynapse(cwd: string, args: string[]): Promise<number> {
  const child = spawn('sh', ['-c', 'sleep 300; exit 0', 'synapse.app.homeserver', ...args], {
    cwd,
    detached: true,
    stdio: 'ignore',
  });
  children.push(child);
  await new Promise((r) => child.once('spawn', r));
  return child.pid!;
}

function check(dir: string): Promise<void> {
  const ctx = { workload: new LocalWorkload(), dataDir: dir } as unknown as EngineContext;
  return refuseRunningSynapse(ctx, []);
}

async function refusal(dir: string): Promise<BackupError | undefined> {
  try {
    await check(dir);
    return undefined;
  } catch (err) {
    if (err instanceof BackupError) return err;
    throw err;
  }
}

it('finds a process started from the parent with -c data/homeserver.yaml', async () => {
  const pid = await fakeSynapse(root, ['-c', 'data/homeserver.yaml']);
  const err = await refusal(dataDir);
  expect(err?.code).toBe('busy');
  expect(err?.message).toContain(`process ${pid} is synapse.app.homeserver`);
});

it('finds it with --config-path=../data/homeserver.yaml from a sibling directory', async () => {
  await fakeSynapse(path.join(root, 'other'), ['--config-path=../data/homeserver.yaml']);
  expect((await refusal(dataDir))?.code).toBe('busy');
});

it('finds a process of the data dir when the data dir is given through a symlink (its cwd, its config)', async () => {
  await fakeSynapse(dataDir, []);
  expect((await refusal(link))?.code).toBe('busy');
  for (const child of children.splice(0)) {
    const exited = new Promise((r) => child.once('exit', r));
    process.kill(-child.pid!, 'SIGKILL');
    await exited;
  }
  await fakeSynapse(root, ['-c', path.join(dataDir, 'homeserver.yaml')]);
  expect((await refusal(link))?.code).toBe('busy');
});

it('leaves a synapse.app.homeserver process of another config alone', async () => {
  fs.writeFileSync(path.join(root, 'other', 'homeserver.yaml'), 'server_name: "x"\n');
  await fakeSynapse(root, ['-c', 'other/homeserver.yaml']);
  await expect(check(dataDir)).resolves.toBeUndefined();
  await expect(check(link)).resolves.toBeUndefined();
});

it('a restore checks again just before the swap: a Synapse started during the restore refuses it, nothing changed', async () => {
  const store = new MemoryStore();
  const src = await memorySynapseDir('running-src');
  const created = memoryEngine(store, src);
  await created.create({ id: 'a' });
  created.close();
  const dst = await memorySynapseDir('running-dst');
  const before = await snapshotTree(dst);
  const local = new LocalWorkload();
  let checks = 0;
  // Synapse starts right after the restore's first look for it.
  const workload = Object.assign(Object.create(local) as LocalWorkload, {
    exec(options: ExecOptions): ExecProcess {
      const proc = local.exec(options);
      if (!options.command.some((a) => a.includes('synapse[.]app[.]homeserver'))) return proc;
      return {
        ...proc,
        wait: async () => {
          const status = await proc.wait();
          if (++checks === 1) await fakeSynapse(dst, []);
          return status;
        },
      };
    },
  });
  const engine = memoryEngine(store, dst, { workload });
  try {
    await expect(engine.restore({ id: 'a' })).rejects.toMatchObject({ code: 'busy' });
  } finally {
    engine.close();
  }
  expect(checks).toBe(2);
  expect(await snapshotTree(dst)).toEqual(before);
  fs.rmSync(src, { recursive: true, force: true });
  fs.rmSync(dst, { recursive: true, force: true });
});
