/**
 * A recording proxy on a Pebble unix socket, for the fault suite. The charm is
 * pointed at the proxy's socket; everything passes through to the real Pebble
 * while the proxy
 *  - records every exec request (command, environment, working dir, raw body);
 *  - looks for watched secrets in everything sent towards the workload: request
 *    lines, headers and bodies, and (unmasked) websocket frames, i.e. the
 *    commands' stdin;
 *  - can hold a command's output after some bytes (the command then blocks on
 *    its pipe, mid-stream, for as long as the test wants);
 *  - can drop every connection at once (the charm's connection to Pebble breaks).
 */
import * as http from 'node:http';
import * as net from 'node:net';

/**
 * `argv` without the launchers in front of the command: the restore's flush loop
 * (src/backup/scripts/restore.ts extractionFlushLauncher: sh -c SCRIPT
 * synapse-backup DIR) and the data dir lock's (src/backup/scripts/lock.ts
 * recordRunLauncher: sh -c SCRIPT synapse-backup-run DATA_DIR TOKEN).
 */
export function withoutLauncher(argv: string[]): string[] {
  if (
    argv[0] === 'sh' &&
    argv[2]?.includes('synapse-backup-flush') &&
    argv[3] === 'synapse-backup'
  ) {
    return withoutLauncher(argv.slice(5));
  }
  return argv[0] === 'sh' && argv[3] === 'synapse-backup-run' ? argv.slice(6) : argv;
}

export interface ExecRecord {
  /** The command as the engine asked for it: without the data dir lock's launcher. */
  command: string[];
  /** What Pebble was asked to run: the launcher (if any), then the command. */
  launched: string[];
  environment?: Record<string, string>;
  workingDir?: string;
  /** The request body as sent. */
  body: string;
  taskId?: string;
}

export interface OutputHold {
  /** Resolves once the held command has produced `afterBytes` (and is now blocked). */
  reached: Promise<void>;
  /** Lets the output flow again (or withdraws the hold if no command met it yet). */
  release(): void;
}

export interface PebbleProxy {
  socketPath: string;
  execs: ExecRecord[];
  /** Secrets to look for in everything sent to Pebble. */
  watchSecrets(secrets: string[]): void;
  /**
   * A text the test knows will be sent (say, in a file a restore extracts):
   * where it is seen goes to `canarySightings`, proving the scanning sees it.
   */
  watchCanary(canary: string | undefined): void;
  canarySightings: string[];
  /** Where a watched secret was seen (empty: nowhere). */
  sightings: string[];
  /** Total bytes sent to Pebble (bodies and unmasked websocket payloads) that were scanned. */
  scannedBytes(): number;
  /** Holds the stdout of the next command matching `match` once `afterBytes` of it passed. */
  holdOutput(match: (command: string[]) => boolean, afterBytes: number): OutputHold;
  /**
   * Holds the next exec request matching `match` before Pebble sees it (the command has not
   * run). Released, it goes on to Pebble only if its client is still connected.
   */
  holdExec(match: (command: string[]) => boolean): OutputHold;
  /** Destroys every open connection, both sides (new ones are accepted as usual). */
  dropAll(): void;
  close(): Promise<void>;
}

interface PendingHold {
  match: (command: string[]) => boolean;
  afterBytes: number;
  reached: () => void;
  released: Promise<void>;
}

/** Finds secrets in a stream of chunks, including across chunk boundaries. */
class StreamScanner {
  private tail = Buffer.alloc(0);
  constructor(
    private readonly secrets: () => Buffer[],
    private readonly found: (index: number) => void,
  ) {}

  push(chunk: Buffer): void {
    const secrets = this.secrets();
    if (secrets.length === 0) return;
    const text = this.tail.length ? Buffer.concat([this.tail, chunk]) : chunk;
    secrets.forEach((secret, i) => {
      if (text.indexOf(secret) >= 0) this.found(i);
    });
    const keep = Math.max(...secrets.map((s) => s.length)) - 1;
    this.tail = Buffer.from(text.subarray(Math.max(0, text.length - keep)));
  }
}

