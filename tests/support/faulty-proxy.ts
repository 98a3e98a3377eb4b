/**
 * A fault-injecting HTTP proxy in front of an S3 server (MinIO), for the fault
 * suite. The client talks to the proxy as if it were S3 (path-style URLs; the
 * signature covers the proxy's host, which is passed through unchanged), and
 * rules decide, per S3 operation, whether a request is forwarded, answered
 * with an S3 error, cut off with a TCP reset after some bytes, or held.
 *
 *   const proxy = await startFaultyProxy(minio.endpoint);
 *   proxy.addRule({ op: 'UploadPart', fault: slowDown(), times: 1 });
 *   // ...point the client at proxy.endpoint...
 */
import * as http from 'node:http';
import type * as net from 'node:net';

export type S3Op =
  | 'UploadPart'
  | 'CreateMultipartUpload'
  | 'CompleteMultipartUpload'
  | 'AbortMultipartUpload'
  | 'ListMultipartUploads'
  | 'PutObject'
  | 'GetObject'
  | 'HeadObject'
  | 'DeleteObject'
  | 'ListObjects'
  | 'HeadBucket'
  | 'Other';

/** Names the S3 operation of a path-style request. */
export function classifyS3Request(method: string, url: string): S3Op {
  const parsed = new URL(url, 'http://proxy');
  const q = parsed.searchParams;
  const hasKey = parsed.pathname.replace(/^\/+/, '').includes('/');
  switch (method) {
    case 'PUT':
      if (q.has('partNumber') && q.has('uploadId')) return 'UploadPart';
      return hasKey ? 'PutObject' : 'Other';
    case 'POST':
      if (q.has('uploads')) return 'CreateMultipartUpload';
      if (q.has('uploadId')) return 'CompleteMultipartUpload';
      return 'Other';
    case 'DELETE':
      if (q.has('uploadId')) return 'AbortMultipartUpload';
      return hasKey ? 'DeleteObject' : 'Other';
    case 'GET':
      if (!hasKey && q.has('uploads')) return 'ListMultipartUploads';
      if (!hasKey) return 'ListObjects';
      return 'GetObject';
    case 'HEAD':
      return hasKey ? 'HeadObject' : 'HeadBucket';
    default:
      return 'Other';
  }
}

export type Fault =
  /** Answer with an S3 XML error (after reading the request body, as S3 does). */
  | { kind: 'error'; status: number; code: string; message: string }
  /** Forward, but reset the client's TCP connection after `afterBytes` bytes of request body. */
  | { kind: 'reset'; afterBytes: number }
  /**
   * Hold the request (reading nothing) until `release` settles (or the promise
   * it returns); the rules then in force decide what becomes of it.
   */
  | { kind: 'stall'; release: Promise<unknown> | (() => Promise<unknown>) }
  /**
   * Stop mid-body, for good, the connection left open: a request with a body
   * (UploadPart, PutObject) has `afterBytes` of it read and then no more, and
   * gets no answer; any other (GetObject) is forwarded and its answer stops
   * after `afterBytes` of body. S3 has stopped answering.
   */
  | { kind: 'stall-body'; afterBytes: number }
  /** Forward with byte `at` of the request body inverted: corrupted on the way. */
  | { kind: 'flip-byte'; at: number }
  /**
   * Forward, and drop the `x-amz-checksum-*` headers from the answer: a server
   * that does not do S3's additional checksums (it neither checks nor echoes them).
   */
  | { kind: 'strip-checksums' }
  /**
   * Read the whole (small) body, as the server does with a CompleteMultipartUpload,
   * and answer with this S3 error when it matches `body`; otherwise forward it as
   * read. The body is kept in the log entry either way.
   */
  | { kind: 'error-if-body'; body: RegExp; status: number; code: string; message: string };

export const internalError = (): Fault => ({
  kind: 'error',
  status: 500,
  code: 'InternalError',
  message: 'We encountered an internal error. Please try again.',
});
export const serviceUnavailable = (): Fault => ({
  kind: 'error',
  status: 503,
  code: 'ServiceUnavailable',
  message: 'The service is unavailable. Please retry.',
});
export const slowDown = (): Fault => ({
  kind: 'error',
  status: 503,
  code: 'SlowDown',
  message: 'Please reduce your request rate.',
});

export interface FaultRule {
  /** Which operation(s) the rule applies to. */
  op: S3Op | S3Op[];
  /** Only requests whose path (key) this matches, when given. */
  key?: RegExp;
  fault: Fault;
  /** Let this many matching requests through first (default 0). */
  skip?: number;
  /** Apply to at most this many requests (default: all). */
  times?: number;
  /** Only requests that carry this header (lower case), when given. */
  header?: string;
}

export interface ProxyLogEntry {
  op: S3Op;
  method: string;
  path: string;
  /** The fault applied, if any. */
  fault?: Fault['kind'];
  status?: number;
  /** The request's `x-amz-content-sha256`: `UNSIGNED-PAYLOAD` or the body's signed SHA-256. */
  payload?: string;
  /** The request's `x-amz-checksum-crc32`, if it had one. */
  crc32?: string;
  /** The answer's `x-amz-checksum-crc32` as the client got it (after 'strip-checksums'). */
  answerCrc32?: string;
  /** The request body, for the requests an 'error-if-body' rule read whole. */
  body?: string;
}

