import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buildSync } from 'esbuild';
import { BackupError, type Remedy } from '../src/errors';
import { checkBucket } from '../src/s3/client';
import { DEFAULT_REGION, parseS3Settings, type S3SettingsInput } from '../src/s3/settings';
import { ObjectStore } from '../src/s3/store';
import {
  type MinioPeer,
  describeWithPeers,
  freePort,
  makeTestCertificates,
  startMinio,
  tmpDir,
} from './support/peers';

/** Resolves with the BackupError `run` rejects with; fails the test if it resolves. */
async function failure(run: () => Promise<unknown>): Promise<BackupError> {
  const err = await run().then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof BackupError)) {
    throw new Error(
      `expected a BackupError, got ${err instanceof Error ? err.stack : String(err)}`,
    );
  }
  return err;
}

/** Every ObjectStore operation, each with a harmless argument. */
function storeOperations(store: ObjectStore): [string, () => Promise<unknown>][] {
  return [
    ['list', () => store.list()],
    ['getStream', () => store.getStream(store.key('missing.tar.enc'))],
    ['putText', () => store.putText(store.key('probe.json'), '{}', 'application/json')],
    ['delete', () => store.delete(store.key('probe.json'))],
    ['listUploads', () => store.listUploads()],
    [
      'upload',
      () =>
        store.upload(store.key('up.tar.enc'), Readable.from([Buffer.alloc(1024)]), {
          partSize: 5 * 1024 * 1024,
          queueSize: 1,
        }),
    ],
  ];
}

