import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { GetObjectCommand, HeadBucketCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import {
  describeWithPeers,
  freePort,
  pythonEsdk,
  requirePeers,
  startMinio,
  startPebble,
  tmpDir,
  type MinioPeer,
  type PebblePeer,
} from './support/peers';

function getJson(socketPath: string, path: string): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath, path, agent: false }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      })
      .on('error', reject);
  });
}

describe('helpers', () => {
  it('freePort returns a port that can be bound', async () => {
    const port = await freePort();
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    await new Promise((resolve) => server.close(resolve));
  });

  it('tmpDir creates a directory and cleanup removes it', async () => {
    const dir = await tmpDir('peers-test');
    fs.writeFileSync(`${dir.path}/f`, 'x');
    await dir.cleanup();
    expect(fs.existsSync(dir.path)).toBe(false);
    await dir.cleanup();
  });
});

describe('requirePeers', () => {
  const saved = { MINIO_BIN: process.env.MINIO_BIN, CI: process.env.CI };
  afterEach(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    jest.restoreAllMocks();
  });

  it('warns loudly and reports false when a peer is missing outside CI', () => {
    process.env.MINIO_BIN = '/nonexistent/minio';
    delete process.env.CI;
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    expect(requirePeers('minio')).toBe(false);
    expect(warn.mock.calls[0][0]).toMatch(/SKIPPING[^]*minio[^]*bash scripts\/peers\/install\.sh/);
  });

  it('throws when a peer is missing in CI', () => {
    process.env.MINIO_BIN = '/nonexistent/minio';
    process.env.CI = 'true';
    expect(() => requirePeers('minio')).toThrow(/minio.*install\.sh/);
  });
});

describeWithPeers(['minio'])('minio peer', () => {
  let minio: MinioPeer;
  beforeAll(async () => {
    minio = await startMinio();
  });
  afterAll(() => minio?.stop());

  it('serves the fresh bucket and keeps data across kill -9', async () => {
    expect(minio.region).toBe('us-east-1');
    const head = await minio.client.send(new HeadBucketCommand({ Bucket: minio.bucket }));
    expect(head.$metadata.httpStatusCode).toBe(200);

    const body = randomBytes(1024);
    await minio.client.send(new PutObjectCommand({ Bucket: minio.bucket, Key: 'k', Body: body }));
    await minio.restart();
    const got = await minio.client.send(new GetObjectCommand({ Bucket: minio.bucket, Key: 'k' }));
    expect(Buffer.from(await got.Body!.transformToByteArray())).toEqual(body);
  });

  it('createBucket makes another bucket', async () => {
    await minio.createBucket('second-bucket');
    await expect(
      minio.client.send(new HeadBucketCommand({ Bucket: 'second-bucket' })),
    ).resolves.toBeDefined();
  });
});

describeWithPeers(['pebble'])('pebble peer', () => {
  let pebble: PebblePeer;
  beforeAll(async () => {
    pebble = await startPebble();
  });
  afterAll(() => pebble?.stop());

  it('answers system-info, also after kill -9', async () => {
    const first = await getJson(pebble.socketPath, '/v1/system-info');
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ result: { version: expect.any(String) } });
    await pebble.restart();
    expect((await getJson(pebble.socketPath, '/v1/system-info')).status).toBe(200);
  });
});

describeWithPeers(['esdk'])('python aws-encryption-sdk', () => {
  const esdk = pythonEsdk();
  const passphrase = 'pässwörd 🔑 密码';

  it('round-trips in the seed format (unsigned, key-committing suite 0x0478)', async () => {
    const plain = randomBytes(300_000);
    const enc = await esdk.run('encrypt', passphrase, plain, { frameLength: 65536 });
    expect(enc).toMatchObject({ code: 0, stderr: '' });
    expect(enc.stdout.subarray(0, 3)).toEqual(Buffer.from([0x02, 0x04, 0x78]));
    const dec = await esdk.run('decrypt', passphrase, enc.stdout);
    expect(dec.code).toBe(0);
    expect(dec.stdout.equals(plain)).toBe(true);
  });

  it('fails on a wrong passphrase without output', async () => {
    const enc = await esdk.run('encrypt', passphrase, Buffer.from('secret'));
    const dec = await esdk.run('decrypt', 'wrong', enc.stdout);
    expect(dec.code).toBe(1);
    expect(dec.stdout.length).toBe(0);
    expect(dec.stderr).toMatch(/esdk_tool decrypt/);
  });
});
