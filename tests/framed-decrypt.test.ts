import { createHash, randomBytes } from 'node:crypto';
import { Readable, type Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { buildEncrypt } from '@aws-crypto/encrypt-node';
import { CommitmentPolicy, NodeAlgorithmSuite } from '@aws-crypto/material-management-node';
import { type HeaderInfo, deserializeFactory } from '@aws-crypto/serialize';
import {
  SUITE_ID,
  createDecryptStream,
  createEncryptStream,
  createKeyring,
  createSdkDecryptStream,
  describeDecryptError,
} from '../src/crypto/esdk';
import { BackupError } from '../src/errors';
import { describeWithPeers, pythonEsdk } from './support/peers';

/**
 * The framed decryption transform (src/crypto/framed-decrypt.ts), which restore, verify
 * and decrypt use: the same plaintext as the SDK for every message either SDK writes, and
 * for a message that does not authenticate, no byte of the failing frame is ever released.
 */

const PASSPHRASE = 'framed pässphrase';
const FRAME = 4096;
const { encryptStream } = buildEncrypt(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT);
const { deserializeMessageHeader } = deserializeFactory(
  (bytes: Uint8Array) => Buffer.from(bytes).toString('utf8'),
  NodeAlgorithmSuite,
);

const LENGTHS: [string, number][] = [
  ['empty', 0],
  ['1 byte', 1],
  ['frame - 1', FRAME - 1],
  ['one frame (exact multiple)', FRAME],
  ['frame + 1', FRAME + 1],
  ['many frames', 37 * FRAME + 123],
  ['many whole frames (exact multiple)', 16 * FRAME],
];

function chunked(data: Buffer, sizes = [1, 7, 300, 4095, 4097, 10_000, 65_536]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (let i = 0; at < data.length; i++) {
    const n = sizes[i % sizes.length]!;
    out.push(data.subarray(at, at + n));
    at += n;
  }
  return out;
}

async function collect(source: Readable, stage: NodeJS.ReadWriteStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await pipeline(
    source,
    stage,
    new Writable({
      write(chunk: Buffer, _enc, done) {
        chunks.push(chunk);
        done();
      },
    }),
  );
  return Buffer.concat(chunks);
}

const encrypt = (plaintext: Buffer, frameLength = FRAME, context: Record<string, string> = {}) =>
  collect(Readable.from(chunked(plaintext)), createEncryptStream(PASSPHRASE, frameLength, context));

/**
 * Decrypts `message` (fed in `sizes` chunks) and records every byte the stream ever
 * pushed, whether or not the pipeline then failed.
 */
async function decrypt(
  message: Buffer,
  options: { passphrase?: string; expectedId?: string; sizes?: number[] } = {},
): Promise<{ released: Buffer; error?: unknown }> {
  const stage: Transform = createDecryptStream(
    options.passphrase ?? PASSPHRASE,
    options.expectedId,
  );
  const pushed: Buffer[] = [];
  const push = stage.push.bind(stage);
  stage.push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
    if (Buffer.isBuffer(chunk)) pushed.push(chunk);
    return push(chunk, encoding);
  };
  try {
    await collect(Readable.from(chunked(message, options.sizes)), stage);
    return { released: Buffer.concat(pushed) };
  } catch (error) {
    return { released: Buffer.concat(pushed), error };
  }
}

/** Byte offset where the body (frame 1) starts. */
function bodyStart(message: Buffer): number {
  const info = deserializeMessageHeader(message) as HeaderInfo;
  return info.headerLength + info.headerAuth.headerAuthLength;
}

/** Wire bytes of one regular frame: seq, IV, content, tag. */
const REGULAR_FRAME_BYTES = 4 + 12 + FRAME + 16;

function described(error: unknown): BackupError {
  return describeDecryptError(error, 'backup X');
}