describe('parseS3Settings', () => {
  const valid: S3SettingsInput = { bucket: 'b', endpoint: 'http://127.0.0.1:9000' };

  test.each<[string, S3SettingsInput, RegExp, Remedy?]>([
    [
      'no bucket',
      { ...valid, bucket: undefined },
      /^no S3 bucket is set$/,
      { kind: 'set', setting: 's3-bucket' },
    ],
    [
      'a blank bucket',
      { ...valid, bucket: '   ' },
      /no S3 bucket is set/,
      { kind: 'set', setting: 's3-bucket' },
    ],
    [
      'neither region nor endpoint',
      { bucket: 'b', region: ' ', endpoint: '' },
      /^neither an S3 region nor an S3 endpoint is set$/,
      { kind: 'set', setting: 's3-endpoint', how: '(or the region, on AWS)' },
    ],
    [
      'an endpoint that is no URL',
      { ...valid, endpoint: ' s3.example.com ' },
      /the S3 endpoint "s3.example.com" is not a URL: use e.g. https:\/\/s3.example.com/,
      undefined,
    ],
    [
      'an endpoint without http(s)',
      { ...valid, endpoint: 'ftp://s3.example.com' },
      /must start with http:\/\/ or https:\/\//,
      undefined,
    ],
    [
      'a host:port without scheme',
      { ...valid, endpoint: 'minio:9000' },
      /must start with http/,
      undefined,
    ],
    [
      'a bad URI style',
      { ...valid, uriStyle: 'virtual' },
      /^the S3 URI style "virtual" is not valid$/,
      { kind: 'set', setting: 's3-uri-style', how: 'to "host" or "path"' },
    ],
    [
      'an access key without a secret key',
      { ...valid, accessKeyId: 'AKIA' },
      /credentials are incomplete: both an access key and a secret key are needed/,
      undefined,
    ],
    [
      'a secret key without an access key',
      { ...valid, secretAccessKey: 's' },
      /incomplete/,
      undefined,
    ],
    [
      'a bad checksum mode',
      { ...valid, checksumMode: 'always' },
      /checksum mode "always" is not valid: use "when_required" or "when_supported"/,
      undefined,
    ],
    [
      'zero attempts',
      { ...valid, maxAttempts: 0 },
      /max attempts must be a whole number from 1 to 20, not 0/,
      undefined,
    ],
    ['fractional attempts', { ...valid, maxAttempts: 2.5 }, /not 2.5/, undefined],
    // Every row has a remedy or undefined: jest takes a missing last argument for `done`.
  ])('%s is refused with its own message', (_name, input, message, remedy) => {
    let thrown: unknown;
    try {
      parseS3Settings(input);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(BackupError);
    expect((thrown as BackupError).code).toBe('config');
    expect((thrown as BackupError).message).toMatch(message);
    expect((thrown as BackupError).remedy).toEqual(remedy);
  });

  test('each problem has a message of its own', () => {
    const messages = [
      { ...valid, bucket: '' },
      { bucket: 'b' },
      { ...valid, endpoint: 'nope' },
      { ...valid, uriStyle: 'x' },
      { ...valid, accessKeyId: 'a' },
      { ...valid, checksumMode: 'x' },
    ].map((input) => {
      try {
        parseS3Settings(input);
        return 'accepted';
      } catch (err) {
        return (err as Error).message;
      }
    });
    expect(new Set(messages).size).toBe(messages.length);
    expect(messages).not.toContain('accepted');
  });

  test.each([
    ['', ''],
    ['/', ''],
    ['backups', 'backups'],
    ['/backups/', 'backups'],
    ['  //synapse/backups///  ', 'synapse/backups'],
  ])('prefix %j is stored as %j', (prefix, expected) => {
    expect(parseS3Settings({ ...valid, prefix }).prefix).toBe(expected);
  });

  test('defaults: us-east-1 with an endpoint, path style, checksums when required, 5 attempts', () => {
    const s = parseS3Settings({ bucket: ' b ', endpoint: ' https://s3.example.com ' });
    expect(s).toEqual({
      bucket: 'b',
      prefix: '',
      endpoint: 'https://s3.example.com',
      region: DEFAULT_REGION,
      uriStyle: 'path',
      accessKeyId: undefined,
      secretAccessKey: undefined,
      caChain: undefined,
      checksumMode: 'WHEN_REQUIRED',
      maxAttempts: 5,
      connectTimeoutMs: 10_000,
      stallTimeoutMs: 60_000,
    });
    expect(DEFAULT_REGION).toBe('us-east-1');
  });

  test('the addressing style: path with an endpoint, host on AWS, as set when set', () => {
    expect(parseS3Settings({ bucket: 'b', endpoint: 'http://localhost:9000' }).uriStyle).toBe(
      'path',
    );
    expect(parseS3Settings({ bucket: 'b', region: 'eu-west-1' }).uriStyle).toBe('host');
    expect(
      parseS3Settings({ bucket: 'b', endpoint: 'http://localhost:9000', uriStyle: 'host' })
        .uriStyle,
    ).toBe('host');
  });

  test.each([0, 99, 1.5, 3_600_001])('a stall timeout of %j ms is refused', (ms) => {
    expect(() => parseS3Settings({ ...valid, stallTimeoutMs: ms })).toThrow(
      `the S3 stall timeout must be a whole number of milliseconds from 100 to 3600000, not ${ms}`,
    );
  });

  test('a region alone is enough; case and blanks in the choices are forgiven', () => {
    const s = parseS3Settings({
      bucket: 'b',
      region: ' eu-west-1 ',
      uriStyle: ' PATH ',
      checksumMode: 'when_supported',
      accessKeyId: 'a',
      secretAccessKey: 's',
      caChain: '  \n',
    });
    expect(s).toMatchObject({
      region: 'eu-west-1',
      endpoint: undefined,
      uriStyle: 'path',
      checksumMode: 'WHEN_SUPPORTED',
      caChain: undefined,
    });
  });
});

describeWithPeers(['minio'])('S3 errors against a real MinIO', () => {
  let minio: MinioPeer;
  let tlsMinio: MinioPeer;

  beforeAll(async () => {
    [minio, tlsMinio] = await Promise.all([startMinio(), startMinio({ tls: true })]);
  });
  afterAll(async () => {
    await minio?.stop();
    await tlsMinio?.stop();
  });

  const settingsFor = (peer: MinioPeer, extra: S3SettingsInput = {}) =>
    parseS3Settings({
      bucket: peer.bucket,
      prefix: 'backups',
      endpoint: peer.endpoint,
      uriStyle: 'path',
      accessKeyId: peer.accessKeyId,
      secretAccessKey: peer.secretAccessKey,
      maxAttempts: 2,
      ...extra,
    });

  test('the right settings work: checkBucket and a round trip through the store', async () => {
    const settings = settingsFor(minio);
    await checkBucket(settings);
    const store = new ObjectStore(settings);
    try {
      await store.putText(store.key('hello.json'), '{"a":1}', 'application/json');
      expect(await store.getText(store.key('hello.json'))).toBe('{"a":1}');
      expect((await store.list()).map((o) => o.key)).toEqual(['backups/hello.json']);
      await store.delete(store.key('hello.json'));
      expect(await store.head(store.key('hello.json'))).toBeUndefined();
    } finally {
      store.close();
    }
  });

  test('a wrong secret key: s3-auth, naming the access key, never the secret', async () => {
    const wrongSecret = 'wrong-secret-key-0123456789';
    const settings = settingsFor(minio, { secretAccessKey: wrongSecret });
    const errors = [await failure(() => checkBucket(settings))];
    const store = new ObjectStore(settings);
    try {
      for (const [, op] of storeOperations(store)) errors.push(await failure(op));
      errors.push(await failure(() => store.head(store.key('any'))));
    } finally {
      store.close();
    }
    for (const err of errors) {
      expect({ code: err.code, message: err.message }).toEqual({
        code: 's3-auth',
        message: expect.stringContaining(`access key "${minio.accessKeyId}"`),
      });
      expect(err.message).toMatch(/secret key/);
      expect(err.message).not.toContain(wrongSecret);
      expect(err.message).not.toContain(minio.secretAccessKey);
    }
  });

  test('an unknown access key: s3-auth too', async () => {
    const settings = settingsFor(minio, { accessKeyId: 'nobody-we-know' });
    const err = await failure(() => checkBucket(settings));
    expect(err.code).toBe('s3-auth');
    expect(err.message).toContain('"nobody-we-know"');
  });

  test('a missing bucket: s3-bucket, "does not exist", from checkBucket and every store operation', async () => {
    const settings = settingsFor(minio, { bucket: 'no-such-bucket-here' });
    const results: [string, BackupError][] = [
      ['checkBucket', await failure(() => checkBucket(settings))],
    ];
    const store = new ObjectStore(settings);
    try {
      for (const [name, op] of storeOperations(store)) results.push([name, await failure(op)]);
      // HEAD replies have no body: a missing bucket looks like a missing object, and the
      // engine asks checkBucket before it says "not found".
      expect(await store.head(store.key('any'))).toBeUndefined();
    } finally {
      store.close();
    }
    for (const [name, err] of results) {
      expect({ name, code: err.code, message: err.message }).toEqual({
        name,
        code: 's3-bucket',
        message: expect.stringMatching(
          new RegExp(`bucket "no-such-bucket-here" does not exist at ${minio.endpoint}$`),
        ),
      });
      expect(err.remedy).toEqual({
        kind: 'set',
        setting: 's3-bucket',
        how: 'to an existing bucket, or create it',
      });
    }
  });

  test('a closed port: s3-unreachable, "unreachable", from checkBucket and the store', async () => {
    const port = await freePort();
    const settings = settingsFor(minio, { endpoint: `http://127.0.0.1:${port}` });
    const errors = [await failure(() => checkBucket(settings))];
    const store = new ObjectStore(settings);
    try {
      for (const [, op] of storeOperations(store)) errors.push(await failure(op));
      errors.push(await failure(() => store.head(store.key('any'))));
    } finally {
      store.close();
    }
    for (const err of errors) {
      expect({ code: err.code, message: err.message }).toEqual({
        code: 's3-unreachable',
        message: expect.stringMatching(
          new RegExp(
            `S3 endpoint http://127.0.0.1:${port} is unreachable \\([^)]*ECONNREFUSED[^)]*\\)$`,
          ),
        ),
      });
      expect(err.remedy).toEqual({
        kind: 'set',
        setting: 's3-endpoint',
        how: 'to the right URL, or fix the network',
      });
    }
  });

  test('https:// to a plain HTTP port: says the endpoint does not speak TLS', async () => {
    const settings = settingsFor(minio, { endpoint: minio.endpoint.replace('http:', 'https:') });
    const errors = [await failure(() => checkBucket(settings))];
    const store = new ObjectStore(settings);
    try {
      errors.push(await failure(() => store.list()));
    } finally {
      store.close();
    }
    for (const err of errors) {
      expect(err.code).toBe('s3-unreachable');
      expect(err.message).toMatch(/did not answer in TLS/);
      expect(err.remedy).toEqual({
        kind: 'set',
        setting: 's3-endpoint',
        how: 'to http:// rather than https:// if it serves plain HTTP',
      });
    }
  });

  const caChainRemedy: Remedy = {
    kind: 'set',
    setting: 's3-ca-chain',
    how: 'to the CA that signed it',
  };

  test('TLS with a CA we do not know: not trusted, set s3-ca-chain; with it, everything works', async () => {
    const untrusted = settingsFor(tlsMinio);
    const errors = [await failure(() => checkBucket(untrusted))];
    const store = new ObjectStore(untrusted);
    try {
      errors.push(await failure(() => store.list()));
      errors.push(await failure(() => store.head(store.key('x'))));
    } finally {
      store.close();
    }
    for (const err of errors) {
      expect({ code: err.code, message: err.message }).toEqual({
        code: 's3-unreachable',
        message: expect.stringMatching(
          new RegExp(`the TLS certificate of ${tlsMinio.endpoint} is not trusted \\(.+\\)$`),
        ),
      });
      expect(err.remedy).toEqual(caChainRemedy);
    }

    // The CA from s3-ca-chain is trusted in addition to the public roots.
    const trusted = settingsFor(tlsMinio, { caChain: `\n${tlsMinio.caCert}\n` });
    await checkBucket(trusted);
    const good = new ObjectStore(trusted);
    try {
      await good.upload(good.key('tls.bin'), Readable.from([Buffer.alloc(4096, 1)]), {
        partSize: 5 * 1024 * 1024,
        queueSize: 1,
      });
      expect(await good.head(good.key('tls.bin'))).toMatchObject({ size: 4096 });
      await good.delete(good.key('tls.bin'));
    } finally {
      good.close();
    }

    // A CA that did not sign the server's certificate does not help.
    const dir = await tmpDir('other-ca');
    const otherCa = settingsFor(tlsMinio, { caChain: makeTestCertificates(dir.path).caCert });
    await dir.cleanup();
    expect((await failure(() => checkBucket(otherCa))).message).toMatch(/not trusted/);
  });

  // Under jest, Node's errors come from another realm and the SDK hands them on wrapped,
  // without their code: the tests above see the messages. The charm sees the codes.
  test('in a plain Node process (errors keep their codes) the messages are the same', async () => {
    const dir = await tmpDir('s3-probe');
    try {
      const entry = path.join(dir.path, 'probe.ts');
      const src = (name: string) => JSON.stringify(path.resolve(__dirname, '../src/s3', name));
      await fsp.writeFile(
        entry,
        [
          `import { checkBucket } from ${src('client')};`,
          `import { parseS3Settings } from ${src('settings')};`,
          'void (async () => {',
          '  const out = [];',
          '  for (const input of JSON.parse(process.argv[2])) {',
          '    try {',
          '      await checkBucket(parseS3Settings(input));',
          "      out.push({ code: 'ok' });",
          '    } catch (e) {',
          '      out.push({ code: e.code, message: e.message, remedy: e.remedy, cause: e.cause?.code ?? e.cause?.name });',
          '    }',
          '  }',
          '  process.stdout.write(JSON.stringify(out));',
          '})();',
        ].join('\n'),
      );
      const bundle = path.join(dir.path, 'probe.js');
      buildSync({
        entryPoints: [entry],
        bundle: true,
        platform: 'node',
        outfile: bundle,
        logLevel: 'error',
      });
      const port = await freePort();
      const inputs = [
        settingsFor(minio, { secretAccessKey: 'wrong-secret-key' }),
        settingsFor(minio, { bucket: 'no-such-bucket-here' }),
        settingsFor(minio, { endpoint: `http://127.0.0.1:${port}` }),
        settingsFor(minio, { endpoint: minio.endpoint.replace('http:', 'https:') }),
        settingsFor(tlsMinio),
        settingsFor(tlsMinio, { caChain: tlsMinio.caCert }),
      ];
      const run = spawnSync(process.execPath, [bundle, JSON.stringify(inputs)], {
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(run.stderr).toBe('');
      const results = JSON.parse(run.stdout) as {
        code: string;
        message?: string;
        remedy?: Remedy;
        cause?: string;
      }[];
      expect(results).toEqual([
        {
          code: 's3-auth',
          message: expect.stringContaining(`check the access key "${minio.accessKeyId}"`),
          cause: expect.any(String),
        },
        {
          code: 's3-bucket',
          message: expect.stringContaining('bucket "no-such-bucket-here" does not exist'),
          remedy: expect.objectContaining({ kind: 'set', setting: 's3-bucket' }),
          cause: expect.any(String),
        },
        {
          code: 's3-unreachable',
          message: expect.stringContaining(`127.0.0.1:${port} is unreachable (ECONNREFUSED)`),
          remedy: expect.objectContaining({ kind: 'set', setting: 's3-endpoint' }),
          cause: 'ECONNREFUSED',
        },
        {
          code: 's3-unreachable',
          message: expect.stringMatching(/did not answer in TLS \(EPROTO\)$/),
          remedy: expect.objectContaining({
            setting: 's3-endpoint',
            how: expect.stringContaining('if it serves plain HTTP'),
          }),
          cause: 'EPROTO',
        },
        {
          code: 's3-unreachable',
          message: expect.stringMatching(/is not trusted \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)$/),
          remedy: caChainRemedy,
          cause: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
        },
        { code: 'ok' },
      ]);
    } finally {
      await dir.cleanup();
    }
  });

  test('a server that accepts and hangs up: s3-unreachable', async () => {
    const server = net.createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    try {
      const settings = settingsFor(minio, { endpoint: `http://127.0.0.1:${port}` });
      const err = await failure(() => checkBucket(settings));
      expect(err.code).toBe('s3-unreachable');
      expect(err.message).toMatch(/unreachable/);
    } finally {
      server.close();
    }
  });
});