/** Parses client-to-server websocket frames (masked) and hands over their unmasked payloads. */
class FrameParser {
  private chunks: Buffer[] = [];
  private length = 0;

  constructor(private readonly onPayload: (payload: Buffer) => void) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
    for (;;) {
      const header = this.peek(14);
      if (header.length < 2) return;
      let size = header[1] & 0x7f;
      let offset = 2;
      if (size === 126) {
        if (header.length < 4) return;
        size = header.readUInt16BE(2);
        offset = 4;
      } else if (size === 127) {
        if (header.length < 10) return;
        size = Number(header.readBigUInt64BE(2));
        offset = 10;
      }
      const masked = (header[1] & 0x80) !== 0;
      const maskOffset = offset;
      if (masked) offset += 4;
      if (this.length < offset + size) return;
      const frame = this.take(offset + size);
      const payload = Buffer.from(frame.subarray(offset));
      if (masked) {
        const mask = frame.subarray(maskOffset, maskOffset + 4);
        for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
      }
      this.onPayload(payload);
    }
  }

  private peek(n: number): Buffer {
    if (this.chunks.length === 0) return Buffer.alloc(0);
    if (this.chunks[0].length >= n || this.chunks.length === 1) return this.chunks[0];
    const all = Buffer.concat(this.chunks);
    this.chunks = [all];
    return all;
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.length = rest.length;
    return out;
  }
}