describe('the framed decryption transform', () => {
  test.each(LENGTHS)('reads what our encryption writes (%s)', async (_label, length) => {
    const plaintext = randomBytes(length);
    const message = await encrypt(plaintext);
    for (const sizes of [undefined, [1], [REGULAR_FRAME_BYTES], [1 << 20]]) {
      const { released, error } = await decrypt(message, { sizes });
      expect(error).toBeUndefined();
      expect(released.equals(plaintext)).toBe(true);
    }
  });

  test.each(LENGTHS)('reads what the SDK’s encryptStream writes (%s)', async (_label, length) => {
    const plaintext = randomBytes(length);
    const message = await collect(
      Readable.from(chunked(plaintext)),
      encryptStream(createKeyring(PASSPHRASE), {
        suiteId: SUITE_ID,
        frameLength: FRAME,
        encryptionContext: { 'synapse-backup-id': 'B' },
      }),
    );
    const { released, error } = await decrypt(message, { expectedId: 'B' });
    expect(error).toBeUndefined();
    expect(released.equals(plaintext)).toBe(true);
    // The SDK reads the same plaintext from it.
    expect(
      (await collect(Readable.from(chunked(message)), createSdkDecryptStream(PASSPHRASE))).equals(
        plaintext,
      ),
    ).toBe(true);
  });

  test('1 MiB frames (the default): a round trip of 3 MiB + 5 bytes', async () => {
    const plaintext = randomBytes(3 * 1024 * 1024 + 5);
    const message = await encrypt(plaintext, 1024 * 1024);
    const { released, error } = await decrypt(message, { sizes: [16 * 1024, 65_536, 333] });
    expect(error).toBeUndefined();
    expect(released.equals(plaintext)).toBe(true);
  });

  test('a flipped byte in frame 2: frame 1 released, not one byte of frame 2, corrupt', async () => {
    const plaintext = randomBytes(3 * FRAME + 10);
    const message = await encrypt(plaintext);
    message[bodyStart(message) + REGULAR_FRAME_BYTES + 16 + 100]! ^= 1; // frame 2's content
    const { released, error } = await decrypt(message);
    expect(released.equals(plaintext.subarray(0, FRAME))).toBe(true);
    expect(described(error)).toMatchObject({ code: 'corrupt' });
    expect(described(error).message).toBe(
      'backup X is damaged: its authentication check failed (frame 2 does not authenticate: altered or corrupted); it cannot be restored',
    );
  });

  test('a flipped tag byte of the first frame: nothing released, corrupt', async () => {
    const plaintext = randomBytes(2 * FRAME);
    const message = await encrypt(plaintext);
    message[bodyStart(message) + REGULAR_FRAME_BYTES - 1]! ^= 0x80;
    const { released, error } = await decrypt(message, { sizes: [1] });
    expect(released.length).toBe(0);
    expect(described(error)).toMatchObject({ code: 'corrupt' });
  });

  test('frames swapped or dropped are refused by their sequence numbers', async () => {
    const plaintext = randomBytes(3 * FRAME + 1);
    const message = await encrypt(plaintext);
    const at = bodyStart(message);
    const f1 = message.subarray(at, at + REGULAR_FRAME_BYTES);
    const f2 = message.subarray(at + REGULAR_FRAME_BYTES, at + 2 * REGULAR_FRAME_BYTES);
    const rest = message.subarray(at + 2 * REGULAR_FRAME_BYTES);
    const head = message.subarray(0, at);
    const swapped = await decrypt(Buffer.concat([head, f2, f1, rest]));
    expect(swapped.released.length).toBe(0);
    expect(described(swapped.error).message).toMatch(
      /frame 2 came where frame 1 should be \(frames removed or reordered\)/,
    );
    const dropped = await decrypt(Buffer.concat([head, f1, rest]));
    expect(dropped.released.equals(plaintext.subarray(0, FRAME))).toBe(true);
    expect(described(dropped.error)).toMatchObject({ code: 'corrupt' });
  });

  test('a changed header field (the frame length) does not authenticate: nothing released', async () => {
    const message = await encrypt(randomBytes(FRAME + 3));
    const info = deserializeMessageHeader(message) as HeaderInfo;
    // Header v2 ends: content type (1) | frame length (4) | commitment (32).
    const frameLengthAt = info.headerLength - 32 - 4;
    expect(message.readUInt32BE(frameLengthAt)).toBe(FRAME);
    message.writeUInt32BE(FRAME * 2, frameLengthAt);
    const { released, error } = await decrypt(message);
    expect(released.length).toBe(0);
    expect(described(error).message).toBe(
      'backup X is damaged: its authentication check failed (its header does not authenticate); it cannot be restored',
    );
  });

  test('a changed encryption context: the wrapped key no longer opens (as in the SDK), nothing released', async () => {
    // The raw AES keyring authenticates the context with the wrapped data key.
    const message = await encrypt(randomBytes(FRAME + 3), FRAME, { 'synapse-backup-id': 'AAAA' });
    const at = message.indexOf('AAAA');
    expect(at).toBeGreaterThan(0);
    message.write('AAAB', at);
    const { released, error } = await decrypt(message);
    expect(released.length).toBe(0);
    expect(described(error)).toMatchObject({ code: 'wrong-passphrase' });
  });

  test('a changed key commitment is refused before the body: nothing released', async () => {
    const message = await encrypt(randomBytes(FRAME + 3));
    const info = deserializeMessageHeader(message) as HeaderInfo;
    message[info.headerLength - 1]! ^= 1; // the last byte of the header: the commitment
    const { released, error } = await decrypt(message);
    expect(released.length).toBe(0);
    expect(described(error)).toMatchObject({ code: 'corrupt' });
    expect(described(error).message).toMatch(/Commitment does not match/);
  });

  test.each([
    ['inside the header', (_m: Buffer, at: number) => at - 10, 0],
    ['between frames', (_m: Buffer, at: number) => at + REGULAR_FRAME_BYTES, FRAME],
    ['inside a frame header', (_m: Buffer, at: number) => at + REGULAR_FRAME_BYTES + 3, FRAME],
    ['inside a frame’s content', (_m: Buffer, at: number) => at + 2000, 0],
    ['inside a tag', (_m: Buffer, at: number) => at + REGULAR_FRAME_BYTES - 5, 0],
    ['before the final frame’s tag ends', (m: Buffer) => m.length - 1, 2 * FRAME],
  ])(
    'a message cut %s: truncated, only whole authenticated frames released',
    async (_l, cut, n) => {
      const plaintext = randomBytes(2 * FRAME + 50);
      const message = await encrypt(plaintext);
      const { released, error } = await decrypt(
        message.subarray(0, cut(message, bodyStart(message))),
      );
      expect(released.equals(plaintext.subarray(0, n))).toBe(true);
      expect(described(error)).toMatchObject({ code: 'corrupt' });
      expect(described(error).message).toMatch(
        /^backup X is truncated \((its header is incomplete|it ends before its final frame)\); it cannot be restored$/,
      );
    },
  );

  test('bytes after the final frame are refused (the SDK ignores them)', async () => {
    const plaintext = randomBytes(FRAME + 1);
    const message = Buffer.concat([await encrypt(plaintext), Buffer.from([0])]);
    const { error } = await decrypt(message);
    expect(described(error).message).toBe(
      'backup X is damaged: its authentication check failed (it has bytes after its final frame); it cannot be restored',
    );
  });

  test('a wrong passphrase: wrong-passphrase, nothing released', async () => {
    const message = await encrypt(randomBytes(FRAME * 2));
    const { released, error } = await decrypt(message, { passphrase: 'another' });
    expect(released.length).toBe(0);
    expect(described(error)).toMatchObject({ code: 'wrong-passphrase' });
  });

  test('another backup’s id in the header: wrong-backup, nothing released', async () => {
    const message = await encrypt(randomBytes(FRAME * 2), FRAME, { 'synapse-backup-id': 'A' });
    const { released, error } = await decrypt(message, { expectedId: 'B' });
    expect(released.length).toBe(0);
    expect(error).toMatchObject({ code: 'wrong-backup' });
    // Without an expected id (or with the right one) it reads.
    expect((await decrypt(message, { expectedId: 'A' })).error).toBeUndefined();
  });

  test('a signed message (suite 0x0578, the SDK’s default) is refused by name', async () => {
    const message = await collect(
      Readable.from([randomBytes(100)]),
      encryptStream(createKeyring(PASSPHRASE), { frameLength: FRAME }),
    );
    const { released, error } = await decrypt(message);
    expect(released.length).toBe(0);
    expect(described(error)).toMatchObject({ code: 'decrypt' });
    expect(described(error).message).toMatch(
      /^backup X is not a readable encrypted backup \(it uses algorithm suite 0x0578; backups use 0x0478/,
    );
  });

  test('a plain tar, or nothing at all, is not taken for a message', async () => {
    const plain = await decrypt(
      Buffer.concat([Buffer.from('homeserver.yaml'), Buffer.alloc(1000)]),
    );
    expect(plain.released.length).toBe(0);
    expect(described(plain.error).message).toBe(
      'backup X is not a readable encrypted backup (its header is malformed: Not a supported message format version.)',
    );
    const empty = await decrypt(Buffer.alloc(0));
    expect(described(empty.error).message).toBe(
      'backup X is truncated (its header is incomplete); it cannot be restored',
    );
  });

  test('destroyed mid-message: quiet, and nothing of the open frame released', async () => {
    const plaintext = randomBytes(3 * FRAME);
    const message = await encrypt(plaintext);
    const stage = createDecryptStream(PASSPHRASE);
    const pushed: Buffer[] = [];
    stage.on('data', (b: Buffer) => pushed.push(b));
    stage.on('error', () => undefined);
    const cutAt = bodyStart(message) + REGULAR_FRAME_BYTES + 500;
    await new Promise<void>((resolve) => stage.write(message.subarray(0, cutAt), () => resolve()));
    stage.destroy(new Error('stopped'));
    await new Promise((resolve) => stage.once('close', resolve));
    expect(Buffer.concat(pushed).equals(plaintext.subarray(0, FRAME))).toBe(true);
  });
});

describeWithPeers(['esdk'])('framed decryption and the Python SDK', () => {
  test.each(LENGTHS)('reads what Python encrypts (%s)', async (_label, length) => {
    const plaintext = randomBytes(length);
    const py = await pythonEsdk().run('encrypt', PASSPHRASE, plaintext, {
      frameLength: FRAME,
      context: { 'synapse-backup-id': 'P' },
    });
    expect(py.stderr).toBe('');
    expect(py.code).toBe(0);
    const { released, error } = await decrypt(py.stdout, { expectedId: 'P' });
    expect(error).toBeUndefined();
    expect(released.equals(plaintext)).toBe(true);
  });

  test('Python’s default frame length (4096) and no context, as the seed wrote', async () => {
    const plaintext = randomBytes(5 * 4096 + 7);
    const py = await pythonEsdk().run('encrypt', PASSPHRASE, plaintext);
    expect(py.code).toBe(0);
    const { released, error } = await decrypt(py.stdout, { expectedId: 'whatever' });
    expect(error).toBeUndefined();
    expect(createHash('sha256').update(released).digest('hex')).toBe(
      createHash('sha256').update(plaintext).digest('hex'),
    );
  });

  test('what we encrypt, Python decrypts, and a frame we damage, Python refuses too', async () => {
    const plaintext = randomBytes(3 * FRAME + 9);
    const message = await encrypt(plaintext);
    const py = await pythonEsdk().run('decrypt', PASSPHRASE, message);
    expect(py.code).toBe(0);
    expect(py.stdout.equals(plaintext)).toBe(true);
    message[bodyStart(message) + 30]! ^= 1;
    expect((await pythonEsdk().run('decrypt', PASSPHRASE, message)).code).not.toBe(0);
    expect((await decrypt(message)).released.length).toBe(0);
  });
});
