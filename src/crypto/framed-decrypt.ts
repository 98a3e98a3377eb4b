import { Transform, type TransformCallback } from 'node:stream';
import {
  type AwsEsdkJsDecipherGCM,
  CommitmentPolicy,
  CommitmentPolicySuites,
  type GetDecipher,
  type KeyringNode,
  NodeAlgorithmSuite,
  NodeDefaultCryptographicMaterialsManager,
  getDecryptionHelper,
} from '@aws-crypto/material-management-node';
import {
  ContentType,
  type HeaderInfo,
  type MessageHeader,
  SequenceIdentifier,
  deserializeFactory,
} from '@aws-crypto/serialize';
import { frameAad } from './framed-encrypt';

/**
 * ESDK message in, plaintext out, for the one kind of message the engine reads and writes:
 * framed, algorithm suite 0x0478 (ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY,
 * unsigned, key-committing), commitment policy REQUIRE_ENCRYPT_REQUIRE_DECRYPT. It reads
 * the same messages as the SDK's `decryptUnsignedMessageStream` (and the Python SDK's
 * `decrypt-unsigned`) at about twice its speed, and is stricter in two places.
 *
 * The header comes from the SDK's own pieces, as in framed-encrypt.ts: `@aws-crypto/serialize`
 * parses it; the keyring, through the default materials manager, unwraps the data key;
 * `getDecryptionHelper` derives the frame key and checks the header's key commitment
 * (timing-safe); the header's authentication tag (AES-GCM over the header bytes, the
 * all-zero IV) is checked before anything else is read. Then each frame
 *
 *   regular: seq (uint32) | IV (12) | ciphertext (frameLength) | tag (16)
 *   final:   0xFFFFFFFF | seq | IV | length (uint32, <= frameLength) | ciphertext | tag
 *
 * must carry the next sequence number (1, 2, ...), and is decrypted with AAD = message id |
 * "AWSKMSEncryptionClient Frame" or "... Final Frame" | seq | length (uint64). A frame's
 * plaintext is held until its tag has verified, then pushed: no byte of a frame that does
 * not authenticate ever leaves the stream (at most one frame, frameLength bytes, is held).
 *
 * Stricter than the SDK: bytes after the final frame are refused (the SDK ignores them),
 * and a header larger than 1 MiB is refused before it is parsed whole.
 *
 * Errors are {@link MessageFormatError}s (`kind` says truncated, damaged or unreadable) or
 * the SDK's own (a wrong passphrase: "unencryptedDataKey has not been set"; a commitment
 * that does not match: "Commitment does not match."); esdk.ts words them for operators.
 */

const toUtf8 = (input: Uint8Array): string =>
  Buffer.from(input.buffer, input.byteOffset, input.byteLength).toString('utf8');
const deserialize = deserializeFactory(toUtf8, NodeAlgorithmSuite);

/** The one algorithm suite this reads (unsigned, key-committing). */
const READ_SUITE = 0x0478;
const MAX_HEADER_BYTES = 1024 * 1024;
const SEQUENCE_END = SequenceIdentifier.SEQUENCE_NUMBER_END;
const REGULAR_STRING = Buffer.from('AWSKMSEncryptionClient Frame', 'utf8');
const FINAL_STRING = Buffer.from('AWSKMSEncryptionClient Final Frame', 'utf8');

/** What went wrong with a message's bytes: cut short, altered, or not a kind this reads. */
export class MessageFormatError extends Error {
  constructor(
    readonly kind: 'truncated' | 'damaged' | 'unreadable',
    message: string,
  ) {
    super(message);
    this.name = 'MessageFormatError';
  }
}

interface Frame {
  final: boolean;
  remaining: number;
  decipher: AwsEsdkJsDecipherGCM;
  /** Plaintext of this frame so far: released only once the tag has verified. */
  clear: Buffer[];
}

type Phase = 'header' | 'frame-header' | 'content' | 'tag' | 'done';

export interface FramedDecryptOptions {
  /**
   * Called with the authenticated header before any plaintext is pushed; a returned
   * error fails the stream (e.g. the backup id in its encryption context is another's).
   */
  checkHeader?: (header: MessageHeader) => Error | undefined;
}

