import { type CipherGCM, randomBytes } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import {
  CommitmentPolicy,
  CommitmentPolicySuites,
  type KeyringNode,
  MessageFormat,
  NodeAlgorithmSuite,
  NodeDefaultCryptographicMaterialsManager,
  getEncryptHelper,
  needs,
} from '@aws-crypto/material-management-node';
import {
  ContentAADString,
  MessageIdLength,
  SequenceIdentifier,
  serializeFactory,
  serializeMessageHeaderAuth,
} from '@aws-crypto/serialize';

/**
 * An AWS Encryption SDK message, framed, for an unsigned algorithm suite: the
 * same bytes the SDK's `encryptStream` writes, without its per-chunk overhead.
 *
 * The header comes from the SDK's own pieces: the keyring and the default
 * materials manager make the data key and its encrypted copies,
 * `getEncryptHelper` derives the frame key and the key commitment from a fresh
 * message id, and `@aws-crypto/serialize` builds and serializes the header;
 * its authentication tag is AES-GCM over the header with the all-zero IV, as
 * in the SDK. The body is the SDK's framing, written with Node's AES-GCM:
 *
 *   regular frame: seq (uint32) | IV (12) | ciphertext (frameLength) | tag (16)
 *   final frame:   0xFFFFFFFF | seq | IV | length (uint32) | ciphertext (length) | tag
 *
 * with IV = 8 zero bytes and seq big-endian, and AAD = message id | "AWSKMSEncryptionClient
 * Frame" or "... Final Frame" | seq (uint32) | length (uint64). As in the SDK, a frame is
 * sealed as regular as soon as it holds frameLength bytes, and the final frame holds what
 * is left (0 to frameLength - 1 bytes): the same input gives the same structure, frame
 * for frame.
 *
 * Plaintext is never copied: a frame's pending input is kept as references to the chunks
 * that arrived (at most frameLength bytes) and is encrypted in one pass once the frame is
 * complete or the input ends. Each frame costs one cipher, one small header and one tag.
 * Destroying the stream at any point is safe (nothing runs outside it).
 */

const fromUtf8 = (input: string): Uint8Array => Buffer.from(input, 'utf8');
const serialize = serializeFactory(fromUtf8, { utf8Sorting: true });

/** The last sequence number a frame may carry (the final-frame marker is 0xFFFFFFFF). */
const MAX_SEQUENCE_NUMBER = SequenceIdentifier.SEQUENCE_NUMBER_END;
const REGULAR_STRING = Buffer.from(ContentAADString.FRAME_STRING_ID, 'utf8');
const FINAL_STRING = Buffer.from(ContentAADString.FINAL_FRAME_STRING_ID, 'utf8');

export interface FramedMessageOptions {
  suiteId: number;
  frameLength: number;
  commitmentPolicy: CommitmentPolicy;
  /**
   * The message's encryption context: UTF-8 key-value pairs serialized in the
   * header (sorted by key, as the SDK does) and so authenticated by its tag.
   * Default none.
   */
  encryptionContext?: Record<string, string>;
}

/** What a message needs once its header is written: the frame cipher and the AAD prefix. */
export interface MessageSession {
  /** Serialized header followed by its authentication (for v2: the tag alone). */
  readonly header: Buffer;
  readonly messageId: Buffer;
  readonly frameLength: number;
  readonly ivLength: number;
  getCipher(iv: Uint8Array): CipherGCM;
  /** Zeroes the data key. Idempotent. */
  dispose(): void;
}

/** Materials, key derivation and header, as the SDK's `encryptStream` makes them. */
export async function startMessage(
  keyring: KeyringNode,
  { suiteId, frameLength, commitmentPolicy, encryptionContext = {} }: FramedMessageOptions,
): Promise<MessageSession> {
  const suite = new NodeAlgorithmSuite(suiteId);
  needs(!suite.signatureCurve, 'this framed transform writes unsigned messages only');
  CommitmentPolicySuites.isEncryptEnabled(commitmentPolicy, suite);
  const cmm = new NodeDefaultCryptographicMaterialsManager(keyring);
  const material = await cmm.getEncryptionMaterials({
    suite,
    encryptionContext,
    commitmentPolicy,
  });
  CommitmentPolicySuites.isEncryptEnabled(commitmentPolicy, material.suite);
  const { getCipherInfo, dispose } = getEncryptHelper(material);
  try {
    const messageIdLength =
      material.suite.messageFormat === MessageFormat.V2 ? MessageIdLength.V2 : MessageIdLength.V1;
    const messageId = randomBytes(messageIdLength);
    const { getCipher, keyCommitment } = getCipherInfo(messageId);
    const messageHeader = serialize.buildMessageHeader({
      suite: material.suite,
      encryptedDataKeys: material.encryptedDataKeys,
      encryptionContext: material.encryptionContext,
      messageId,
      frameLength,
      suiteData: keyCommitment,
    });
    const headerBytes = toBuffer(serialize.serializeMessageHeader(messageHeader));
    const headerIv = serialize.headerAuthIv(material.suite.ivLength);
    const headerAuth = getCipher(headerIv);
    headerAuth.setAAD(headerBytes);
    headerAuth.update(Buffer.alloc(0));
    headerAuth.final();
    const auth = serializeMessageHeaderAuth({
      headerIv,
      headerAuthTag: headerAuth.getAuthTag(),
      messageHeader,
    });
    return {
      header: Buffer.concat([headerBytes, auth]),
      messageId,
      frameLength,
      ivLength: material.suite.ivLength,
      getCipher: (iv) => getCipher(iv) as CipherGCM,
      dispose,
    };
  } catch (err) {
    dispose();
    throw err;
  }
}

