/**
 * Why our own client and not `ws` (which the Kubernetes transport uses):
 * measured again once the relay had become only the fallback of the direct
 * socket (bench/relay-ab.ts: 1 GiB of `head -c 1073741824 /dev/zero` stdout
 * through a real Pebble 1.26 exec relay, each run pushed into a Readable with
 * backpressure, runs interleaved; 2 cores shared with other work, load 5):
 *
 *   run set  client  wall s (3 runs, median)   Node CPU s (3 runs, median)
 *   1        ours    3.82 3.21 3.50   (3.50)    0.75 0.62 0.68   (0.68)
 *   1        ws      4.27 3.97 3.64   (3.97)    1.00 0.99 0.83   (0.99)
 *   2        ours    3.26 4.05 4.37   (4.05)    0.69 0.66 0.79   (0.69)
 *   2        ws      3.56 4.11 4.66   (4.11)    0.83 0.87 1.04   (0.87)
 *
 * ws took 26-46% more of the engine's CPU (0.2-0.3 s per GiB: it copies each
 * 128 KiB message that spans socket reads) and 1-13% more wall time; Pebble's
 * own CPU was alike with either (3.1-4.3 s a run). Over 10% on CPU: ours stays.
 */
import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import http from 'node:http';
import type { Socket } from 'node:net';

/** RFC 6455 section 1.3: appended to the key before hashing it into Sec-WebSocket-Accept. */
const ACCEPT_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const enum Opcode {
  Continuation = 0x0,
  Text = 0x1,
  Binary = 0x2,
  Close = 0x8,
  Ping = 0x9,
  Pong = 0xa,
}
/** Text messages here are Pebble's small JSON commands; anything larger is not Pebble. */
const MAX_TEXT_BYTES = 64 * 1024;
/** Close code for a connection that ended without a close frame (RFC 6455 section 7.4.1). */
export const ABNORMAL_CLOSURE = 1006;
const PROTOCOL_ERROR = 1002;

export interface UnixWebSocketEvents {
  open: [];
  /** A piece of a binary message, in order; pieces are views of the socket's own reads. */
  binary: [piece: Buffer];
  text: [text: string];
  /** Once, when the connection is gone; `code` is the peer's close code or 1006. */
  close: [code: number];
  error: [err: Error];
}

/**
 * A websocket client over a unix socket that hands binary payloads on as views
 * of the buffers the socket read, never copied or reassembled into messages.
 *
 * `ws` copies every message that spans socket reads into a new buffer, and
 * Pebble's 128 KiB messages always span the socket's 64 KiB reads: a GiB of
 * backup cost a GiB of allocations, half a second of copying and most of the
 * engine's garbage collection. A consumer of a byte stream does not need
 * message boundaries, so this client does not keep them for binary data.
 *
 * Client frames are masked with an all-zero key, which leaves the payload as it
 * is: masking protects HTTP intermediaries from a browser's crafted frames
 * (RFC 6455 section 10.3), and this is a unix socket with none in between.
 */
export class UnixWebSocket extends EventEmitter<UnixWebSocketEvents> {
  state: 'connecting' | 'open' | 'closed' = 'connecting';
  private socket: Socket | null = null;
  private readonly request: http.ClientRequest;
  private closeCode = ABNORMAL_CLOSURE;
  private closeSent = false;
  private closeReceived = false;

  // Frame parser state.
  private readonly header = Buffer.alloc(14);
  private headerBytes = 0;
  private payloadLeft = 0;
  private inPayload = false;
  private frameOpcode = Opcode.Continuation;
  private frameFinal = false;
  /** The type of the message being received (a continuation frame continues it). */
  private messageOpcode: Opcode.Text | Opcode.Binary | null = null;
  private textParts: Buffer[] = [];
  private textBytes = 0;
  private controlParts: Buffer[] = [];