/**
 * The transform described above. Emits 'MessageHeader' (the parsed header, whose
 * encryption context is authenticated) once the header has verified.
 */
export class FramedDecryptStream extends Transform {
  private phase: Phase = 'header';
  /** Bytes of a header, frame header or tag not yet complete. */
  private partial: Buffer = Buffer.alloc(0);
  private getDecipher: GetDecipher | undefined;
  private dispose: (() => void) | undefined;
  private messageId = Buffer.alloc(0);
  private frameLength = 0;
  private ivLength = 12;
  private tagLength = 16;
  private sequenceNumber = 0;
  private frame: Frame | undefined;

  constructor(
    private readonly keyring: KeyringNode,
    private readonly options: FramedDecryptOptions = {},
  ) {
    super({ readableHighWaterMark: 1024 * 1024 + 64 * 1024 });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    if (this.phase !== 'header') {
      this.run(() => this.body(chunk), done);
      return;
    }
    const bytes = this.partial.length > 0 ? Buffer.concat([this.partial, chunk]) : chunk;
    let info: HeaderInfo | false;
    try {
      info = deserialize.deserializeMessageHeader(bytes, { maxEncryptedDataKeys: false });
    } catch (err) {
      done(
        new MessageFormatError('unreadable', `its header is malformed: ${(err as Error).message}`),
      );
      return;
    }
    if (!info) {
      this.partial = bytes;
      done(
        bytes.length > MAX_HEADER_BYTES
          ? new MessageFormatError('unreadable', 'its header is larger than 1 MiB')
          : undefined,
      );
      return;
    }
    const header = info;
    const bodyAt = header.rawHeader.byteLength + header.headerAuth.headerAuthLength;
    this.partial = Buffer.alloc(0);
    this.openHeader(header).then(
      () => {
        if (this.destroyed) done();
        else this.run(() => this.body(bytes.subarray(bodyAt)), done);
      },
      (err: Error) => done(err),
    );
  }

  override _flush(done: TransformCallback): void {
    if (this.phase === 'done') {
      this.release();
      done();
      return;
    }
    done(
      new MessageFormatError(
        'truncated',
        this.phase === 'header' ? 'its header is incomplete' : 'it ends before its final frame',
      ),
    );
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.frame = undefined;
    this.release();
    done(err);
  }