/**
 * Plaintext in, ESDK message out. `session` is usually {@link startMessage}'s promise;
 * the header is written with the first output.
 */
export class FramedEncryptStream extends Transform {
  private session: MessageSession | undefined;
  private readonly pendingSession: Promise<MessageSession>;
  /** Input of the frame being filled (references, not copies). */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private sequenceNumber = 1;
  private regularAad: Buffer | undefined;
  private finished = false;

  constructor(
    session: Promise<MessageSession>,
    options: { readableHighWaterMark?: number; writableHighWaterMark?: number } = {},
  ) {
    super(options);
    this.pendingSession = session;
    // Reported through the first write or the end; never as an unhandled rejection.
    session.catch(() => undefined);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    if (this.session) {
      this.run(() => this.accept(chunk), done);
      return;
    }
    this.pendingSession.then(
      (session) => {
        if (this.destroyed) {
          session.dispose();
          return;
        }
        this.begin(session);
        this.run(() => this.accept(chunk), done);
      },
      (err: Error) => done(err),
    );
  }

  override _flush(done: TransformCallback): void {
    const finish = (): void => {
      this.sealFrame(true);
      this.finished = true;
      this.session?.dispose();
    };
    if (this.session) {
      this.run(finish, done);
      return;
    }
    this.pendingSession.then(
      (session) => {
        this.begin(session);
        this.run(finish, done);
      },
      (err: Error) => done(err),
    );
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.pending = [];
    if (this.session) this.session.dispose();
    else if (!this.finished)
      this.pendingSession.then(
        (s) => s.dispose(),
        () => undefined,
      );
    done(err);
  }

  private run(step: () => void, done: TransformCallback): void {
    try {
      step();
    } catch (err) {
      done(err as Error);
      return;
    }
    done();
  }

  private begin(session: MessageSession): void {
    this.session = session;
    this.regularAad = frameAad(session.messageId, REGULAR_STRING, 0, session.frameLength);
    this.push(session.header);
  }

  private accept(chunk: Buffer): void {
    const { frameLength } = this.session!;
    let offset = 0;
    while (chunk.length - offset >= frameLength - this.pendingBytes) {
      const end = offset + frameLength - this.pendingBytes;
      this.pending.push(offset === 0 && end === chunk.length ? chunk : chunk.subarray(offset, end));
      this.pendingBytes = frameLength;
      offset = end;
      this.sealFrame(false);
    }
    if (offset < chunk.length) {
      this.pending.push(offset === 0 ? chunk : chunk.subarray(offset));
      this.pendingBytes += chunk.length - offset;
    }
  }

  /** Encrypts and pushes the pending input as one frame. */
  private sealFrame(isFinal: boolean): void {
    const session = this.session!;
    const seq = this.sequenceNumber;
    if (seq > MAX_SEQUENCE_NUMBER) {
      throw new Error(
        `the message would need more than ${MAX_SEQUENCE_NUMBER} frames; use a larger frame length`,
      );
    }
    const length = this.pendingBytes;
    const iv = Buffer.alloc(session.ivLength);
    iv.writeUInt32BE(seq, session.ivLength - 4);
    let header: Buffer;
    let aad: Buffer;
    if (isFinal) {
      header = Buffer.allocUnsafe(12 + session.ivLength);
      header.writeUInt32BE(SequenceIdentifier.SEQUENCE_NUMBER_END, 0);
      header.writeUInt32BE(seq, 4);
      iv.copy(header, 8);
      header.writeUInt32BE(length, 8 + session.ivLength);
      aad = frameAad(session.messageId, FINAL_STRING, seq, length);
    } else {
      header = Buffer.allocUnsafe(4 + session.ivLength);
      header.writeUInt32BE(seq, 0);
      iv.copy(header, 4);
      aad = this.regularAad!;
      aad.writeUInt32BE(seq, aad.length - 12);
    }
    const cipher = session.getCipher(iv);
    cipher.setAAD(aad);
    this.push(header);
    for (const piece of this.pending) this.push(cipher.update(piece));
    const tail = cipher.final();
    if (tail.length > 0) this.push(tail);
    this.push(cipher.getAuthTag());
    this.pending = [];
    this.pendingBytes = 0;
    this.sequenceNumber = seq + 1;
  }
}

/** messageId | content string | seq (uint32 BE) | length (uint64 BE). */
export function frameAad(
  messageId: Uint8Array,
  contentString: Uint8Array,
  seq: number,
  length: number,
): Buffer {
  const aad = Buffer.alloc(messageId.length + contentString.length + 12);
  aad.set(messageId, 0);
  aad.set(contentString, messageId.length);
  aad.writeUInt32BE(seq, aad.length - 12);
  aad.writeBigUInt64BE(BigInt(length), aad.length - 8);
  return aad;
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
