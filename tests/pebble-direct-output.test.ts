/**
 * The Pebble transport's direct streams (src/workload/pebble/direct-stream.ts)
 * against a real Pebble: the command's stdout or stdin goes over a unix socket
 * in a directory both sides see, while start, stderr, exit status and kill stay
 * with Pebble's exec; when the socket cannot be used, the relay. Then a whole
 * create/restore round trip through it.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, symlinkSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { recordRunLauncher } from '../src/backup/scripts';
import { PebbleWorkload } from '../src/workload/pebble';
import type { ExecProcess, Workload } from '../src/workload/workload';
import { minioEngine } from './support/engines';
import {
  type MinioPeer,
  type PebblePeer,
  describeWithPeers,
  startMinio,
  startPebble,
  tmpDir,
} from './support/peers';
import { makeSynapseTree, snapshotTree, withoutSkipped } from './support/synapse-tree';
import { readAll } from './support/streams';

/** The sockets the transport left in the shared directory (it should leave none). */
const leftovers = (dir: string) => readdirSync(dir).filter((n) => n.startsWith('.synapse-backup-'));

describeWithPeers(['minio', 'pebble'])('Pebble direct output', () => {
  let pebble: PebblePeer;
  let minio: MinioPeer;
  let workload: PebbleWorkload;
  let shared: string;

  beforeAll(async () => {
    [pebble, minio] = await Promise.all([startPebble(), startMinio()]);
    shared = path.dirname(pebble.socketPath);
    workload = new PebbleWorkload({
      socketPath: pebble.socketPath,
      sharedDir: { local: shared, workload: shared },
    });
  });
  afterAll(async () => {
    await pebble?.stop();
    await minio?.stop();
  });

  const direct = (script: string, extra: { environment?: Record<string, string> } = {}) =>
    workload.exec({ command: ['sh', '-c', script], directStdout: true, ...extra });

  test('stdout arrives whole over the socket; stderr and the exit status come from Pebble', async () => {
    const proc = direct(
      'head -c 5000000 /dev/urandom | tee /dev/null | wc -c >&2; printf end; exit 3',
    );
    const [out, err, status] = await Promise.all([
      readAll(proc.stdout),
      readAll(proc.stderr),
      proc.wait(),
    ]);
    expect(out.toString()).toBe('end');
    expect(err.toString().trim()).toBe('5000000');
    expect(status).toEqual({ exitCode: 3 });
    expect(leftovers(shared)).toEqual([]);
  });

  test('megabytes keep every byte and their order, with the consumer slower than the command', async () => {
    const proc = direct(
      'i=0; while [ $i -lt 3000 ]; do printf "%08d" $i; i=$((i+1)); done; head -c 4000000 /dev/zero',
    );
    const chunks: Buffer[] = [];
    for await (const chunk of proc.stdout) {
      chunks.push(chunk as Buffer);
      await new Promise((r) => setTimeout(r, 1));
    }
    const out = Buffer.concat(chunks);
    expect(out.length).toBe(24000 + 4000000);
    expect(out.subarray(0, 16).toString()).toBe('0000000000000001');
    expect(out.subarray(23992, 24000).toString()).toBe('00002999');
    expect(await proc.wait()).toEqual({ exitCode: 0 });
  });

  test('the environment is passed, without the token that proves the connection', async () => {
    const proc = direct('printf "%s|%s" "$GREETING" "${SYNAPSE_BACKUP_OUTPUT_TOKEN:-none}"', {
      environment: { GREETING: 'hello' },
    });
    expect((await readAll(proc.stdout)).toString()).toBe('hello|none');
    expect(await proc.wait()).toEqual({ exitCode: 0 });
  });

  test('a connection without the token is dropped and the real output still arrives', async () => {
    const proc = direct('sleep 0.5; printf real');
    let rogueClosed = false;
    for (let i = 0; i < 50 && leftovers(shared).length === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const [name] = leftovers(shared);
    const rogue = net.connect(path.join(shared, name!));
    rogue.on('error', () => undefined);
    rogue.on('close', () => (rogueClosed = true));
    rogue.write(Buffer.alloc(32, 1));
    rogue.write('fake archive');
    expect((await readAll(proc.stdout)).toString()).toBe('real');
    expect(await proc.wait()).toEqual({ exitCode: 0 });
    expect(rogueClosed).toBe(true);
  });

  test('a connection that never sends the token is closed when the command ends', async () => {
    const proc = direct('sleep 0.5; printf real');
    for (let i = 0; i < 50 && leftovers(shared).length === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const [name] = leftovers(shared);
    const silent = net.connect(path.join(shared, name!));
    silent.on('error', () => undefined);
    const closed = new Promise<void>((resolve) => silent.on('close', () => resolve()));
    expect((await readAll(proc.stdout)).toString()).toBe('real');
    expect(await proc.wait()).toEqual({ exitCode: 0 });
    await closed;
  });

  test('Pebble unreachable: wait() and stdout fail with the reason, not a hang', async () => {
    const nowhere = new PebbleWorkload({
      socketPath: path.join(shared, 'no-such-pebble.socket'),
      sharedDir: { local: shared, workload: shared },
    });
    const proc = nowhere.exec({ command: ['true'], directStdout: true });
    const failure = readAll(proc.stdout).catch((e: Error) => e.message);
    await expect(proc.wait()).rejects.toThrow(/cannot reach Pebble at .*no-such-pebble\.socket/);
    expect(await failure).toMatch(/cannot reach Pebble/);
    expect(leftovers(shared)).toEqual([]);
  });

  /** A workload whose direct output cannot be set up; says why through `reasons`. */
  const fallingBack = (sharedDir: { local: string; workload: string }) => {
    const reasons: string[] = [];
    const w = new PebbleWorkload({
      socketPath: pebble.socketPath,
      sharedDir,
      onDirectStreamUnavailable: (reason) => reasons.push(reason),
    });
    return { reasons, w };
  };
  const relayed = async (proc: ExecProcess) => {
    const [out, err, status] = await Promise.all([
      readAll(proc.stdout),
      readAll(proc.stderr),
      proc.wait(),
    ]);
    return { out: out.toString(), err: err.toString(), status };
  };
  const script = 'printf "%s" "${MARK:-unset}"; printf "to stderr" >&2; exit 4';

  test('the workload cannot reach the socket: the command runs through the relay instead, and says why', async () => {
    const { reasons, w } = fallingBack({ local: shared, workload: '/nonexistent/charm/container' });
    const proc = w.exec({
      command: ['sh', '-c', script],
      environment: { MARK: 'relayed' },
      directStdout: true,
    });
    // Only the command's own output and status: nothing of the failed attempt.
    expect(await relayed(proc)).toEqual({
      out: 'relayed',
      err: 'to stderr',
      status: { exitCode: 4 },
    });
    expect(reasons).toEqual([
      expect.stringMatching(
        /^cannot connect to \/nonexistent\/charm\/container\/\.synapse-backup-[0-9a-f]{16}\.sock in the workload: \[Errno 2\] No such file or directory$/,
      ),
    ]);
    expect(leftovers(shared)).toEqual([]);
  });

  test('no local directory to listen in: the relay, and the reason names the path', async () => {
    const { reasons, w } = fallingBack({ local: '/nonexistent/shared', workload: shared });
    const proc = w.exec({ command: ['sh', '-c', script], directStdout: true });
    expect(await relayed(proc)).toEqual({
      out: 'unset',
      err: 'to stderr',
      status: { exitCode: 4 },
    });
    expect(reasons).toEqual([
      expect.stringMatching(
        /^cannot listen on \/nonexistent\/shared\/\.synapse-backup-[0-9a-f]{16}\.sock \(.*listen E[A-Z]+/,
      ),
    ]);
  });

  /**
   * Runs `run` against a Pebble whose PATH has a shell and no python3 (Pebble looks
   * commands up on its own PATH), with the reasons the direct stream was unavailable.
   */
  async function withoutPython(
    name: string,
    run: (w: PebbleWorkload, reasons: string[]) => Promise<void>,
  ): Promise<void> {
    const bin = await tmpDir(name);
    symlinkSync('/bin/sh', path.join(bin.path, 'sh'));
    const bare = await startPebble({ path: bin.path });
    try {
      const reasons: string[] = [];
      const w = new PebbleWorkload({
        socketPath: bare.socketPath,
        sharedDir: { local: shared, workload: shared },
        onDirectStreamUnavailable: (reason) => reasons.push(reason),
      });
      await run(w, reasons);
    } finally {
      await bare.stop();
    }
  }
  const refusedPython = /Pebble refused POST \/v1\/exec \(400\): .*python3/;

  test('no python3 in the workload: Pebble refuses the wrapper, and the relay runs the command', async () => {
    await withoutPython('direct-no-python', async (w, reasons) => {
      const proc = w.exec({
        command: ['sh', '-c', script],
        environment: { MARK: 'no python' },
        directStdout: true,
      });
      expect(await relayed(proc)).toEqual({
        out: 'no python',
        err: 'to stderr',
        status: { exitCode: 4 },
      });
      expect(reasons).toEqual([expect.stringMatching(refusedPython)]);
      expect(leftovers(shared)).toEqual([]);
    });
  });

  test("no python3, under the data dir lock's launcher: still refused by Pebble, still relayed", async () => {
    // The launcher (sh) runs behind the wrapper, not in front of it: Pebble is asked for
    // python3 itself, refuses, and the relay runs the launcher and the command.
    await withoutPython('direct-no-python-launcher', async (w, reasons) => {
      const proc = w.exec({
        command: ['sh', '-c', script],
        environment: { MARK: 'launched' },
        launcher: recordRunLauncher(shared, 'launcher-test-token'),
        directStdout: true,
      });
      expect(await relayed(proc)).toEqual({
        out: 'launched',
        err: 'to stderr',
        status: { exitCode: 4 },
      });
      expect(reasons).toEqual([expect.stringMatching(refusedPython)]);
    });
  });

  test('a command that fails after connecting is not run again', async () => {
    const { reasons, w } = fallingBack({ local: shared, workload: shared });
    const marker = path.join(shared, `ran-${Date.now()}`);
    const proc = w.exec({
      command: ['sh', '-c', `echo x >> ${marker}; printf partial; exit 86`],
      directStdout: true,
    });
    expect(await relayed(proc)).toEqual({ out: 'partial', err: '', status: { exitCode: 86 } });
    expect(reasons).toEqual([]);
    expect(readFileSync(marker, 'utf8')).toBe('x\n');
  });

  /**
   * Writes `input` to the command's stdin; collects stdout, stderr and the exit status.
   * end()'s callback is also how a failed write is told (with the error, before 'error').
   */
  const feed = async (proc: ExecProcess, input: Buffer) => {
    const writing = new Promise<void>((resolve, reject) => {
      proc.stdin!.once('error', reject);
      proc.stdin!.end(input, (err?: Error | null) => (err ? reject(err) : resolve()));
    }).then(
      () => 'all',
      (e: Error) => e.message,
    );
    const [out, err, status] = await Promise.all([
      readAll(proc.stdout),
      readAll(proc.stderr),
      proc.wait(),
    ]);
    const written = await writing;
    return { out: out.toString(), err: err.toString(), status, written };
  };
  const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

  test('stdin comes over the socket: every byte in order; stdout and the exit status through Pebble', async () => {
    const input = randomBytes(8 * 1024 * 1024 + 17);
    const proc = workload.exec({
      command: ['sh', '-c', 'readlink /proc/$$/fd/0 >&2; sha256sum | cut -c1-64; exit 5'],
      stdin: true,
      directStdin: true,
    });
    const r = await feed(proc, input);
    expect(r.err).toMatch(/^socket:\[\d+\]\n$/);
    expect(r.out.trim()).toBe(sha256(input));
    expect(r.status).toEqual({ exitCode: 5 });
    expect(r.written).toBe('all');
    expect(leftovers(shared)).toEqual([]);
  });

  test('stdin: the workload cannot reach the socket, so the input goes through the relay', async () => {
    const { reasons, w } = fallingBack({ local: shared, workload: '/nonexistent/charm/container' });
    const input = randomBytes(3 * 1024 * 1024);
    const proc = w.exec({
      command: ['sh', '-c', 'readlink /proc/$$/fd/0 >&2; sha256sum | cut -c1-64'],
      stdin: true,
      directStdin: true,
    });
    const r = await feed(proc, input);
    expect(r.err).toMatch(/^pipe:\[\d+\]\n$/);
    expect(r.out.trim()).toBe(sha256(input));
    expect(r.status).toEqual({ exitCode: 0 });
    expect(reasons).toEqual([expect.stringMatching(/^cannot connect to \/nonexistent\/charm/)]);
  });

  test('stdin: a command that stops reading and exits has its status reported; writing fails', async () => {
    const { reasons, w } = fallingBack({ local: shared, workload: shared });
    const proc = w.exec({
      command: [
        'sh',
        '-c',
        'readlink /proc/$$/fd/0 >&2; head -c 10 >/dev/null; echo stopped >&2; exit 3',
      ],
      stdin: true,
      directStdin: true,
    });
    const r = await feed(proc, randomBytes(16 * 1024 * 1024));
    expect(r.status).toEqual({ exitCode: 3 });
    // Over the socket, not the relay (Pebble takes a websocket's input whoever reads it).
    expect(reasons).toEqual([]);
    expect(r.err).toMatch(/^socket:\[\d+\]\nstopped\n$/);
    // EPIPE or ECONNRESET: whether the socket's write or its read meets the command's end first.
    expect(r.written).toMatch(/EPIPE|ECONNRESET|write after end|destroyed/);
  });

  test('stdout comes over the socket: the command sees a socket as its fd 1', async () => {
    // Read in a subshell: a redirection on the shell's own command would move its fd 1.
    const proc = direct('fd1=$(readlink /proc/$$/fd/1); printf "%s\\n" "$fd1" >&2; printf x');
    const r = await relayed(proc);
    expect(r).toEqual({
      out: 'x',
      err: expect.stringMatching(/^socket:\[\d+\]\n$/),
      status: { exitCode: 0 },
    });
  });

  test('sockets that killed runs left behind are removed; a live one is not', async () => {
    const stale = path.join(shared, '.synapse-backup-00000000000000aa.sock');
    // What a SIGKILLed charm leaves: a bound socket file with nobody listening.
    execFileSync('python3', [
      '-c',
      'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
      stale,
    ]);
    const live = path.join(shared, '.synapse-backup-00000000000000bb.sock');
    const server = net.createServer((c) => c.destroy());
    await new Promise<void>((resolve) => server.listen(live, resolve));
    try {
      expect(leftovers(shared).sort()).toEqual([path.basename(stale), path.basename(live)]);
      const proc = direct('printf fresh');
      expect((await readAll(proc.stdout)).toString()).toBe('fresh');
      expect(await proc.wait()).toEqual({ exitCode: 0 });
      expect(leftovers(shared)).toEqual([path.basename(live)]);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  test('removeStale() sweeps the sockets killed runs left in the shared dir, not a live one', async () => {
    const stale = path.join(shared, '.synapse-backup-00000000000000cc.sock');
    execFileSync('python3', [
      '-c',
      'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
      stale,
    ]);
    const live = path.join(shared, '.synapse-backup-00000000000000dd.sock');
    const server = net.createServer((c) => c.destroy());
    await new Promise<void>((resolve) => server.listen(live, resolve));
    try {
      expect(await workload.removeStale()).toEqual([path.basename(stale)]);
      expect(leftovers(shared)).toEqual([path.basename(live)]);
      expect(await workload.removeStale()).toEqual([]);
      // Without a shared dir (pebble-relay) it sweeps the socket's directory, where a run
      // with one (the shared dir is that directory here) left them.
      execFileSync('python3', [
        '-c',
        'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
        stale,
      ]);
      const relay = new PebbleWorkload({ socketPath: pebble.socketPath });
      expect(await relay.removeStale()).toEqual([path.basename(stale)]);
      expect(leftovers(shared)).toEqual([path.basename(live)]);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  test('kill() before the command has connected: no hang, no socket left', async () => {
    const proc = direct('printf never');
    proc.kill();
    const status = await proc.wait();
    expect(status.exitCode).toBeNull();
    await new Promise((r) => setTimeout(r, 200));
    expect(leftovers(shared)).toEqual([]);
  });

  test('kill() while its input is being written: the writer fails, no hang', async () => {
    const proc = workload.exec({
      command: ['sh', '-c', 'sleep 0.2; cat >/dev/null'],
      stdin: true,
      directStdin: true,
    });
    const writing = new Promise<string>((resolve) => {
      proc.stdin!.once('error', (e) => resolve(e.message));
      proc.stdin!.write(randomBytes(4 * 1024 * 1024), () => {
        proc.kill();
      });
      proc.stdin!.once('close', () => resolve('closed'));
    });
    const status = await proc.wait();
    expect(status.exitCode).toBeNull();
    expect(await writing).toBeDefined();
    expect(proc.stdin!.destroyed).toBe(true);
    expect(leftovers(shared)).toEqual([]);
  });

  test('kill() stops a command that is still writing', async () => {
    const proc: ExecProcess = direct('cat /dev/zero');
    const first = await new Promise<Buffer>((resolve) => proc.stdout.once('data', resolve));
    expect(first.length).toBeGreaterThan(0);
    proc.kill();
    const status = await proc.wait();
    expect(status.exitCode).toBeNull();
    expect(leftovers(shared)).toEqual([]);
  });

  test('a create whose tar fails names tar and its status, and leaves nothing in S3', async () => {
    // The data dir goes between the selection's probe and tar, which then cannot enter it.
    const data = await tmpDir('direct-fail-data');
    await makeSynapseTree(data.path, { mediaFiles: 1 });
    const vanishing: Workload = {
      description: workload.description,
      exec: (options) => {
        if (options.command[2]?.includes('tar --create')) execFileSync('rm', ['-rf', data.path]);
        return workload.exec(options);
      },
      stopServices: (names) => workload.stopServices(names),
      startServices: (names) => workload.startServices(names),
      serviceStatus: (names) => workload.serviceStatus(names),
    };
    const engine = minioEngine(minio, 'direct-fail', {
      passphrase: 'direct-output passphrase',
      workload: vanishing,
      dataDir: data.path,
    });
    await expect(engine.create({ id: 'direct-fail-1' })).rejects.toThrow(
      new RegExp(`^tar in Pebble at .* exited with status 2: .*${data.path}`),
    );
    const listed = await engine.list();
    expect(listed.backups).toEqual([]);
    expect(listed.uploads).toEqual([]);
    expect(leftovers(shared)).toEqual([]);
    engine.close();
  });

  test('create and restore round-trip through it', async () => {
    const src = await tmpDir('direct-src');
    const dst = await tmpDir('direct-dst');
    await makeSynapseTree(src.path, { bigFileBytes: 6 * 1024 * 1024 });
    const engine = minioEngine(minio, 'direct', {
      passphrase: 'direct-output passphrase',
      workload,
      dataDir: src.path,
    });
    const created = await engine.create({ id: 'direct-1' });
    expect(created.files).toBeGreaterThan(5);
    const restorer = minioEngine(minio, 'direct', {
      passphrase: 'direct-output passphrase',
      workload,
      dataDir: dst.path,
    });
    const restored = await restorer.restore({ id: 'direct-1' });
    expect(restored.files).toBe(created.files);
    const before = withoutSkipped(await snapshotTree(src.path));
    const after = await snapshotTree(dst.path);
    before.delete('homeserver.db');
    for (const [key, entry] of before) expect([key, after.get(key)]).toEqual([key, entry]);
    expect(leftovers(shared)).toEqual([]);
    engine.close();
    restorer.close();
  });
});