  private release(): void {
    this.dispose?.();
    this.dispose = undefined;
    this.getDecipher = undefined;
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

  /** Suite and policy checks, the data key, the key commitment and the header's tag. */
  private async openHeader(info: HeaderInfo): Promise<void> {
    const { messageHeader, algorithmSuite, rawHeader, headerAuth } = info;
    if (messageHeader.suiteId !== READ_SUITE) {
      throw new MessageFormatError(
        'unreadable',
        `it uses algorithm suite 0x${messageHeader.suiteId.toString(16).padStart(4, '0')}; backups use 0x0478 (ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY) only`,
      );
    }
    if (messageHeader.contentType !== ContentType.FRAMED_DATA || messageHeader.frameLength <= 0) {
      throw new MessageFormatError('unreadable', 'it is not framed; backups are framed messages');
    }
    const messageId = Buffer.from(messageHeader.messageId);
    CommitmentPolicySuites.isDecryptEnabled(
      CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT,
      algorithmSuite,
      messageId.toString('hex'),
    );
    const cmm = new NodeDefaultCryptographicMaterialsManager(this.keyring);
    const material = await cmm.decryptMaterials({
      suite: new NodeAlgorithmSuite(READ_SUITE),
      encryptionContext: messageHeader.encryptionContext,
      encryptedDataKeys: messageHeader.encryptedDataKeys,
    });
    if (this.destroyed) {
      material.zeroUnencryptedDataKey();
      return;
    }
    // Throws "unencryptedDataKey has not been set" when no key unwrapped (wrong passphrase).
    const { getDecipherInfo, dispose } = getDecryptionHelper(material);
    this.dispose = dispose;
    // Throws "Commitment does not match." unless the key commits to the header's value.
    const suiteData = 'suiteData' in messageHeader ? messageHeader.suiteData : undefined;
    this.getDecipher = getDecipherInfo(messageId, suiteData);
    const auth = this.getDecipher(headerAuth.headerIv);
    auth.setAAD(Buffer.from(rawHeader.buffer, rawHeader.byteOffset, rawHeader.byteLength));
    auth.setAuthTag(Buffer.from(headerAuth.headerAuthTag));
    auth.update(Buffer.alloc(0));
    try {
      auth.final();
    } catch {
      throw new MessageFormatError('damaged', 'its header does not authenticate');
    }
    this.messageId = messageId;
    this.frameLength = messageHeader.frameLength;
    this.ivLength = algorithmSuite.ivLength;
    this.tagLength = algorithmSuite.tagLength / 8;
    this.phase = 'frame-header';
    this.emit('MessageHeader', messageHeader);
    const refused = this.options.checkHeader?.(messageHeader);
    if (refused) throw refused;
  }

  /** Consumes body bytes: frame headers, content (deciphered as it comes) and tags. */
  private body(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.phase === 'content') {
        const frame = this.frame!;
        const take = Math.min(frame.remaining, chunk.length - at);
        frame.clear.push(frame.decipher.update(chunk.subarray(at, at + take)));
        frame.remaining -= take;
        at += take;
        if (frame.remaining === 0) this.phase = 'tag';
        continue;
      }
      if (this.phase === 'done') {
        throw new MessageFormatError('damaged', 'it has bytes after its final frame');
      }
      const need = this.phase === 'tag' ? this.tagLength : this.frameHeaderLength(chunk, at);
      const have = this.partial.length;
      const take = Math.min(need - have, chunk.length - at);
      const piece = chunk.subarray(at, at + take);
      at += take;
      if (have + take < need) {
        this.partial = Buffer.concat([this.partial, piece]);
        continue;
      }
      const whole = have > 0 ? Buffer.concat([this.partial, piece]) : piece;
      this.partial = Buffer.alloc(0);
      if (this.phase === 'tag') this.closeFrame(whole);
      else this.openFrame(whole);
    }
  }

  /** Bytes of the frame header that starts at partial + chunk[at]: regular or final. */
  private frameHeaderLength(chunk: Buffer, at: number): number {
    const regular = 4 + this.ivLength;
    const first = Buffer.concat([this.partial, chunk.subarray(at, at + 4)]);
    if (first.length < 4) return regular;
    return first.readUInt32BE(0) === SEQUENCE_END ? regular + 8 : regular;
  }

  private openFrame(header: Buffer): void {
    const final = header.readUInt32BE(0) === SEQUENCE_END;
    const seq = header.readUInt32BE(final ? 4 : 0);
    const expected = this.sequenceNumber + 1;
    if (seq !== expected || seq === SEQUENCE_END) {
      throw new MessageFormatError(
        'damaged',
        `frame ${seq} came where frame ${expected} should be (frames removed or reordered)`,
      );
    }
    const ivAt = final ? 8 : 4;
    const iv = header.subarray(ivAt, ivAt + this.ivLength);
    const length = final ? header.readUInt32BE(ivAt + this.ivLength) : this.frameLength;
    if (length > this.frameLength) {
      throw new MessageFormatError(
        'damaged',
        `its final frame claims ${length} bytes, more than the frame length ${this.frameLength}`,
      );
    }
    const decipher = this.getDecipher!(iv);
    decipher.setAAD(frameAad(this.messageId, final ? FINAL_STRING : REGULAR_STRING, seq, length));
    this.sequenceNumber = seq;
    this.frame = { final, remaining: length, decipher, clear: [] };
    this.phase = length > 0 ? 'content' : 'tag';
  }

  /** Verifies the frame's tag, then (only then) releases its plaintext. */
  private closeFrame(tag: Buffer): void {
    const frame = this.frame!;
    this.frame = undefined;
    frame.decipher.setAuthTag(tag);
    let tail: Buffer;
    try {
      tail = frame.decipher.final();
    } catch {
      throw new MessageFormatError(
        'damaged',
        `frame ${this.sequenceNumber} does not authenticate: altered or corrupted`,
      );
    }
    for (const piece of frame.clear) if (piece.length > 0) this.push(piece);
    if (tail.length > 0) this.push(tail);
    this.phase = frame.final ? 'done' : 'frame-header';
  }
}