  constructor(socketPath: string, path: string) {
    super();
    const key = randomBytes(16).toString('base64');
    this.request = http.request({
      socketPath,
      path,
      agent: false,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': key,
      },
    });
    this.request.once('upgrade', (res, socket, head) => {
      const expected = createHash('sha1')
        .update(key + ACCEPT_GUID)
        .digest('base64');
      if (res.headers['sec-websocket-accept'] !== expected) {
        socket.destroy();
        this.fail(new Error('the server answered the websocket upgrade with a wrong accept key'));
        return;
      }
      this.attach(socket, head);
    });
    this.request.once('response', (res) => {
      res.resume();
      this.fail(new Error(`unexpected server response: ${res.statusCode ?? '?'}`));
    });
    this.request.once('error', (err) => this.fail(err));
    this.request.end();
  }

  /** Sends one binary or text message; `callback` runs once it is handed to the kernel. */
  send(data: Buffer | string, callback: (err?: Error) => void): void {
    const socket = this.socket;
    if (this.state !== 'open' || !socket || this.closeSent) {
      process.nextTick(callback, new Error('the websocket is not open'));
      return;
    }
    const binary = typeof data !== 'string';
    const payload = binary ? data : Buffer.from(data);
    socket.cork();
    socket.write(frameHeader(binary ? Opcode.Binary : Opcode.Text, payload.length));
    socket.write(payload, (err) => callback(err ?? undefined));
    socket.uncork();
  }

  /** Stops reading: the peer's writes block once the socket buffers fill. */
  pause(): void {
    this.socket?.pause();
  }

  resume(): void {
    this.socket?.resume();
  }

  /** Drops the connection at once, without a closing handshake. */
  terminate(): void {
    if (this.state === 'closed') return;
    if (this.socket) this.socket.destroy();
    else {
      this.request.destroy();
      this.finish();
    }
  }

  private attach(socket: Socket, head: Buffer): void {
    this.socket = socket;
    this.state = 'open';
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    socket.on('error', (err) => this.emit('error', err));
    socket.on('close', () => this.finish());
    this.emit('open');
    if (head.length > 0) this.receive(head);
  }

  private fail(err: Error): void {
    if (this.state === 'closed') return;
    this.emit('error', err);
    this.finish();
  }

  private finish(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.emit('close', this.closeCode);
  }

  private protocolError(message: string): void {
    this.closeCode = PROTOCOL_ERROR;
    this.emit('error', new Error(`websocket protocol error: ${message}`));
    this.socket?.destroy();
  }

  private receive(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length && !this.closeReceived && !this.socket?.destroyed) {
      if (!this.inPayload) {
        offset = this.readHeader(chunk, offset);
        continue;
      }
      const n = Math.min(this.payloadLeft, chunk.length - offset);
      const piece = chunk.subarray(offset, offset + n);
      offset += n;
      this.payloadLeft -= n;
      this.payload(piece);
      if (this.payloadLeft === 0) this.endFrame();
    }
  }

  /** Copies header bytes until the header is whole, then starts the frame. */
  private readHeader(chunk: Buffer, offset: number): number {
    const h = this.header;
    while (offset < chunk.length) {
      h[this.headerBytes++] = chunk[offset++]!;
      if (this.headerBytes < 2) continue;
      const len7 = h[1]! & 0x7f;
      const needed = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (h[1]! & 0x80 ? 4 : 0);
      if (this.headerBytes < needed) continue;
      this.headerBytes = 0;
      this.startFrame(h, len7);
      return offset;
    }
    return offset;
  }

  private startFrame(h: Buffer, len7: number): void {
    const final = (h[0]! & 0x80) !== 0;
    const opcode = (h[0]! & 0x0f) as Opcode;
    if (h[0]! & 0x70) return this.protocolError('reserved bits set (no extension was agreed)');
    if (h[1]! & 0x80) return this.protocolError('the server masked a frame');
    let length = len7;
    if (len7 === 126) length = h.readUInt16BE(2);
    else if (len7 === 127) {
      const big = h.readBigUInt64BE(2);
      if (big > BigInt(Number.MAX_SAFE_INTEGER)) return this.protocolError('frame too long');
      length = Number(big);
    }
    if (opcode >= Opcode.Close) {
      if (!final || length > 125) return this.protocolError('fragmented or long control frame');
    } else if (opcode === Opcode.Continuation) {
      if (this.messageOpcode === null) return this.protocolError('continuation of no message');
    } else if (opcode === Opcode.Text || opcode === Opcode.Binary) {
      if (this.messageOpcode !== null) return this.protocolError('new message inside a message');
      this.messageOpcode = opcode;
    } else {
      return this.protocolError(`unknown opcode ${opcode}`);
    }
    this.frameOpcode = opcode;
    this.frameFinal = final;
    this.payloadLeft = length;
    this.inPayload = true;
    if (length === 0) this.endFrame();
  }

  private payload(piece: Buffer): void {
    if (this.frameOpcode >= Opcode.Close) {
      this.controlParts.push(piece);
    } else if (this.messageOpcode === Opcode.Binary) {
      this.emit('binary', piece);
    } else {
      this.textBytes += piece.length;
      if (this.textBytes > MAX_TEXT_BYTES) return this.protocolError('text message too long');
      this.textParts.push(piece);
    }
  }

  private endFrame(): void {
    this.inPayload = false;
    const opcode = this.frameOpcode;
    if (opcode >= Opcode.Close) {
      const body = Buffer.concat(this.controlParts);
      this.controlParts = [];
      this.control(opcode, body);
      return;
    }
    if (!this.frameFinal) return;
    if (this.messageOpcode === Opcode.Text) {
      const text = Buffer.concat(this.textParts, this.textBytes).toString('utf8');
      this.textParts = [];
      this.textBytes = 0;
      this.messageOpcode = null;
      this.emit('text', text);
      return;
    }
    this.messageOpcode = null;
  }

  private control(opcode: Opcode, body: Buffer): void {
    const socket = this.socket!;
    if (opcode === Opcode.Ping) {
      if (!this.closeSent)
        socket.write(Buffer.concat([frameHeader(Opcode.Pong, body.length), body]));
      return;
    }
    if (opcode !== Opcode.Close) return;
    this.closeReceived = true;
    this.closeCode = body.length >= 2 ? body.readUInt16BE(0) : 1005;
    if (!this.closeSent) {
      this.closeSent = true;
      const reply = body.subarray(0, Math.min(body.length, 2));
      socket.end(Buffer.concat([frameHeader(Opcode.Close, reply.length), reply]));
    }
  }
}

/** A client frame header: FIN, the opcode, the length and an all-zero masking key. */
function frameHeader(opcode: Opcode, length: number): Buffer {
  let header: Buffer;
  if (length < 126) {
    header = Buffer.alloc(6);
    header[1] = 0x80 | length;
  } else if (length < 0x10000) {
    header = Buffer.alloc(8);
    header[1] = 0x80 | 126;
    header.writeUInt16BE(length, 2);
  } else {
    header = Buffer.alloc(14);
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(length), 2);
  }
  header[0] = 0x80 | opcode;
  return header;
}
