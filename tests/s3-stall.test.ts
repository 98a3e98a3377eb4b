/**
 * The S3 client's timeouts against a plain HTTP server that plays S3's GetObject
 * and PutObject: a body that stops coming fails "stopped answering" after the
 * stall limit; a body the engine is slow to read (backpressure) does not; an
 * upload nobody reads fails the same way; the handler's messages become the
 * operator's (stallOf).
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { createS3Client } from '../src/s3/client';
import { stallOf } from '../src/s3/errors';
import { parseS3Settings } from '../src/s3/settings';
import { ObjectStore } from '../src/s3/store';

const MiB = 1024 * 1024;
const STALL_MS = 1000;

jest.setTimeout(30_000);

describe('S3 stalls', () => {
  let server: http.Server;
  let endpoint: string;
  /** What GET answers: `bytes` of body, then the end, or (with `stopAt`) nothing more. */
  let answer: { bytes: number; stopAt?: number };

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      if (req.method === 'PUT') return; // read nothing, answer nothing
      res.writeHead(200, { 'Content-Length': answer.bytes, 'Content-Type': 'binary/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024);
      let sent = 0;
      const more = () => {
        while (sent < (answer.stopAt ?? answer.bytes)) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', more);
        }
        if (answer.stopAt === undefined) res.end();
      };
      more();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const settings = () =>
    parseS3Settings({
      bucket: 'b',
      endpoint,
      uriStyle: 'path',
      accessKeyId: 'a',
      secretAccessKey: 'secret-key',
      maxAttempts: 1,
      stallTimeoutMs: STALL_MS,
    });

  test('a body that stops coming fails after the stall limit, saying so', async () => {
    answer = { bytes: 8 * MiB, stopAt: MiB };
    const store = new ObjectStore(settings());
    try {
      const { body } = await store.getStream('k');
      const started = Date.now();
      const read = pipeline(body, new Writable({ write: (_c, _e, done) => done() }));
      await expect(read).rejects.toThrow(
        `cannot download k: S3 at ${endpoint} stopped answering for 1 s`,
      );
      // Not a hang: far below the 30 s test timeout.
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      store.close();
    }
  });

  test('a body the engine is slow to read is no stall of S3', async () => {
    answer = { bytes: 8 * MiB };
    const store = new ObjectStore(settings());
    try {
      const { body } = await store.getStream('k');
      let bytes = 0;
      let paused = false;
      await pipeline(
        body,
        new Writable({
          highWaterMark: 1,
          write: (c: Buffer, _e, done) => {
            bytes += c.length;
            // Hold once, for 2.5 stall limits, with buffers full on both sides.
            if (!paused && bytes > MiB) {
              paused = true;
              setTimeout(done, 2.5 * STALL_MS);
            } else done();
          },
        }),
      );
      expect(paused).toBe(true);
      expect(bytes).toBe(8 * MiB);
    } finally {
      store.close();
    }
  });

  test('an upload nobody reads fails after the stall limit', async () => {
    const client = createS3Client(settings());
    try {
      const started = Date.now();
      await expect(
        client.send(new PutObjectCommand({ Bucket: 'b', Key: 'k', Body: Buffer.alloc(16 * MiB) })),
      ).rejects.toThrow(/socket timed out after 1000 ms of inactivity/);
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      client.destroy();
    }
  });

  test.each([
    [
      '... the request socket timed out after 60000 ms of inactivity (configured ...)',
      'stopped answering for 60 s',
    ],
    ['... the request socket timed out after 1500 ms of inactivity', 'stopped answering for 1.5 s'],
    [
      '... a request has exceeded the configured 900000 ms requestTimeout.',
      'did not finish answering within 15 min',
    ],
    ['Socket timed out without establishing a connection within 10000 ms', undefined],
  ])('stallOf(%j) is %j', (text, words) => {
    expect(stallOf(text)).toBe(words);
  });
});
