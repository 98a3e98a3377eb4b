/**
 * The Pebble transport's websocket client (src/workload/pebble/websocket.ts)
 * against a raw server on a unix socket that writes frames byte by byte, so
 * every header and payload boundary falls across socket reads.
 */
import { createHash } from 'node:crypto';
import * as net from 'node:net';
import * as path from 'node:path';
import { UnixWebSocket } from '../src/workload/pebble/websocket';
import { tmpDir } from './support/peers';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

function frame(
  opcode: number,
  payload: Buffer,
  { fin = true, mask = false }: { fin?: boolean; mask?: boolean } = {},
): Buffer {
  const len = payload.length;
  const ext = len < 126 ? 0 : len < 0x10000 ? 2 : 8;
  const head = Buffer.alloc(2 + ext + (mask ? 4 : 0));
  head[0] = (fin ? 0x80 : 0) | opcode;
  head[1] = (mask ? 0x80 : 0) | (ext === 0 ? len : ext === 2 ? 126 : 127);
  if (ext === 2) head.writeUInt16BE(len, 2);
  if (ext === 8) head.writeBigUInt64BE(BigInt(len), 2);
  return Buffer.concat([head, payload]);
}

interface ClientFrame {
  fin: boolean;
  opcode: number;
  masked: boolean;
  maskKey: Buffer;
  payload: Buffer;
}

/** Parses the frames a client sent (masked, as RFC 6455 requires). */
function parseClientFrames(data: Buffer): ClientFrame[] {
  const frames: ClientFrame[] = [];
  let at = 0;
  while (at < data.length) {
    const fin = (data[at]! & 0x80) !== 0;
    const opcode = data[at]! & 0x0f;
    const masked = (data[at + 1]! & 0x80) !== 0;
    let len = data[at + 1]! & 0x7f;
    at += 2;
    if (len === 126) {
      len = data.readUInt16BE(at);
      at += 2;
    } else if (len === 127) {
      len = Number(data.readBigUInt64BE(at));
      at += 8;
    }
    const maskKey = masked ? data.subarray(at, at + 4) : Buffer.alloc(0);
    at += masked ? 4 : 0;
    const payload = Buffer.from(data.subarray(at, at + len));
    if (masked) for (let i = 0; i < payload.length; i++) payload[i]! ^= maskKey[i % 4]!;
    at += len;
    frames.push({ fin, opcode, masked, maskKey, payload });
  }
  return frames;
}

/** Writes `data` one byte per write, each in its own socket read on the other side. */
async function trickle(socket: net.Socket, data: Buffer): Promise<void> {
  for (const byte of data) {
    await new Promise<void>((resolve) => socket.write(Buffer.from([byte]), () => resolve()));
    await new Promise((r) => setImmediate(r));
  }
}

interface Peer {
  socketPath: string;
  /** The server side of the next upgraded connection, and all it received after the upgrade. */
  connection: Promise<{ socket: net.Socket; received: () => Buffer }>;
  close: () => Promise<void>;
}

