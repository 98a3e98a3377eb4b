import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BackupError } from '../src/errors';
import { PebbleWorkload } from '../src/workload/pebble';
import type { ExecProcess } from '../src/workload/workload';
import { readAll } from './support/streams';

const PEBBLE_BIN =
  process.env.PEBBLE_BIN ??
  path.join(os.homedir(), '.cache', 'synapse-backup-peers', 'bin', 'pebble');
const MiB = 1024 * 1024;

// ------------------------------------------------------------------ a local Pebble
// TODO: swap for startPebble() from tests/support/peers.ts once it has settled.

interface LocalPebble {
  dir: string;
  socketPath: string;
  /** kill -9 the daemon (simulates a crash). */
  killHard(): Promise<void>;
  /** Stops the daemon and removes its directory. Idempotent. */
  stop(): Promise<void>;
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

function socketAccepts(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Starts `PEBBLE=<tmpdir> pebble run --create-dirs --hold` and waits for its socket. */
async function startLocalPebble(): Promise<LocalPebble> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pebble-test-'));
  const socketPath = path.join(dir, '.pebble.socket');
  const child = spawn(PEBBLE_BIN, ['run', '--create-dirs', '--hold'], {
    env: { ...process.env, PEBBLE: dir },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr?.on('data', (chunk: Buffer) => (log += chunk.toString()));
  const deadline = Date.now() + 15_000;
  while (!(await socketAccepts(socketPath))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`pebble did not start (exit ${child.exitCode}):\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  let stopped = false;
  return {
    dir,
    socketPath,
    async killHard() {
      child.kill('SIGKILL');
      await exited(child);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited(child);
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ------------------------------------------------------------------ helpers

async function run(proc: ExecProcess) {
  const [stdout, stderr, status] = await Promise.all([
    readAll(proc.stdout),
    readAll(proc.stderr),
    proc.wait(),
  ]);
  return { stdout: stdout.toString(), stderr: stderr.toString(), status };
}

/** Resolves to 'pending' if `promise` has not settled within `ms`. */
async function settledWithin<T>(promise: Promise<T>, ms: number): Promise<'settled' | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise.then(
        () => 'settled' as const,
        () => 'settled' as const,
      ),
      new Promise<'pending'>((r) => (timer = setTimeout(() => r('pending'), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ tests

const pebbleInstalled = existsSync(PEBBLE_BIN);
if (!pebbleInstalled) {
  const message = `pebble binary missing at ${PEBBLE_BIN}; install the test peers with: bash scripts/peers/install.sh`;
  if (process.env.CI === 'true') {
    test('the pebble binary is installed', () => {
      throw new Error(message);
    });
  } else {
    console.warn(
      `${'!'.repeat(78)}\n!!! SKIPPING tests/pebble.test.ts: ${message}\n${'!'.repeat(78)}`,
    );
  }
}

(pebbleInstalled ? describe : describe.skip)('PebbleWorkload against a real Pebble', () => {
  let pebble: LocalPebble;
  let workload: PebbleWorkload;

  beforeAll(async () => {
    pebble = await startLocalPebble();
    workload = new PebbleWorkload({ socketPath: pebble.socketPath });
  });

  afterAll(async () => {
    await pebble?.stop();
  });

  test('exec returns stdout and exit code 0', async () => {
    const result = await run(workload.exec({ command: ['echo', 'hello', 'pebble'] }));
    expect(result).toEqual({ stdout: 'hello pebble\n', stderr: '', status: { exitCode: 0 } });
  });

  test('a non-zero exit code is reported, not thrown', async () => {
    const result = await run(workload.exec({ command: ['sh', '-c', 'exit 7'] }));
    expect(result.status).toEqual({ exitCode: 7 });
  });

  test('stderr is kept apart from stdout', async () => {
    const result = await run(
      workload.exec({ command: ['sh', '-c', 'echo to-out; echo to-err >&2; echo more-out'] }),
    );
    expect(result.stdout).toBe('to-out\nmore-out\n');
    expect(result.stderr).toBe('to-err\n');
  });

  test('working directory and environment are passed', async () => {
    const result = await run(
      workload.exec({
        command: ['sh', '-c', 'pwd; echo "$GREETING"'],
        workingDir: '/tmp',
        environment: { GREETING: 'hi there' },
      }),
    );
    expect(result.stdout).toBe('/tmp\nhi there\n');
  });

  test('stdin streams to the command and its end reaches the command as EOF', async () => {
    const size = 5 * MiB + 123;
    const proc = workload.exec({ command: ['wc', '-c'], stdin: true });
    const stdin = proc.stdin!;
    // Several writes, honouring the writable's backpressure, then end().
    const chunk = Buffer.alloc(MiB, 0x61);
    let remaining = size;
    const writing = (async () => {
      while (remaining > 0) {
        const piece = chunk.subarray(0, Math.min(remaining, chunk.length));
        remaining -= piece.length;
        if (!stdin.write(piece)) await new Promise((r) => stdin.once('drain', r));
      }
      stdin.end();
    })();
    const [result] = await Promise.all([run(proc), writing]);
    expect(result.stdout.trim()).toBe(String(size));
    expect(result.status).toEqual({ exitCode: 0 });
  });

  test('stdin round trip through cat keeps every byte', async () => {
    const input = Buffer.alloc(3 * MiB);
    for (let i = 0; i < input.length; i++) input[i] = (i * 7 + (i >> 11)) & 0xff;
    const proc = workload.exec({ command: ['cat'], stdin: true });
    proc.stdin!.end(input);
    const [stdout, , status] = await Promise.all([
      readAll(proc.stdout),
      readAll(proc.stderr),
      proc.wait(),
    ]);
    expect(status.exitCode).toBe(0);
    expect(stdout.length).toBe(input.length);
    expect(stdout.equals(input)).toBe(true);
  });

  test('without stdin the command sees EOF at once', async () => {
    const result = await run(workload.exec({ command: ['cat'] }));
    expect(result).toEqual({ stdout: '', stderr: '', status: { exitCode: 0 } });
  });

  test('a slow consumer slows the producer (backpressure, bounded buffering)', async () => {
    const total = 256 * MiB;
    const proc = workload.exec({ command: ['head', '-c', String(total), '/dev/zero'] });
    const rssBefore = process.memoryUsage().rss;

    // Nobody reads for 2 seconds. Unthrottled, Pebble would deliver all 256 MiB
    // in well under that; with backpressure the command blocks on its pipe.
    await sleep(2000);
    const bufferedDuringPause = proc.stdout.readableLength;
    const rssGrowth = process.memoryUsage().rss - rssBefore;
    expect(bufferedDuringPause).toBeLessThan(16 * MiB);
    expect(rssGrowth).toBeLessThan(64 * MiB);
    expect(await settledWithin(proc.wait(), 0)).toBe('pending');

    // Now a consumer that reads: everything arrives, intact in length.
    const [stdout] = await Promise.all([
      (async () => {
        let n = 0;
        for await (const chunk of proc.stdout) n += (chunk as Buffer).length;
        return n;
      })(),
      readAll(proc.stderr),
    ]);
    expect(stdout).toBe(total);
    expect(await proc.wait()).toEqual({ exitCode: 0 });
  });

  test('a command that is not reading yet slows the stdin writer (backpressure)', async () => {
    const total = 128 * MiB;
    const proc = workload.exec({ command: ['sh', '-c', 'sleep 2; exec wc -c'], stdin: true });
    let produced = 0;
    const input = Readable.from(
      (function* () {
        const chunk = Buffer.alloc(MiB, 0x63);
        while (produced < total) {
          produced += chunk.length;
          yield chunk;
        }
      })(),
    );
    const writing = pipeline(input, proc.stdin!);
    const running = run(proc);
    await sleep(1500);
    // The command reads nothing for 2 s: what left the generator is bounded by
    // pipe, socket and stream buffers, not the whole input.
    expect(produced).toBeLessThan(32 * MiB);
    await writing;
    const result = await running;
    expect(result.stdout.trim()).toBe(String(total));
  });

  test('a consumer that destroys stdout does not hang wait(): the command meets a broken pipe', async () => {
    const proc = workload.exec({ command: ['yes'] });
    proc.stderr.resume();
    let received = 0;
    proc.stdout.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received > MiB) proc.stdout.destroy();
    });
    expect(await settledWithin(proc.wait(), 5000)).toBe('settled');
    expect(await proc.wait()).toEqual({ exitCode: 128 + 13 }); // SIGPIPE, as Pebble reports it
  });

  test('a command that exits without reading all its input: wait() resolves, the writer fails', async () => {
    const proc = workload.exec({ command: ['head', '-c', '10'], stdin: true });
    const input = Readable.from(
      (function* () {
        for (let i = 0; i < 100; i++) yield Buffer.alloc(MiB, 0x62);
      })(),
    );
    // Its failure is taken at once: it may come while run() is still awaited (an unhandled
    // rejection otherwise).
    const writing = pipeline(input, proc.stdin!).then(
      () => undefined,
      (err: unknown) => err,
    );
    const result = await run(proc);
    expect(result).toEqual({ stdout: 'bbbbbbbbbb', stderr: '', status: { exitCode: 0 } });
    const failure = await writing;
    expect(failure).toBeInstanceOf(Error);
    expect((failure as Error).message).toMatch(/cannot send its input/);
  });

  test('kill() ends a long-running command promptly', async () => {
    // A distinctive argument so the process can be looked for afterwards.
    const seconds = String(100 + Math.floor(Math.random() * 800)) + '.5';
    const running = () => spawnSync('pgrep', ['-f', `^sleep ${seconds}$`]).status === 0;
    const proc = workload.exec({ command: ['sleep', seconds] });
    proc.stdout.resume();
    proc.stderr.resume();
    await sleep(500);
    expect(running()).toBe(true);

    const started = Date.now();
    proc.kill();
    const status = await proc.wait();
    expect(Date.now() - started).toBeLessThan(3000);
    expect(status).toEqual({ exitCode: null, signal: 'SIGKILL' });
    // The command itself is gone, not just our connection to it.
    const deadline = Date.now() + 3000;
    while (running() && Date.now() < deadline) await sleep(50);
    expect(running()).toBe(false);
  });

  test('a command that does not exist rejects with a clear message', async () => {
    const proc = workload.exec({ command: ['no-such-command-xyz'] });
    const stdoutError = new Promise<Error>((resolve) => proc.stdout.once('error', resolve));
    await expect(proc.wait()).rejects.toThrow(
      /cannot run "no-such-command-xyz".*cannot find executable "no-such-command-xyz"/,
    );
    await expect(proc.wait()).rejects.toBeInstanceOf(BackupError);
    expect((await stdoutError).message).toMatch(/cannot find executable/);
  });

  test('a missing socket is reported as an unreachable Pebble', async () => {
    const socketPath = path.join(pebble.dir, 'nothing-here.socket');
    const absent = new PebbleWorkload({ socketPath });
    await expect(absent.serviceStatus(['synapse'])).rejects.toThrow(
      `cannot reach Pebble at ${socketPath}`,
    );
    const proc = absent.exec({ command: ['true'] });
    await expect(proc.wait()).rejects.toThrow(/is the workload container running\?/);
  });

  test('services: add a layer, start, status, stop; errors quote Pebble', async () => {
    await workload.addLayer(
      'sleeper',
      [
        'summary: test layer',
        'services:',
        '  sleeper:',
        '    override: replace',
        '    command: sleep 1000',
        '    startup: disabled',
      ].join('\n'),
    );
    expect(await workload.serviceStatus(['sleeper'])).toEqual([
      { name: 'sleeper', current: 'inactive' },
    ]);

    await workload.startServices(['sleeper']);
    expect(await workload.serviceStatus(['sleeper'])).toEqual([
      { name: 'sleeper', current: 'active' },
    ]);

    await workload.stopServices(['sleeper']);
    expect(await workload.serviceStatus(['sleeper'])).toEqual([
      { name: 'sleeper', current: 'inactive' },
    ]);

    await expect(workload.startServices(['no-such-service'])).rejects.toThrow(
      /cannot start services no-such-service: .*service "no-such-service" does not exist/,
    );
  });

  test('replan starts services marked startup: enabled', async () => {
    await workload.addLayer(
      'replanned',
      [
        'services:',
        '  waker:',
        '    override: replace',
        '    command: sleep 1000',
        '    startup: enabled',
      ].join('\n'),
    );
    await workload.replan();
    expect(await workload.serviceStatus(['waker'])).toEqual([{ name: 'waker', current: 'active' }]);
    await workload.stopServices(['waker']);
  });
});

(pebbleInstalled ? describe : describe.skip)('PebbleWorkload when Pebble dies', () => {
  let pebble: LocalPebble;

  beforeAll(async () => {
    pebble = await startLocalPebble();
  });

  afterAll(async () => {
    await pebble?.stop();
  });

  test('a daemon killed mid-stream makes wait() reject and stdout error', async () => {
    const workload = new PebbleWorkload({ socketPath: pebble.socketPath });
    const proc = workload.exec({ command: ['cat', '/dev/zero'] });
    proc.stderr.resume();
    let received = 0;
    const stdoutDone = new Promise<Error | null>((resolve) => {
      proc.stdout.on('data', (chunk: Buffer) => (received += chunk.length));
      proc.stdout.once('error', resolve);
      proc.stdout.once('end', () => resolve(null));
    });
    while (received < 4 * MiB) await sleep(20);

    await pebble.killHard();

    const waited = await settledWithin(proc.wait(), 5000);
    expect(waited).toBe('settled');
    await expect(proc.wait()).rejects.toBeInstanceOf(BackupError);
    await expect(proc.wait()).rejects.toThrow(/cannot run "cat" in the workload/);
    const stdoutError = await stdoutDone;
    expect(stdoutError).toBeInstanceOf(BackupError);
  });
});
