import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { crc32Base64, initialProtection } from '../src/s3/part-integrity';
import { parseS3Settings } from '../src/s3/settings';
import { ObjectStore } from '../src/s3/store';
import { type FaultyProxy, type ProxyLogEntry, startFaultyProxy } from './support/faulty-proxy';
import { type MinioPeer, describeWithPeers, readObject, startMinio } from './support/peers';

/**
 * How parts travel over plain HTTP (src/s3/part-integrity.ts): unsigned with a
 * CRC32 the server must check and echo, else signed. Against MinIO through the
 * faulty proxy, which records each part's headers and plays the servers that
 * corrupt, ignore or refuse the checksum.
 */

const MIB = 1024 * 1024;
const PART = 5 * MIB;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('CRC32 and the starting protection', () => {
  test('the CRC32 is S3 ChecksumCRC32: base64 of the 4 big-endian bytes of IEEE CRC32', () => {
    // CRC32("123456789") = 0xCBF43926, the standard check value.
    expect(crc32Base64(Buffer.from('123456789'))).toBe(
      Buffer.from('cbf43926', 'hex').toString('base64'),
    );
  });

  test('https and AWS start unsigned under TLS; plain http starts with the CRC32', () => {
    const at = (endpoint?: string) =>
      initialProtection(
        parseS3Settings({ bucket: 'b', endpoint, region: 'us-east-1', uriStyle: 'path' }),
      );
    expect(at('https://s3.example.com')).toBe('tls');
    expect(at(undefined)).toBe('tls');
    expect(at('http://minio:9000')).toBe('crc32');
  });
});

