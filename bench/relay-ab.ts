/**
 * A/B of the websocket client on Pebble's exec relay: our UnixWebSocket
 * (src/workload/pebble/websocket.ts) against the `ws` package over the same
 * unix socket, streaming a command's stdout (`head -c <bytes> /dev/zero`)
 * through a real Pebble.
 *
 * Each run does what the relay does (Pebble's API, v1/exec and the task
 * websockets: POST /v1/exec, connect "stdio", "stderr" and "control", send
 * `{"command":"end"}` on stdio for a command without stdin, read stdout until
 * Pebble's end command, GET /v1/changes/<id>/wait) and pushes every piece into
 * a Readable with backpressure that a consumer drains, as PebbleExecProcess
 * does. The runs alternate between the clients; each reports its wall time,
 * this Node process's CPU time (process.cpuUsage: user + system) and Pebble's
 * (its /proc/<pid>/stat, with the children it reaped: head).
 *
 *   npx esbuild bench/relay-ab.ts --bundle --platform=node --target=node20 \
 *     --outfile=.bench/relay-ab.js && node .bench/relay-ab.js [--bytes N] [--runs 3]
 *
 * Pebble: $PEBBLE_BIN, or the one scripts/peers/install.sh built in
 * ~/.cache/synapse-backup-peers/bin/pebble.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { PebbleClient } from '../src/workload/pebble/client';
import { UnixWebSocket } from '../src/workload/pebble/websocket';

const END = '{"command":"end"}';

/** What a run needs from a websocket client: the events PebbleExecProcess uses. */
interface Client {
  onOpen(fn: () => void): void;
  onBinary(fn: (piece: Buffer) => void): void;
  onText(fn: (text: string) => void): void;
  sendText(text: string): void;
  pause(): void;
  resume(): void;
  close(): void;
}

function ours(socketPath: string, urlPath: string): Client {
  const ws = new UnixWebSocket(socketPath, urlPath);
  ws.on('error', () => undefined);
  return {
    onOpen: (fn) => ws.once('open', fn),
    onBinary: (fn) => ws.on('binary', fn),
    onText: (fn) => ws.on('text', fn),
    sendText: (text) => ws.send(text, () => undefined),
    pause: () => ws.pause(),
    resume: () => ws.resume(),
    close: () => ws.terminate(),
  };
}

const zeroMask = (mask: Buffer): void => {
  mask.fill(0);
};

function viaWs(socketPath: string, urlPath: string): Client {
  const ws = new WebSocket(`ws+unix://${socketPath}:${urlPath}`, {
    perMessageDeflate: false,
    generateMask: zeroMask,
  });
  ws.on('error', () => undefined);
  return {
    onOpen: (fn) => ws.once('open', fn),
    onBinary: (fn) =>
      ws.on('message', (data, isBinary) => {
        if (isBinary) fn(data as Buffer);
      }),
    onText: (fn) =>
      ws.on('message', (data, isBinary) => {
        if (!isBinary) fn((data as Buffer).toString('utf8'));
      }),
    sendText: (text) => ws.send(text),
    pause: () => ws.pause(),
    resume: () => ws.resume(),
    close: () => ws.terminate(),
  };
}

type Connect = (socketPath: string, urlPath: string) => Client;

/** Streams `bytes` of stdout through Pebble's relay with `connect`; resolves with the bytes read. */
async function relayRun(client: PebbleClient, connect: Connect, bytes: number): Promise<number> {
  const what = 'relay bench';
  const { changeId, result } = await client.async<{ 'task-id': string }>('POST', '/v1/exec', {
    what,
    body: { command: ['head', '-c', String(bytes), '/dev/zero'], 'split-stderr': true },
  });
  const task = `/v1/tasks/${encodeURIComponent(result['task-id'])}/websocket`;
  const stdio = connect(client.socketPath, `${task}/stdio`);
  const stderr = connect(client.socketPath, `${task}/stderr`);
  const control = connect(client.socketPath, `${task}/control`);
  stdio.onOpen(() => stdio.sendText(END));
  stderr.onBinary(() => undefined);
  const out = new Readable({ highWaterMark: 256 * 1024, read: () => stdio.resume() });
  stdio.onBinary((piece) => {
    if (!out.push(piece)) stdio.pause();
  });
  const ended = (c: Client) =>
    new Promise<void>((resolve) => c.onText((t) => t.includes('"end"') && resolve()));
  void ended(stdio).then(() => out.push(null));
  let received = 0;
  const consumed = new Promise<void>((resolve, reject) => {
    out.on('data', (chunk: Buffer) => (received += chunk.length));
    out.on('end', resolve);
    out.on('error', reject);
  });
  const [change] = await Promise.all([client.waitChange(changeId, what), consumed, ended(stderr)]);
  for (const c of [stdio, stderr, control]) c.close();
  const exitCode = change.tasks?.[0]?.data?.['exit-code'];
  if (exitCode !== 0) throw new Error(`head exited ${String(exitCode)}: ${change.err ?? ''}`);
  return received;
}

function pebbleCpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i]), 0);
  return ticks / Number(spawnSync('getconf', ['CLK_TCK']).stdout.toString().trim() || 100);
}

async function startPebble(dir: string): Promise<{ proc: ChildProcess; socketPath: string }> {
  const bin =
    process.env.PEBBLE_BIN ?? path.join(os.homedir(), '.cache/synapse-backup-peers/bin/pebble');
  const log = fs.openSync(path.join(dir, 'pebble.log'), 'a');
  const proc = spawn(bin, ['run', '--create-dirs', '--hold'], {
    env: { ...process.env, PEBBLE: dir },
    stdio: ['ignore', log, log],
  });
  const socketPath = path.join(dir, '.pebble.socket');
  const client = new PebbleClient(socketPath);
  for (let i = 0; ; i++) {
    const up = await client.sync('GET', '/v1/system-info', { what: 'probe' }).then(
      () => true,
      () => false,
    );
    if (up) return { proc, socketPath };
    if (i > 100 || proc.exitCode !== null) throw new Error(`pebble did not start; see ${dir}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Sample {
  client: string;
  wallS: number;
  nodeCpuS: number;
  pebbleCpuS: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { bytes: { type: 'string' }, runs: { type: 'string' } },
  });
  const bytes = Number(values.bytes ?? 1024 ** 3);
  const runs = Number(values.runs ?? 3);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-ab-'));
  const { proc, socketPath } = await startPebble(dir);
  const client = new PebbleClient(socketPath);
  const clients: [string, Connect][] = [
    ['ours (UnixWebSocket)', ours],
    ['ws', viaWs],
  ];
  const samples: Sample[] = [];
  try {
    await relayRun(client, ours, 64 * 1024 * 1024); // warm-up: JIT, Pebble's first exec
    await relayRun(client, viaWs, 64 * 1024 * 1024);
    for (let run = 0; run < runs; run++) {
      // Alternate which goes first, so a drift in the machine's load hits both alike.
      const order = run % 2 === 0 ? clients : [...clients].reverse();
      for (const [name, connect] of order) {
        const p0 = pebbleCpuSeconds(proc.pid!);
        const c0 = process.cpuUsage();
        const t0 = process.hrtime.bigint();
        const got = await relayRun(client, connect, bytes);
        const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
        const c = process.cpuUsage(c0);
        if (got !== bytes) throw new Error(`${name}: read ${got} bytes of ${bytes}`);
        const sample = {
          client: name,
          wallS: +wallS.toFixed(2),
          nodeCpuS: +((c.user + c.system) / 1e6).toFixed(2),
          pebbleCpuS: +(pebbleCpuSeconds(proc.pid!) - p0).toFixed(2),
        };
        samples.push(sample);
        console.log(JSON.stringify({ run: run + 1, ...sample }));
      }
    }
  } finally {
    proc.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (const [name] of clients) {
    const mine = samples.filter((s) => s.client === name);
    console.log(
      `${name}: median wall ${median(mine.map((s) => s.wallS))} s, node CPU ${median(mine.map((s) => s.nodeCpuS))} s, pebble CPU ${median(mine.map((s) => s.pebbleCpuS))} s (${runs} runs of ${bytes} bytes; load average ${os.loadavg()[0]!.toFixed(1)})`,
    );
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