export async function startPebbleProxy(
  targetSocket: string,
  socketPath: string,
): Promise<PebbleProxy> {
  const execs: ExecRecord[] = [];
  const sightings: string[] = [];
  const canarySightings: string[] = [];
  let canary: Buffer | undefined;
  const sockets = new Set<net.Socket>();
  const holds: PendingHold[] = [];
  const execHolds: Omit<PendingHold, 'afterBytes'>[] = [];
  let secrets: Buffer[] = [];
  let scanned = 0;

  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
  };
  const scanner = (where: () => string) =>
    new StreamScanner(
      () => (canary ? [...secrets, canary] : secrets),
      (i) =>
        i < secrets.length
          ? sightings.push(`secret #${i + 1} in ${where()}`)
          : canarySightings.push(where()),
    );
  const scanText = (text: Buffer, where: string) => {
    scanned += text.length;
    scanner(() => where).push(text);
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const what = `${req.method} ${req.url}`;
      scanText(
        Buffer.from(`${what}\n${req.rawHeaders.join('\n')}`),
        `${what} (request line and headers)`,
      );
      scanText(body, `${what} (body)`);
      let exec: ExecRecord | undefined;
      if (req.method === 'POST' && req.url === '/v1/exec') {
        const parsed = JSON.parse(body.toString()) as {
          command: string[];
          environment?: Record<string, string>;
          'working-dir'?: string;
        };
        exec = {
          command: withoutLauncher(parsed.command),
          launched: parsed.command,
          environment: parsed.environment,
          workingDir: parsed['working-dir'],
          body: body.toString(),
        };
        execs.push(exec);
      }
      const index = exec ? execHolds.findIndex((h) => h.match(exec.command)) : -1;
      if (index < 0) return forward(body, exec);
      const [held] = execHolds.splice(index, 1);
      let gone = false;
      req.socket.once('close', () => (gone = true));
      held.reached();
      void held.released.then(() =>
        setImmediate(() => (gone || req.socket.destroyed ? res.destroy() : forward(body, exec))),
      );
    });

    function forward(body: Buffer, exec: ExecRecord | undefined): void {
      const out = http.request(
        {
          socketPath: targetSocket,
          method: req.method,
          path: req.url,
          headers: req.headers,
          agent: false,
        },
        (up) => {
          if (!exec) {
            res.writeHead(up.statusCode ?? 502, up.headers);
            up.pipe(res);
            return;
          }
          const got: Buffer[] = [];
          up.on('data', (c: Buffer) => got.push(c));
          up.on('end', () => {
            const text = Buffer.concat(got);
            try {
              const reply = JSON.parse(text.toString()) as { result?: { 'task-id'?: string } };
              exec.taskId = reply.result?.['task-id'];
            } catch {
              // not JSON: the client will say so
            }
            res.writeHead(up.statusCode ?? 502, up.headers);
            res.end(text);
          });
        },
      );
      out.on('socket', track);
      out.on('error', () => res.destroy());
      out.end(body);
    }
  });

  server.on('connection', track);

  server.on('upgrade', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    const what = `${req.method} ${req.url}`;
    scanText(
      Buffer.from(`${what}\n${req.rawHeaders.join('\n')}`),
      `${what} (request line and headers)`,
    );
    const upstream = net.connect(targetSocket);
    track(upstream);
    const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    }
    upstream.write(`${lines.join('\r\n')}\r\n\r\n`);

    const taskId = /^\/v1\/tasks\/([^/]+)\/websocket\/(stdio|stderr|control)$/.exec(req.url ?? '');
    const exec = taskId ? execs.find((e) => e.taskId === decodeURIComponent(taskId[1])) : undefined;
    const label = exec ? `websocket ${taskId![2]} of ${JSON.stringify(exec.command[0])}` : what;
    const frames = scanner(() => `${label} (payload)`);
    const parser = new FrameParser((payload) => {
      scanned += payload.length;
      frames.push(payload);
    });
    if (head.length) parser.push(head);
    client.on('data', (chunk: Buffer) => parser.push(chunk));
    if (head.length) upstream.write(head);
    client.pipe(upstream);

    let hold: PendingHold | undefined;
    if (exec && taskId![2] === 'stdio') {
      const index = holds.findIndex((h) => h.match(exec.command));
      if (index >= 0) [hold] = holds.splice(index, 1);
    }
    let forwarded = 0;
    let holding = false;
    upstream.on('data', (chunk: Buffer) => {
      const ok = client.write(chunk);
      forwarded += chunk.length;
      if (hold && forwarded >= hold.afterBytes) {
        const h = hold;
        hold = undefined;
        holding = true;
        upstream.pause();
        h.reached();
        void h.released.then(() => {
          holding = false;
          upstream.resume();
        });
      } else if (!ok) upstream.pause();
    });
    client.on('drain', () => {
      if (!holding) upstream.resume();
    });
    upstream.on('close', () => client.destroy());
    client.on('close', () => upstream.destroy());
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  server.unref(); // a forgotten proxy must not keep jest alive

  return {
    socketPath,
    execs,
    sightings,
    canarySightings,
    watchCanary(text) {
      canary = text ? Buffer.from(text) : undefined;
    },
    watchSecrets(list) {
      secrets = list.filter((s) => s.length >= 4).map((s) => Buffer.from(s));
    },
    scannedBytes: () => scanned,
    holdOutput(match, afterBytes) {
      let reached!: () => void;
      let release!: () => void;
      const reachedP = new Promise<void>((r) => (reached = r));
      const released = new Promise<void>((r) => (release = r));
      const hold: PendingHold = { match, afterBytes, reached, released };
      holds.push(hold);
      return {
        reached: reachedP,
        release() {
          // A hold no command met yet is withdrawn.
          if (holds.includes(hold)) holds.splice(holds.indexOf(hold), 1);
          release();
        },
      };
    },
    holdExec(match) {
      let reached!: () => void;
      let release!: () => void;
      const reachedP = new Promise<void>((r) => (reached = r));
      const released = new Promise<void>((r) => (release = r));
      const hold = { match, reached, released };
      execHolds.push(hold);
      return {
        reached: reachedP,
        release() {
          if (execHolds.includes(hold)) execHolds.splice(execHolds.indexOf(hold), 1);
          release();
        },
      };
    },
    dropAll() {
      for (const socket of sockets) socket.destroy();
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