describeWithPeers(['minio'])('parts over plain HTTP', () => {
  let minio: MinioPeer;
  let proxy: FaultyProxy;
  beforeAll(async () => {
    minio = await startMinio();
    proxy = await startFaultyProxy(minio.endpoint);
  });
  afterAll(async () => {
    await proxy?.close();
    await minio?.stop();
  });
  afterEach(() => {
    proxy.clearRules();
    proxy.log.length = 0;
  });

  const store = (checksumMode?: string) =>
    new ObjectStore(
      parseS3Settings({
        bucket: minio.bucket,
        endpoint: proxy.endpoint,
        uriStyle: 'path',
        accessKeyId: minio.accessKeyId,
        secretAccessKey: minio.secretAccessKey,
        checksumMode,
      }),
    );
  const fetch = (key: string) => readObject(minio, key);
  /** Uploads `data` (3 parts and a bit) one part at a time; returns what reached the server. */
  const upload = async (key: string, data: Buffer, checksumMode?: string) => {
    const s = store(checksumMode);
    try {
      await s.upload(key, Readable.from([data]), { partSize: PART, queueSize: 1 });
    } finally {
      s.close();
    }
    return fetch(key);
  };
  const parts = (): ProxyLogEntry[] => proxy.log.filter((e) => e.op === 'UploadPart');
  const signed = (e: ProxyLogEntry) => /^[0-9a-f]{64}$/.test(e.payload ?? '');

  test('a server that checks and echoes the CRC32 gets every part unsigned, each with its CRC32', async () => {
    const data = randomBytes(3 * PART + 11);
    expect(sha256(await upload('crc-ok.bin', data))).toBe(sha256(data));
    const sent = parts();
    expect(sent).toHaveLength(4);
    for (const [i, e] of sent.entries()) {
      expect(e.payload).toBe('UNSIGNED-PAYLOAD');
      const body = data.subarray(i * PART, (i + 1) * PART);
      expect(e.crc32).toBe(crc32Base64(body));
      expect(e.status).toBe(200);
    }
  });

  test('a part corrupted on the way is refused by the server and sent again signed; so are the rest', async () => {
    proxy.addRule({ op: 'UploadPart', fault: { kind: 'flip-byte', at: 12345 }, skip: 1, times: 1 });
    const data = randomBytes(3 * PART + 11);
    expect(sha256(await upload('crc-flip.bin', data))).toBe(sha256(data));
    const sent = parts().map((e) => ({
      n: new URL(e.path, 'http://p').searchParams.get('partNumber'),
      unsigned: e.payload === 'UNSIGNED-PAYLOAD',
      signed: signed(e),
      status: e.status,
    }));
    expect(sent).toEqual([
      { n: '1', unsigned: true, signed: false, status: 200 },
      { n: '2', unsigned: true, signed: false, status: 400 },
      { n: '2', unsigned: false, signed: true, status: 200 },
      { n: '3', unsigned: false, signed: true, status: 200 },
      { n: '4', unsigned: false, signed: true, status: 200 },
    ]);
  });

  test('a server that does not echo the CRC32 (so may not check it) gets that part again, signed, and the rest signed', async () => {
    proxy.addRule({ op: 'UploadPart', fault: { kind: 'strip-checksums' } });
    const data = randomBytes(2 * PART + 1);
    expect(sha256(await upload('crc-ignored.bin', data))).toBe(sha256(data));
    const sent = parts();
    expect(sent.map((e) => [e.payload === 'UNSIGNED-PAYLOAD', signed(e)])).toEqual([
      [true, false],
      [false, true],
      [false, true],
      [false, true],
    ]);
    expect(sent.slice(1).every((e) => e.crc32 === undefined)).toBe(true);
  });

  test('a server that refuses the checksum header (501) gets the part signed without it', async () => {
    proxy.addRule({
      op: ['UploadPart', 'PutObject'],
      header: 'x-amz-checksum-crc32',
      fault: {
        kind: 'error',
        status: 501,
        code: 'NotImplemented',
        message: "Header 'x-amz-checksum-crc32' with value '...' not implemented",
      },
    });
    const data = randomBytes(PART + 7);
    expect(sha256(await upload('crc-refused.bin', data))).toBe(sha256(data));
    const small = randomBytes(1000);
    expect((await upload('crc-refused-small.bin', small)).equals(small)).toBe(true);
    const puts = proxy.log.filter((e) => e.op === 'PutObject' || e.op === 'UploadPart');
    expect(puts.map((e) => [e.op, e.status, signed(e)])).toEqual([
      ['UploadPart', 501, false],
      ['UploadPart', 200, true],
      ['UploadPart', 200, true],
      ['PutObject', 501, false],
      ['PutObject', 200, true],
    ]);
  });

  test('an upload created without a checksum completes without part checksums, though the server echoed them (versitygw, Garage, LocalStack refuse them)', async () => {
    // versitygw 1.8 (run here: 400 InvalidPart), LocalStack (400 InvalidPart) and
    // Garage (400 InvalidDigest) refuse a completion listing a part checksum for
    // an upload created without an algorithm; MinIO lets it pass, so the proxy plays them.
    proxy.addRule({
      op: 'CompleteMultipartUpload',
      fault: {
        kind: 'error-if-body',
        body: /<ChecksumCRC32>/,
        status: 400,
        code: 'InvalidPart',
        message: 'One or more of the specified parts could not be found.',
      },
    });
    const data = randomBytes(2 * PART + 5);
    expect(sha256(await upload('crc-complete.bin', data))).toBe(sha256(data));
    const sent = parts();
    expect(sent).toHaveLength(3);
    for (const e of sent) {
      expect(e.payload).toBe('UNSIGNED-PAYLOAD');
      expect(e.answerCrc32).toBe(e.crc32); // checked and echoed: no part went again signed
    }
    const complete = proxy.log.filter((e) => e.op === 'CompleteMultipartUpload');
    expect(complete.map((e) => e.status)).toEqual([200]);
    expect(complete[0].body).toMatch(/<ETag>/);
    expect(complete[0].body).not.toMatch(/Checksum/);
  });

  test('with checksum mode when_supported the upload is created with CRC32 and the completion lists every part CRC32', async () => {
    // S3 refuses a completion of a CRC32 upload that leaves a part's checksum out.
    proxy.addRule({
      op: 'CompleteMultipartUpload',
      fault: {
        kind: 'error-if-body',
        body: /^(?![\s\S]*<ChecksumCRC32>)/,
        status: 400,
        code: 'InvalidRequest',
        message: 'The upload was created using a crc32 checksum.',
      },
    });
    const data = randomBytes(2 * PART + 5);
    expect(sha256(await upload('crc-complete-ws.bin', data, 'when_supported'))).toBe(sha256(data));
    const sent = parts();
    expect(sent.map((e) => e.answerCrc32)).toEqual(
      [0, 1, 2].map((i) => crc32Base64(data.subarray(i * PART, (i + 1) * PART))),
    );
    const [complete] = proxy.log.filter((e) => e.op === 'CompleteMultipartUpload');
    expect(complete.status).toBe(200);
    const listed = [...complete.body!.matchAll(/<ChecksumCRC32>([^<]+)</g)].map((m) => m[1]);
    expect(listed).toEqual(sent.map((e) => e.answerCrc32));
  });

  test('an error that is not about the checksum is not retried signed: it is the upload error', async () => {
    proxy.addRule({
      op: 'UploadPart',
      fault: {
        kind: 'error',
        status: 404,
        code: 'NoSuchUpload',
        message: 'The upload does not exist',
      },
    });
    const s = store();
    try {
      await expect(
        s.upload('crc-404.bin', Readable.from([randomBytes(PART + 1)]), {
          partSize: PART,
          queueSize: 1,
        }),
      ).rejects.toThrow(/NoSuchUpload|does not exist/);
    } finally {
      s.close();
    }
    expect(parts().every((e) => e.payload === 'UNSIGNED-PAYLOAD')).toBe(true);
  });
});