async function server(
  answer: (key: string) => string = (key) =>
    [
      'HTTP/1.1 101 Switching Protocols',
      'Upgrade: websocket',
      'Connection: Upgrade',
      `Sec-WebSocket-Accept: ${createHash('sha1')
        .update(key + GUID)
        .digest('base64')}`,
      '',
      '',
    ].join('\r\n'),
): Promise<Peer> {
  const dir = await tmpDir('ws');
  const socketPath = path.join(dir.path, 'ws.socket');
  let resolveConnection!: Peer['connection'] extends Promise<infer T> ? (v: T) => void : never;
  const connection = new Promise<{ socket: net.Socket; received: () => Buffer }>(
    (r) => (resolveConnection = r),
  );
  const sockets: net.Socket[] = [];
  const srv = net.createServer((socket) => {
    sockets.push(socket);
    let request = Buffer.alloc(0);
    let upgraded = false;
    const after: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => {
      if (upgraded) {
        after.push(chunk);
        return;
      }
      request = Buffer.concat([request, chunk]);
      const end = request.indexOf('\r\n\r\n');
      if (end < 0) return;
      upgraded = true;
      const key = /sec-websocket-key: *(\S+)/i.exec(request.subarray(0, end).toString())![1]!;
      socket.write(answer(key));
      if (request.length > end + 4) after.push(request.subarray(end + 4));
      resolveConnection({ socket, received: () => Buffer.concat(after) });
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((r) => srv.listen(socketPath, r));
  return {
    socketPath,
    connection,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => srv.close(r));
      await dir.cleanup();
    },
  };
}

function collect(ws: UnixWebSocket) {
  const events: string[] = [];
  const binary: Buffer[] = [];
  const closed = new Promise<number>((resolve) => ws.once('close', resolve));
  ws.on('binary', (piece) => binary.push(Buffer.from(piece)));
  ws.on('text', (text) => events.push(`text ${text}`));
  ws.on('error', (err) => events.push(`error ${err.message}`));
  return { events, binary, closed };
}

const opened = (ws: UnixWebSocket) => new Promise<void>((r) => ws.once('open', r));
const until = async (check: () => boolean) => {
  for (let i = 0; i < 500 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
};

describe('UnixWebSocket', () => {
  let peer: Peer;
  afterEach(async () => {
    await peer?.close();
  });

  test('fragmented binary, 16- and 64-bit lengths and a text message, one byte per read', async () => {
    peer = await server();
    const ws = new UnixWebSocket(peer.socketPath, '/v1/x');
    const got = collect(ws);
    const { socket } = await peer.connection;
    const big = Buffer.alloc(70_000, 7);
    const mid = Buffer.alloc(300, 3);
    await trickle(
      socket,
      Buffer.concat([
        frame(0x2, Buffer.from('ab'), { fin: false }),
        frame(0x0, mid, { fin: false }),
        frame(0x0, Buffer.from('cd')),
        frame(0x1, Buffer.from('{"command":'), { fin: false }),
        frame(0x0, Buffer.from('"end"}')),
        frame(0x2, Buffer.alloc(0)),
      ]),
    );
    socket.write(frame(0x2, big));
    await until(() => Buffer.concat(got.binary).length === 304 + big.length);
    expect(Buffer.concat(got.binary)).toEqual(
      Buffer.concat([Buffer.from('ab'), mid, Buffer.from('cd'), big]),
    );
    expect(got.events).toEqual(['text {"command":"end"}']);
    ws.terminate();
    expect(await got.closed).toBe(1006);
  });

  test('a ping is answered with its payload; a close is echoed and reported with its code', async () => {
    peer = await server();
    const ws = new UnixWebSocket(peer.socketPath, '/v1/x');
    const got = collect(ws);
    const { socket, received } = await peer.connection;
    await trickle(socket, frame(0x9, Buffer.from('hi')));
    const code = Buffer.alloc(2);
    code.writeUInt16BE(1000);
    await trickle(socket, frame(0x8, code));
    expect(await got.closed).toBe(1000);
    const frames = parseClientFrames(received());
    expect(frames.map((f) => [f.opcode, f.payload.toString('hex')])).toEqual([
      [0xa, Buffer.from('hi').toString('hex')],
      [0x8, '03e8'],
    ]);
    expect(got.events).toEqual([]);
  });

  test('sent messages are masked frames with an all-zero key, as text or binary', async () => {
    peer = await server();
    const ws = new UnixWebSocket(peer.socketPath, '/v1/x');
    await opened(ws);
    const { received } = await peer.connection;
    const sizes = [10, 300, 70_000];
    for (const size of sizes) {
      await new Promise<void>((resolve, reject) =>
        ws.send(Buffer.alloc(size, size % 251), (err) => (err ? reject(err) : resolve())),
      );
    }
    await new Promise<void>((resolve) => ws.send('{"command":"end"}', () => resolve()));
    // Headers: 6 + 8 + 14 bytes for the binary frames, 6 for the text.
    await until(() => received().length >= 10 + 300 + 70_000 + 17 + 34);
    const frames = parseClientFrames(received());
    expect(frames.map((f) => [f.fin, f.opcode, f.masked, f.maskKey.toString('hex')])).toEqual([
      [true, 0x2, true, '00000000'],
      [true, 0x2, true, '00000000'],
      [true, 0x2, true, '00000000'],
      [true, 0x1, true, '00000000'],
    ]);
    expect(frames.map((f) => f.payload.length)).toEqual([...sizes, 17]);
    expect(frames[2]!.payload.every((b) => b === 70_000 % 251)).toBe(true);
    expect(frames[3]!.payload.toString()).toBe('{"command":"end"}');
    ws.terminate();
  });

  test('a connection that drops without a close frame is closed 1006; sending then fails', async () => {
    peer = await server();
    const ws = new UnixWebSocket(peer.socketPath, '/v1/x');
    const got = collect(ws);
    const { socket } = await peer.connection;
    socket.destroy();
    expect(await got.closed).toBe(1006);
    const err = await new Promise<Error | undefined>((resolve) =>
      ws.send(Buffer.from('x'), resolve),
    );
    expect(err?.message).toBe('the websocket is not open');
  });

  test('a masked frame from the server is a protocol error', async () => {
    peer = await server();
    const ws = new UnixWebSocket(peer.socketPath, '/v1/x');
    const got = collect(ws);
    const { socket } = await peer.connection;
    socket.write(frame(0x2, Buffer.from('abcd'), { mask: true }));
    expect(await got.closed).toBe(1002);
    expect(got.events).toEqual(['error websocket protocol error: the server masked a frame']);
    expect(got.binary).toEqual([]);
  });

  test('a refused upgrade and a wrong accept key are errors', async () => {
    peer = await server(() => 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    let ws = new UnixWebSocket(peer.socketPath, '/v1/x');
    let got = collect(ws);
    expect(await got.closed).toBe(1006);
    expect(got.events).toEqual(['error unexpected server response: 404']);
    await peer.close();

    peer = await server(() =>
      [
        'HTTP/1.1 101 Switching Protocols',
        'Upgrade: websocket',
        'Connection: Upgrade',
        'Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=',
        '',
        '',
      ].join('\r\n'),
    );
    ws = new UnixWebSocket(peer.socketPath, '/v1/x');
    got = collect(ws);
    expect(await got.closed).toBe(1006);
    expect(got.events).toEqual([
      'error the server answered the websocket upgrade with a wrong accept key',
    ]);
  });

  test('no socket at the path is an error with its errno', async () => {
    const ws = new UnixWebSocket('/nonexistent/pebble.socket', '/v1/x');
    const got = collect(ws);
    expect(await got.closed).toBe(1006);
    expect(got.events).toEqual([expect.stringContaining('ENOENT')]);
  });
});