export interface FaultyProxy {
  /** http://127.0.0.1:port: what the client uses as its S3 endpoint. */
  endpoint: string;
  /** Every request seen, in order. */
  log: ProxyLogEntry[];
  /** Every object key an upload (CreateMultipartUpload, UploadPart, PutObject) was sent for. */
  keys: Set<string>;
  addRule(rule: FaultRule): void;
  clearRules(): void;
  /**
   * While on, every TCP connection is reset as it arrives, and switching it on
   * resets the open ones: the server is gone, as far as the client can tell.
   */
  setRefusing(on: boolean): void;
  /** Requests currently held by a stall rule. */
  stalled(): number;
  close(): Promise<void>;
}

interface LiveRule extends FaultRule {
  seen: number;
  applied: number;
}

function errorXml(
  fault: Extract<Fault, { kind: 'error' | 'error-if-body' }>,
  resource: string,
): string {
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  return (
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    `<Error><Code>${esc(fault.code)}</Code><Message>${esc(fault.message)}</Message>` +
    `<Resource>${esc(resource)}</Resource><RequestId>FAULTYPROXY</RequestId></Error>`
  );
}

export async function startFaultyProxy(target: string): Promise<FaultyProxy> {
  const upstream = new URL(target);
  if (upstream.protocol !== 'http:') throw new Error('the faulty proxy forwards to http:// only');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  const rules: LiveRule[] = [];
  const log: ProxyLogEntry[] = [];
  const keys = new Set<string>();
  const sockets = new Set<net.Socket>();
  let refusing = false;
  let stalledNow = 0;

  const pick = (op: S3Op, path: string, req: http.IncomingMessage): Fault | undefined => {
    for (const rule of rules) {
      const ops = Array.isArray(rule.op) ? rule.op : [rule.op];
      if (!ops.includes(op) || (rule.key && !rule.key.test(new URL(path, 'http://p').pathname)))
        continue;
      if (rule.header && req.headers[rule.header] === undefined) continue;
      rule.seen++;
      if (rule.seen <= (rule.skip ?? 0)) continue;
      if (rule.applied >= (rule.times ?? Infinity)) continue;
      rule.applied++;
      return rule.fault;
    }
    return undefined;
  };

  /** Invites the body of an `Expect: 100-continue` request, once it is going to be read. */
  const readBody = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (/100-continue/i.test(req.headers.expect ?? '')) res.writeContinue();
  };

  const forward = (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    entry: ProxyLogEntry,
    resetAfter?: number,
    change?: Extract<Fault, { kind: 'flip-byte' | 'strip-checksums' }>,
    bodyRead?: Buffer,
  ): void => {
    if (!bodyRead) readBody(req, res);
    const headers = { ...req.headers };
    // Unsigned hop-by-hop headers: the proxy speaks for itself to the server.
    delete headers.expect;
    delete headers.connection;
    const out = http.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers,
        agent,
      },
      (up) => {
        entry.status = up.statusCode;
        const answer = { ...up.headers };
        if (change?.kind === 'strip-checksums') {
          for (const name of Object.keys(answer)) {
            if (name.startsWith('x-amz-checksum-')) delete answer[name];
          }
        }
        const echoed = answer['x-amz-checksum-crc32'];
        if (typeof echoed === 'string') entry.answerCrc32 = echoed;
        res.writeHead(up.statusCode ?? 502, answer);
        up.pipe(res);
        up.on('error', () => res.destroy());
      },
    );
    out.on('error', () => {
      if (!res.headersSent) {
        res.writeHead(502);
        res.end();
      } else res.destroy();
    });
    if (bodyRead) {
      out.end(bodyRead);
      return;
    }
    if (change?.kind === 'flip-byte') {
      let bytes = 0;
      req.on('data', (chunk: Buffer) => {
        if (change.at >= bytes && change.at < bytes + chunk.length) {
          const copy = Buffer.from(chunk);
          copy[change.at - bytes] ^= 0xff;
          chunk = copy;
        }
        bytes += chunk.length;
        if (!out.write(chunk)) req.pause();
      });
      out.on('drain', () => req.resume());
      req.on('end', () => out.end());
      return;
    }
    if (resetAfter === undefined) {
      req.pipe(out);
      return;
    }
    let bytes = 0;
    req.on('data', (chunk: Buffer) => {
      if (bytes + chunk.length >= resetAfter) {
        out.write(chunk.subarray(0, Math.max(0, resetAfter - bytes)));
        bytes = resetAfter;
        out.destroy();
        req.socket.resetAndDestroy();
        return;
      }
      bytes += chunk.length;
      if (!out.write(chunk)) req.pause();
    });
    out.on('drain', () => req.resume());
    req.on('end', () => out.end());
  };

  /** Request headers without the hop-by-hop ones (unsigned): the proxy speaks for itself. */
  const hopless = (headers: http.IncomingHttpHeaders): http.OutgoingHttpHeaders => {
    const out = { ...headers };
    delete out.expect;
    delete out.connection;
    return out;
  };

  /** The 'stall-body' fault (see Fault). */
  const stallBody = (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    entry: ProxyLogEntry,
    afterBytes: number,
  ): void => {
    stalledNow++;
    res.once('close', () => stalledNow--);
    const hasBody =
      Number(req.headers['content-length'] ?? 0) > 0 || 'transfer-encoding' in req.headers;
    if (hasBody) {
      readBody(req, res);
      let bytes = 0;
      req.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes >= afterBytes) req.pause();
      });
      return;
    }
    const out = http.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: hopless(req.headers),
        agent,
      },
      (up) => {
        entry.status = up.statusCode;
        res.writeHead(up.statusCode ?? 502, up.headers);
        let bytes = 0;
        up.on('data', (chunk: Buffer) => {
          const room = afterBytes - bytes;
          if (room > 0) res.write(chunk.subarray(0, room));
          bytes += chunk.length;
          if (bytes >= afterBytes) up.pause();
        });
      },
    );
    out.on('error', () => res.destroy());
    res.once('close', () => out.destroy());
    req.pipe(out);
  };

  /** Answers with the S3 error `fault` names, once the request body has been read. */
  const answerError = (
    res: http.ServerResponse,
    entry: ProxyLogEntry,
    fault: Extract<Fault, { kind: 'error' | 'error-if-body' }>,
  ): void => {
    const body = errorXml(fault, new URL(entry.path, 'http://proxy').pathname);
    entry.status = fault.status;
    res.writeHead(fault.status, {
      'Content-Type': 'application/xml',
      'Content-Length': Buffer.byteLength(body),
      'x-amz-request-id': 'FAULTYPROXY',
    });
    res.end(body);
  };

  /** Applies the first rule that takes this request, or forwards it. */
  const handle = (req: http.IncomingMessage, res: http.ServerResponse, entry: ProxyLogEntry) => {
    const fault = pick(entry.op, entry.path, req);
    if (!fault) return forward(req, res, entry);
    entry.fault = fault.kind;
    switch (fault.kind) {
      case 'error': {
        readBody(req, res);
        req.resume();
        req.on('end', () => answerError(res, entry, fault));
        return;
      }
      case 'error-if-body': {
        readBody(req, res);
        const chunks: Buffer[] = [];
        req.on('data', (chunk: Buffer) => chunks.push(chunk));
        req.on('end', () => {
          const body = Buffer.concat(chunks);
          entry.body = body.toString('utf8');
          if (fault.body.test(entry.body)) answerError(res, entry, fault);
          else forward(req, res, entry, undefined, undefined, body);
        });
        return;
      }
      case 'reset':
        return forward(req, res, entry, fault.afterBytes);
      case 'flip-byte':
      case 'strip-checksums':
        return forward(req, res, entry, undefined, fault);
      case 'stall-body':
        return stallBody(req, res, entry, fault.afterBytes);
      case 'stall': {
        stalledNow++;
        req.pause();
        const release = typeof fault.release === 'function' ? fault.release() : fault.release;
        // Once released, the request meets the rules as they are then.
        void release.finally(() => {
          stalledNow--;
          if (!req.socket.destroyed) handle(req, res, entry);
        });
        return;
      }
    }
  };

  const server = http.createServer((req, res) => {
    const path = req.url ?? '/';
    const op = classifyS3Request(req.method ?? 'GET', path);
    const entry: ProxyLogEntry = { op, method: req.method ?? '', path };
    const payload = req.headers['x-amz-content-sha256'];
    if (typeof payload === 'string') entry.payload = payload;
    const crc32 = req.headers['x-amz-checksum-crc32'];
    if (typeof crc32 === 'string') entry.crc32 = crc32;
    log.push(entry);
    const { pathname } = new URL(path, 'http://proxy');
    if (op === 'CreateMultipartUpload' || op === 'UploadPart' || op === 'PutObject') {
      keys.add(decodeURIComponent(pathname.split('/').slice(2).join('/')));
    }
    handle(req, res, entry);
  });
  // Answer `Expect: 100-continue` only once the request is actually being read (see readBody).
  server.on('checkContinue', (req, res) => server.emit('request', req, res));
  server.keepAliveTimeout = 30_000;
  server.on('connection', (socket: net.Socket) => {
    if (refusing) {
      socket.resetAndDestroy();
      return;
    }
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  server.unref(); // a forgotten proxy must not keep jest alive
  const { port } = server.address() as net.AddressInfo;

  return {
    endpoint: `http://127.0.0.1:${port}`,
    log,
    keys,
    addRule(rule) {
      rules.push({ ...rule, seen: 0, applied: 0 });
    },
    clearRules() {
      rules.length = 0;
    },
    setRefusing(on) {
      refusing = on;
      if (on) {
        for (const socket of sockets) socket.resetAndDestroy();
        agent.destroy();
      }
    },
    stalled: () => stalledNow,
    async close() {
      for (const socket of sockets) socket.destroy();
      agent.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
