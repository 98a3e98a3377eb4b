import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { buildDecrypt } from '@aws-crypto/decrypt-node';
import { buildEncrypt } from '@aws-crypto/encrypt-node';
import { CommitmentPolicy, NodeAlgorithmSuite } from '@aws-crypto/material-management-node';
import {
  ContentType,
  type HeaderInfo,
  aadFactory,
  decodeBodyHeader,
  deserializeFactory,
} from '@aws-crypto/serialize';
import { SUITE_ID, createEncryptStream, createKeyring } from '../src/crypto/esdk';
import { frameAad } from '../src/crypto/framed-encrypt';
import { describeWithPeers, pythonEsdk } from './support/peers';

/**
 * The framed transform (src/crypto/framed-encrypt.ts) against the SDK it replaces: same
 * message structure frame for frame, output the SDK and the Python SDK decrypt.
 */

const PASSPHRASE = 'framed pässphrase';
const FRAME = 4096;
const { encryptStream } = buildEncrypt(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT);
const { decryptUnsignedMessageStream } = buildDecrypt(
  CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT,
);
const { deserializeMessageHeader } = deserializeFactory(
  (bytes: Uint8Array) => Buffer.from(bytes).toString('utf8'),
  NodeAlgorithmSuite,
);

/** Plaintext lengths around the frame boundaries, and many frames. */
const LENGTHS: [string, number][] = [
  ['empty', 0],
  ['1 byte', 1],
  ['frame - 1', FRAME - 1],
  ['one frame', FRAME],
  ['frame + 1', FRAME + 1],
  ['many frames', 37 * FRAME + 123],
  ['many whole frames', 16 * FRAME],
];

/** `data` cut into chunks of varying sizes (as a pipe or a websocket would deliver it). */
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

const ours = (plaintext: Buffer, frameLength = FRAME) =>
  collect(Readable.from(chunked(plaintext)), createEncryptStream(PASSPHRASE, frameLength));

const sdks = (plaintext: Buffer, frameLength = FRAME) =>
  collect(
    Readable.from(chunked(plaintext)),
    encryptStream(createKeyring(PASSPHRASE), { suiteId: SUITE_ID, frameLength }),
  );

const sdkDecrypt = (message: Buffer) =>
  collect(Readable.from(chunked(message)), decryptUnsignedMessageStream(createKeyring(PASSPHRASE)));

interface Frame {
  sequenceNumber: number;
  iv: string;
  contentLength: number;
  isFinalFrame: boolean;
  /** Bytes of the frame on the wire: header, ciphertext and tag. */
  wireBytes: number;
}

/** Parses a message with the SDK's own deserializers: header fields and every frame. */
function structure(message: Buffer) {
  const info = deserializeMessageHeader(message) as HeaderInfo;
  expect(info).toBeTruthy();
  const { messageHeader, headerLength, headerAuth } = info;
  const frames: Frame[] = [];
  let at = headerLength + headerAuth.headerAuthLength;
  for (;;) {
    const body = decodeBodyHeader(message, info, at);
    if (!body) throw new Error(`no frame header at byte ${at}`);
    const end = body.readPos + body.contentLength + body.tagLength / 8; // tagLength is in bits
    frames.push({
      sequenceNumber: body.sequenceNumber,
      iv: Buffer.from(body.iv).toString('hex'),
      contentLength: body.contentLength,
      isFinalFrame: body.isFinalFrame,
      wireBytes: end - at,
    });
    at = end;
    if (body.isFinalFrame) break;
  }
  // Raw AES provider info: key name | tag length in bits | IV length | IV (random, left out).
  const edks = messageHeader.encryptedDataKeys.map((edk) => {
    const info = Buffer.from(edk.rawInfo!);
    return {
      providerId: edk.providerId,
      providerInfoBytes: info.length,
      keyName: info.subarray(0, info.length - 20).toString('utf8'),
      tagLengthBits: info.readUInt32BE(info.length - 20),
      ivLength: info.readUInt32BE(info.length - 16),
      encryptedDataKeyBytes: edk.encryptedDataKey.length,
    };
  });
  return {
    header: {
      version: messageHeader.version,
      suiteId: messageHeader.suiteId,
      messageIdBytes: messageHeader.messageId.length,
      encryptionContext: messageHeader.encryptionContext,
      encryptedDataKeys: edks,
      contentType: messageHeader.contentType,
      frameLength: messageHeader.frameLength,
      suiteDataBytes: 'suiteData' in messageHeader ? messageHeader.suiteData.length : 0,
      headerLength,
      headerAuthLength: headerAuth.headerAuthLength,
      headerIv: Buffer.from(headerAuth.headerIv).toString('hex'),
    },
    frames,
    trailingBytes: message.length - at,
    totalBytes: message.length,
  };
}

