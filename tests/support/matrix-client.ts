/**
 * A small Matrix client for tests against a real Synapse (fetch only).
 *
 * Endpoints, from the Matrix client-server spec v1.11 and Synapse's admin API docs:
 * - shared-secret registration: GET/POST /_synapse/admin/v1/register, the MAC is
 *   HMAC-SHA1(secret, nonce \0 user \0 password \0 "admin"|"notadmin") in hex
 *   (synapse/rest/admin/users.py UserRegisterServlet);
 * - POST /_matrix/client/v3/login (m.login.password), POST /createRoom,
 *   PUT /rooms/{room}/send/m.room.message/{txn}, GET /rooms/{room}/messages;
 * - authenticated media (MSC3916, Synapse >= 1.111): POST /_matrix/media/v3/upload,
 *   GET /_matrix/client/v1/media/download/{server}/{id} and .../thumbnail/...;
 * - POST /_matrix/client/v3/keys/upload: one-time keys and their counts.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { crc32, deflateSync } from 'node:zlib';

export class MatrixError extends Error {
  constructor(
    readonly status: number,
    readonly errcode: string | undefined,
    message: string,
  ) {
    super(message);
    this.name = 'MatrixError';
  }
}

export interface Session {
  userId: string;
  accessToken: string;
  deviceId: string;
}

export class MatrixClient {
  private txn = 0;

  /** `baseUrl`: Synapse's client listener, e.g. http://127.0.0.1:8008. */
  constructor(readonly baseUrl: string) {}

  async request<T = Record<string, unknown>>(
    method: string,
    path: string,
    options: { token?: string; json?: unknown; body?: Buffer; contentType?: string } = {},
  ): Promise<T> {
    let response = await this.raw(method, path, options);
    // Rate limited (M_LIMIT_EXCEEDED): wait as told and try again, a bounded number of times.
    for (let attempt = 0; response.status === 429 && attempt < 10; attempt++) {
      const told = Number(((await response.json()) as { retry_after_ms?: number }).retry_after_ms);
      await new Promise((r) => setTimeout(r, Math.min(Number.isFinite(told) ? told : 1000, 5000)));
      response = await this.raw(method, path, options);
    }
    const text = await response.text();
    if (!response.ok) {
      let errcode: string | undefined;
      try {
        errcode = (JSON.parse(text) as { errcode?: string }).errcode;
      } catch {
        errcode = undefined;
      }
      throw new MatrixError(
        response.status,
        errcode,
        `${method} ${path}: HTTP ${response.status} ${text.slice(0, 300)}`,
      );
    }
    return (text ? JSON.parse(text) : {}) as T;
  }

  /** The response as it is (no status check). */
  raw(
    method: string,
    path: string,
    options: { token?: string; json?: unknown; body?: Buffer; contentType?: string } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = {};
    if (options.token) headers.Authorization = `Bearer ${options.token}`;
    let body: string | Buffer | undefined;
    if (options.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(options.json);
    } else if (options.body) {
      headers['Content-Type'] = options.contentType ?? 'application/octet-stream';
      body = options.body;
    }
    return fetch(`${this.baseUrl}${path}`, {
      method,
      headers,
      body,
      signal: AbortSignal.timeout(30_000),
    });
  }

  /** Registers a user with the registration shared secret (homeserver.yaml's). */
  async register(sharedSecret: string, username: string, password: string, admin = false) {
    const { nonce } = await this.request<{ nonce: string }>('GET', '/_synapse/admin/v1/register');
    const mac = createHmac('sha1', sharedSecret)
      .update([nonce, username, password, admin ? 'admin' : 'notadmin'].join('\0'))
      .digest('hex');
    return this.request<{ user_id: string; access_token: string; device_id: string }>(
      'POST',
      '/_synapse/admin/v1/register',
      { json: { nonce, username, password, admin, mac } },
    );
  }

  /** Lifts the rate limits of `userId` (admin API: override_ratelimit; needs an admin's token). */
  async unlimit(admin: Session, userId: string): Promise<void> {
    await this.request(
      'POST',
      `/_synapse/admin/v1/users/${encodeURIComponent(userId)}/override_ratelimit`,
      { token: admin.accessToken, json: { messages_per_second: 0, burst_count: 0 } },
    );
  }

  async login(username: string, password: string): Promise<Session> {
    const r = await this.request<{ user_id: string; access_token: string; device_id: string }>(
      'POST',
      '/_matrix/client/v3/login',
      {
        json: {
          type: 'm.login.password',
          identifier: { type: 'm.id.user', user: username },
          password,
        },
      },
    );
    return { userId: r.user_id, accessToken: r.access_token, deviceId: r.device_id };
  }

  async createRoom(s: Session, name: string): Promise<string> {
    const r = await this.request<{ room_id: string }>('POST', '/_matrix/client/v3/createRoom', {
      token: s.accessToken,
      json: { name, preset: 'private_chat' },
    });
    return r.room_id;
  }

  async sendText(s: Session, roomId: string, text: string): Promise<string> {
    const txn = `t${Date.now()}-${this.txn++}`;
    const r = await this.request<{ event_id: string }>(
      'PUT',
      `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`,
      { token: s.accessToken, json: { msgtype: 'm.text', body: text } },
    );
    return r.event_id;
  }

  /** The bodies of every m.room.message in the room, oldest first. */
  async messages(s: Session, roomId: string): Promise<string[]> {
    const bodies: string[] = [];
    let from: string | undefined;
    for (let page = 0; page < 100; page++) {
      const query = new URLSearchParams({ dir: 'b', limit: '500' });
      if (from) query.set('from', from);
      const r = await this.request<{
        chunk: { type: string; content: { body?: string } }[];
        end?: string;
      }>('GET', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?${query}`, {
        token: s.accessToken,
      });
      for (const e of r.chunk) {
        if (e.type === 'm.room.message' && typeof e.content.body === 'string') {
          bodies.push(e.content.body);
        }
      }
      if (!r.end || r.chunk.length === 0) break;
      from = r.end;
    }
    return bodies.reverse();
  }

  /** Uploads media; returns its mxc:// URI. */
  async upload(s: Session, data: Buffer, contentType: string, filename: string): Promise<string> {
    const r = await this.request<{ content_uri: string }>(
      'POST',
      `/_matrix/media/v3/upload?filename=${encodeURIComponent(filename)}`,
      { token: s.accessToken, body: data, contentType },
    );
    return r.content_uri;
  }

  /** Downloads media by its mxc:// URI; throws MatrixError (404 when it is gone). */
  async download(s: Session, mxc: string): Promise<Buffer> {
    const response = await this.raw('GET', `/_matrix/client/v1/media/download/${mxcPath(mxc)}`, {
      token: s.accessToken,
    });
    if (!response.ok) {
      throw new MatrixError(response.status, undefined, `download ${mxc}: HTTP ${response.status}`);
    }
    return Buffer.from(await response.arrayBuffer());
  }

  /** A thumbnail of image media (Synapse makes them with Pillow); returns its bytes and type. */
  async thumbnail(s: Session, mxc: string, size = 32): Promise<{ data: Buffer; type: string }> {
    const response = await this.raw(
      'GET',
      `/_matrix/client/v1/media/thumbnail/${mxcPath(mxc)}?width=${size}&height=${size}&method=scale`,
      { token: s.accessToken },
    );
    if (!response.ok) {
      throw new MatrixError(
        response.status,
        undefined,
        `thumbnail ${mxc}: HTTP ${response.status}`,
      );
    }
    return {
      data: Buffer.from(await response.arrayBuffer()),
      type: response.headers.get('content-type') ?? '',
    };
  }

  /** Uploads `count` signed_curve25519 one-time keys; returns the server's count afterwards. */
  async uploadOneTimeKeys(s: Session, count: number): Promise<number> {
    const keys: Record<string, unknown> = {};
    for (let i = 0; i < count; i++) {
      keys[`signed_curve25519:${randomBytes(4).toString('hex')}`] = {
        key: randomBytes(32).toString('base64').replace(/=+$/, ''),
        signatures: {
          [s.userId]: {
            [`ed25519:${s.deviceId}`]: randomBytes(64).toString('base64').replace(/=+$/, ''),
          },
        },
      };
    }
    return this.oneTimeKeyCount(s, keys);
  }

  /** The server's count of this device's unclaimed signed_curve25519 one-time keys. */
  async oneTimeKeyCount(s: Session, keys: Record<string, unknown> = {}): Promise<number> {
    const r = await this.request<{ one_time_key_counts: Record<string, number> }>(
      'POST',
      '/_matrix/client/v3/keys/upload',
      { token: s.accessToken, json: { one_time_keys: keys } },
    );
    return r.one_time_key_counts.signed_curve25519 ?? 0;
  }
}

function mxcPath(mxc: string): string {
  const m = /^mxc:\/\/([^/]+)\/([^/]+)$/.exec(mxc);
  if (!m) throw new Error(`not an mxc URI: ${mxc}`);
  return `${encodeURIComponent(m[1])}/${encodeURIComponent(m[2])}`;
}

/**
 * A real PNG (RGB, 8 bits, no interlace; PNG spec, ISO/IEC 15948) of `width` x `height`
 * with a gradient seeded by `seed`, so every image is different and Synapse can thumbnail it.
 */
export function makePng(width: number, height: number, seed: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, 'ascii');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0, 0);
    return Buffer.concat([head, data, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const rows = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) {
      rows[row + 1 + x * 3] = (x * 4 + seed) & 0xff;
      rows[row + 2 + x * 3] = (y * 4 + seed * 7) & 0xff;
      rows[row + 3 + x * 3] = (x * y + seed * 13) & 0xff;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(rows)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
