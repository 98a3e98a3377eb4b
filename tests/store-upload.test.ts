import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { parseS3Settings } from '../src/s3/settings';
import { MAX_PARTS, MIN_PART_SIZE, ObjectStore, uploadPartSize } from '../src/s3/store';
import { type MinioPeer, describeWithPeers, readObject, startMinio } from './support/peers';

/** The multipart uploader in src/s3/store.ts against MinIO. */

const MIB = 1024 * 1024;
const PART = 5 * MIB;

/** `data` in chunks of odd sizes, as the encryption stage would write it. */
function body(data: Buffer, failAfter?: number): Readable {
  const sizes = [1, 16, 65_536, 100_000, 1_048_592, 28];
  let at = 0;
  let i = 0;
  return new Readable({
    read() {
      if (failAfter !== undefined && at >= failAfter) {
        this.destroy(new Error('the encryption stage failed'));
        return;
      }
      if (at >= data.length) {
        this.push(null);
        return;
      }
      const n = sizes[i++ % sizes.length]!;
      this.push(data.subarray(at, at + n));
      at += n;
    },
  });
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('part sizes', () => {
  test.each([5, 6, 16, 105, 1024])(
    'with %i MiB parts, 10,000 parts still hold 10,000 part sizes, none under 5 MiB',
    (mib) => {
      const partSize = mib * MIB;
      let capacity = 0;
      for (let n = 1; n <= MAX_PARTS; n++) {
        const size = uploadPartSize(n, partSize);
        expect(size).toBeGreaterThanOrEqual(MIN_PART_SIZE);
        expect(size % MIB).toBe(0);
        capacity += size;
      }
      expect(capacity).toBeGreaterThanOrEqual(MAX_PARTS * partSize);
    },
  );

  test('the default 16 MiB: 8 MiB parts up to 15.6 GiB, then 18 MiB', () => {
    expect(uploadPartSize(1, 16 * MIB)).toBe(8 * MIB);
    expect(uploadPartSize(2000, 16 * MIB)).toBe(8 * MIB);
    expect(uploadPartSize(2001, 16 * MIB)).toBe(18 * MIB);
    expect(uploadPartSize(1, 5 * MIB)).toBe(5 * MIB);
  });
});

describeWithPeers(['minio'])('multipart upload', () => {
  let minio: MinioPeer;
  beforeAll(async () => {
    minio = await startMinio();
  });
  afterAll(async () => {
    await minio?.stop();
  });

  const storeFor = (checksumMode?: string) =>
    new ObjectStore(
      parseS3Settings({
        bucket: minio.bucket,
        prefix: 'uploads',
        endpoint: minio.endpoint,
        uriStyle: 'path',
        accessKeyId: minio.accessKeyId,
        secretAccessKey: minio.secretAccessKey,
        checksumMode,
      }),
    );

  const fetch = (key: string) => readObject(minio, key);
  const etag = async (key: string) =>
    (await minio.client.send(new HeadObjectCommand({ Bucket: minio.bucket, Key: key }))).ETag;

  test.each([
    ['checksums when required', undefined],
    ['checksums when supported (CRC32 per part)', 'when_supported'],
  ])(
    'parts arrive whole and in order, through %s, with a fixed number of part buffers',
    async (_label, checksumMode) => {
      const store = storeFor(checksumMode);
      const data = randomBytes(7 * PART + 17);
      const allocations = jest.spyOn(Buffer, 'allocUnsafeSlow');
      try {
        const key = store.key(`multi-${checksumMode ?? 'required'}.bin`);
        await store.upload(key, body(data), { partSize: PART, queueSize: 2 });
        const partBuffers = allocations.mock.calls.filter(([size]) => size === PART).length;
        // queueSize parts in flight and one filling: reused for all 8 parts.
        expect(partBuffers).toBeLessThanOrEqual(3);
        expect(await etag(key)).toMatch(/-8"$/);
        expect(sha256(await fetch(key))).toBe(sha256(data));
        expect(await store.listUploads()).toEqual([]);
      } finally {
        allocations.mockRestore();
        store.close();
      }
    },
  );

  test('a body of at most one part goes up with one PutObject', async () => {
    const store = storeFor();
    try {
      for (const size of [0, 1, PART]) {
        const data = randomBytes(size);
        const key = store.key(`single-${size}.bin`);
        await store.upload(key, body(data), { partSize: PART, queueSize: 2 });
        expect(await etag(key)).not.toMatch(/-\d+"$/);
        expect(sha256(await fetch(key))).toBe(sha256(data));
      }
    } finally {
      store.close();
    }
  });

  test('over HTTPS (parts sent with UNSIGNED-PAYLOAD) the object is whole too', async () => {
    const tls = await startMinio({ tls: true });
    const store = new ObjectStore(
      parseS3Settings({
        bucket: tls.bucket,
        endpoint: tls.endpoint,
        uriStyle: 'path',
        accessKeyId: tls.accessKeyId,
        secretAccessKey: tls.secretAccessKey,
        caChain: tls.caCert,
      }),
    );
    try {
      const data = randomBytes(2 * PART + 3);
      await store.upload('tls-multi.bin', body(data), { partSize: PART, queueSize: 2 });
      await store.upload('tls-single.bin', body(data.subarray(0, 1000)), {
        partSize: PART,
        queueSize: 2,
      });
      const get = async (key: string) => {
        const { body: stream } = await store.getStream(key);
        const chunks: Buffer[] = [];
        for await (const chunk of stream) chunks.push(chunk as Buffer);
        return Buffer.concat(chunks);
      };
      expect(sha256(await get('tls-multi.bin'))).toBe(sha256(data));
      expect((await get('tls-single.bin')).equals(data.subarray(0, 1000))).toBe(true);
    } finally {
      store.close();
      await tls.stop();
    }
  });

  test('one byte over a part makes two parts', async () => {
    const store = storeFor();
    try {
      const data = randomBytes(PART + 1);
      const key = store.key('two.bin');
      await store.upload(key, body(data), { partSize: PART, queueSize: 1 });
      expect(await etag(key)).toMatch(/-2"$/);
      expect((await fetch(key)).equals(data)).toBe(true);
    } finally {
      store.close();
    }
  });

  test('a body that fails mid-way: the upload rejects with its error and leaves nothing', async () => {
    const store = storeFor();
    try {
      const key = store.key('failed.bin');
      await expect(
        store.upload(key, body(randomBytes(6 * PART), 3 * PART + 5), {
          partSize: PART,
          queueSize: 2,
        }),
      ).rejects.toThrow('the encryption stage failed');
      await store.removeFailedUpload(key);
      expect(await store.listUploads()).toEqual([]);
      expect(await store.head(key)).toBeUndefined();
    } finally {
      store.close();
    }
  });
});