describe('the framed encryption transform', () => {
  test.each(LENGTHS)(
    'has the structure of the SDK’s message, frame for frame (%s)',
    async (_label, length) => {
      const plaintext = randomBytes(length);
      const [mine, theirs] = await Promise.all([ours(plaintext), sdks(plaintext)]);
      const a = structure(mine);
      const b = structure(theirs);
      expect(a).toEqual(b);

      // And what that structure is, spelled out.
      expect(a.header).toMatchObject({
        version: 2,
        suiteId: 0x0478,
        messageIdBytes: 32,
        encryptionContext: {},
        encryptedDataKeys: [
          {
            providerId: 'static-random',
            keyName: 'master_key',
            tagLengthBits: 128,
            ivLength: 12,
            encryptedDataKeyBytes: 32 + 16,
          },
        ],
        contentType: ContentType.FRAMED_DATA,
        frameLength: FRAME,
        suiteDataBytes: 32,
        headerIv: '000000000000000000000000',
      });
      const regular = Math.floor(length / FRAME);
      expect(a.frames).toHaveLength(regular + 1);
      a.frames.forEach((frame, i) => {
        expect(frame.sequenceNumber).toBe(i + 1);
        expect(frame.iv).toBe((i + 1).toString(16).padStart(24, '0'));
      });
      expect(a.frames.slice(0, -1).every((f) => !f.isFinalFrame && f.contentLength === FRAME)).toBe(
        true,
      );
      expect(a.frames.at(-1)).toMatchObject({ isFinalFrame: true, contentLength: length % FRAME });
      expect(a.trailingBytes).toBe(0);
      // Two messages of the same plaintext never share a message id, hence keys.
      expect(mine.subarray(4, 36).equals(theirs.subarray(4, 36))).toBe(false);
    },
  );

  test('an encryption context (the backup id) is in the header as the SDK writes it', async () => {
    const plaintext = randomBytes(3 * FRAME + 5);
    const context = { 'synapse-backup-id': '20261129120000', other: 'ü' };
    const source = () => Readable.from(chunked(plaintext));
    const [mine, theirs] = await Promise.all([
      collect(source(), createEncryptStream(PASSPHRASE, FRAME, context)),
      collect(
        source(),
        encryptStream(createKeyring(PASSPHRASE), {
          suiteId: SUITE_ID,
          frameLength: FRAME,
          encryptionContext: context,
        }),
      ),
    ]);
    const a = structure(mine);
    expect(a).toEqual(structure(theirs));
    expect(a.header.encryptionContext).toEqual(context);
    expect((await sdkDecrypt(mine)).equals(plaintext)).toBe(true);
    expect((await sdkDecrypt(theirs)).equals(plaintext)).toBe(true);
  });

  test.each(LENGTHS)('decrypts with the SDK’s decryptUnsignedMessageStream (%s)', async (_l, n) => {
    const plaintext = randomBytes(n);
    expect((await sdkDecrypt(await ours(plaintext))).equals(plaintext)).toBe(true);
  });

  test('1 MiB frames, the default: same structure as the SDK and a round trip', async () => {
    const plaintext = randomBytes(3 * 1024 * 1024 + 5);
    const frameLength = 1024 * 1024;
    const mine = await ours(plaintext, frameLength);
    expect(structure(mine)).toEqual(structure(await sdks(plaintext, frameLength)));
    expect(structure(mine).frames.map((f) => f.contentLength)).toEqual([
      frameLength,
      frameLength,
      frameLength,
      5,
    ]);
    expect((await sdkDecrypt(mine)).equals(plaintext)).toBe(true);
  });

  test('the same output whether the input arrives in one piece or in bytes', async () => {
    const plaintext = randomBytes(3 * FRAME + 10);
    const whole = await collect(Readable.from([plaintext]), createEncryptStream(PASSPHRASE, FRAME));
    const bytes = await collect(
      Readable.from(chunked(plaintext, [1])),
      createEncryptStream(PASSPHRASE, FRAME),
    );
    expect(structure(whole)).toEqual(structure(bytes));
    expect((await sdkDecrypt(whole)).equals(plaintext)).toBe(true);
    expect((await sdkDecrypt(bytes)).equals(plaintext)).toBe(true);
  });

  test('frame AAD matches the SDK’s aadFactory', () => {
    const { messageAAD, messageAADContentString } = aadFactory((s: string) =>
      Buffer.from(s, 'utf8'),
    );
    const messageId = randomBytes(32);
    for (const [seq, length, isFinalFrame] of [
      [1, 4096, false],
      [0xfffffffe, 0, true],
      [77, 2 ** 31 - 1, false],
    ] as const) {
      const contentString = messageAADContentString({
        contentType: ContentType.FRAMED_DATA,
        isFinalFrame,
      });
      expect(frameAad(messageId, Buffer.from(contentString), seq, length)).toEqual(
        Buffer.from(messageAAD(messageId, contentString, seq, length)),
      );
    }
  });

  test('a flipped ciphertext byte fails authentication in the SDK', async () => {
    const message = await ours(randomBytes(2 * FRAME));
    const { headerLength, headerAuth } = deserializeMessageHeader(message) as HeaderInfo;
    message[headerLength + headerAuth.headerAuthLength + FRAME + 100]! ^= 1; // in frame 2
    await expect(sdkDecrypt(message)).rejects.toThrow(/unable to authenticate/);
  });

  test('destroying it mid-message is quiet: no uncaught error, the pipeline reports why', async () => {
    const stage = createEncryptStream(PASSPHRASE, FRAME);
    let produced = 0;
    const source = new Readable({
      read() {
        produced += 1;
        if (produced === 5) this.destroy(new Error('tar died'));
        else this.push(randomBytes(3000));
      },
    });
    await expect(
      pipeline(
        source,
        stage,
        new Writable({
          write: (_c, _e, done) => done(),
        }),
      ),
    ).rejects.toThrow('tar died');
    expect(stage.destroyed).toBe(true);
    // A second destroy (what an engine's cleanup may do) is harmless too.
    stage.destroy(new Error('again'));
    await new Promise((resolve) => setImmediate(resolve));
  });

  test('an empty passphrase is refused before anything runs', () => {
    expect(() => createEncryptStream('', FRAME)).toThrow('the backup passphrase is empty');
  });
});

describeWithPeers(['esdk'])('the framed transform’s output in the Python SDK', () => {
  test.each(LENGTHS)('decrypts with aws-encryption-sdk (%s)', async (_label, length) => {
    const plaintext = randomBytes(length);
    const py = await pythonEsdk().run('decrypt', PASSPHRASE, await ours(plaintext));
    expect(py.stderr).toBe('');
    expect(py.code).toBe(0);
    expect(createHash('sha256').update(py.stdout).digest('hex')).toBe(
      createHash('sha256').update(plaintext).digest('hex'),
    );
  });
});
