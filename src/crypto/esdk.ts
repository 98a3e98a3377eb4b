import { createHash } from 'node:crypto';
import type { Duplex, Transform } from 'node:stream';
import { buildDecrypt } from '@aws-crypto/decrypt-node';
import { AlgorithmSuiteIdentifier, CommitmentPolicy } from '@aws-crypto/material-management-node';
import { RawAesKeyringNode, RawAesWrappingSuiteIdentifier } from '@aws-crypto/raw-aes-keyring-node';
import { BackupError, ConfigError } from '../errors';
import { FramedDecryptStream, MessageFormatError } from './framed-decrypt';
import { FramedEncryptStream, startMessage } from './framed-encrypt';

/**
 * The seed's on-disk format: an AWS Encryption SDK message, unsigned committing
 * suite 0x0478, a raw AES keyring named static-random/master_key whose wrapping
 * key is SHA-256 of the passphrase. Python's RawMasterKey with the same
 * provider id and key id reads and writes the same messages.
 */
export const KEY_NAMESPACE = 'static-random';
export const KEY_NAME = 'master_key';
export const SUITE_ID = AlgorithmSuiteIdentifier.ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY;
export const SUITE_NAME = 'ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY';
export const DEFAULT_FRAME_LENGTH = 1024 * 1024;
/**
 * The encryption-context key that binds a message to its backup id: in the
 * header, so authenticated with it (AWS Encryption SDK message format,
 * "Encryption Context" in the header body). Messages of the original Python
 * design carry no context.
 */
export const BACKUP_ID_CONTEXT_KEY = 'synapse-backup-id';
const MAX_FRAME_LENGTH = 2 ** 31 - 1;

export interface EncryptionParameters {
  format: 'aws-encryption-sdk';
  algorithmSuite: string;
  algorithmSuiteId: number;
  commitmentPolicy: 'REQUIRE_ENCRYPT_REQUIRE_DECRYPT';
  keyNamespace: string;
  keyName: string;
  wrappingAlgorithm: 'AES256_GCM_IV12_TAG16_NO_PADDING';
  keyDerivation: 'sha256(passphrase-utf8)';
  frameLength: number;
}

export function encryptionParameters(frameLength: number): EncryptionParameters {
  return {
    format: 'aws-encryption-sdk',
    algorithmSuite: SUITE_NAME,
    algorithmSuiteId: SUITE_ID,
    commitmentPolicy: 'REQUIRE_ENCRYPT_REQUIRE_DECRYPT',
    keyNamespace: KEY_NAMESPACE,
    keyName: KEY_NAME,
    wrappingAlgorithm: 'AES256_GCM_IV12_TAG16_NO_PADDING',
    keyDerivation: 'sha256(passphrase-utf8)',
    frameLength,
  };
}

export function validateFrameLength(frameLength: number): number {
  if (!Number.isInteger(frameLength) || frameLength <= 0 || frameLength > MAX_FRAME_LENGTH) {
    throw new ConfigError(`frame length must be a whole number from 128 to ${MAX_FRAME_LENGTH}`);
  }
  if (frameLength % 128 !== 0) {
    throw new ConfigError(`frame length ${frameLength} is not a multiple of 128 bytes`);
  }
  return frameLength;
}

/** The seed's keyring: raw AES, static-random/master_key, wrapping key SHA-256(passphrase). */
export function createKeyring(passphrase: string): RawAesKeyringNode {
  if (!passphrase) throw new ConfigError('the backup passphrase is empty');
  const unencryptedMasterKey = createHash('sha256').update(passphrase, 'utf8').digest();
  return new RawAesKeyringNode({
    keyNamespace: KEY_NAMESPACE,
    keyName: KEY_NAME,
    unencryptedMasterKey,
    wrappingSuite: RawAesWrappingSuiteIdentifier.AES256_GCM_IV12_TAG16_NO_PADDING,
  });
}

const { decryptUnsignedMessageStream } = buildDecrypt(
  CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT,
);

/** Buffered output of the encryption stage: one 1 MiB frame and its header and tag. */
const ENCRYPT_HIGH_WATER_MARK = 1024 * 1024 + 64 * 1024;

/**
 * A transform: plaintext in, ESDK message out, byte-compatible with the SDK's
 * `encryptStream` (see framed-encrypt.ts). The SDK's own stream costs several
 * times the CPU (a setImmediate per input chunk, readable-stream and duplexify
 * layers) and cannot be destroyed mid-message without an uncaught exception.
 */
export function createEncryptStream(
  passphrase: string,
  frameLength = DEFAULT_FRAME_LENGTH,
  encryptionContext: Record<string, string> = {},
): Transform {
  const session = startMessage(createKeyring(passphrase), {
    suiteId: SUITE_ID,
    frameLength: validateFrameLength(frameLength),
    commitmentPolicy: CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT,
    encryptionContext,
  });
  return new FramedEncryptStream(session, { readableHighWaterMark: ENCRYPT_HIGH_WATER_MARK });
}

/** What the engine reads of a parsed, authenticated ESDK header. */
export interface MessageHeaderContext {
  encryptionContext?: Record<string, string>;
}

/**
 * The `wrong-backup` error when an authenticated header names another backup
 * id than `expectedId` under {@link BACKUP_ID_CONTEXT_KEY}; undefined when it
 * names `expectedId` or none (a message of the original Python design).
 */
export function refuseOtherBackup(
  header: MessageHeaderContext,
  expectedId: string,
): BackupError | undefined {
  const found = header.encryptionContext?.[BACKUP_ID_CONTEXT_KEY];
  if (found === undefined || found === expectedId) return undefined;
  return new BackupError(
    'wrong-backup',
    `backup ${expectedId}'s object holds backup ${found} (its encrypted header says so): refused`,
  );
}

/**
 * A transform: ESDK message in, plaintext out (framed-decrypt.ts: suite 0x0478 only,
 * every frame authenticated before a byte of it is pushed). Errors are mapped by
 * {@link describeDecryptError}. With `expectedId`, the header's `synapse-backup-id`
 * (once the header has authenticated) must be that id, or absent (a message of the
 * original Python design): else the stream fails with `wrong-backup` before any
 * plaintext leaves it; then `checkHeader`'s error, if any, fails it the same way.
 */
export function createDecryptStream(
  passphrase: string,
  expectedId?: string,
  checkHeader?: (header: MessageHeaderContext) => Error | undefined,
): Transform {
  return new FramedDecryptStream(createKeyring(passphrase), {
    checkHeader: (header) =>
      (expectedId === undefined ? undefined : refuseOtherBackup(header, expectedId)) ??
      checkHeader?.(header),
  });
}

/**
 * The SDK's own streaming decryption (`decryptUnsignedMessageStream`), for comparison
 * (bench/crypto-stage.ts) and as a second reader in tests. Same errors as above.
 */
export function createSdkDecryptStream(passphrase: string): Duplex {
  return decryptUnsignedMessageStream(createKeyring(passphrase));
}

/**
 * Turns decryption errors (framed-decrypt.ts's, and the SDK's terse ones) into the
 * operator's terms. Plaintext of earlier frames may already have been emitted when
 * these fire: callers must never treat output as good before the stream has ended
 * cleanly.
 */
export function describeDecryptError(err: unknown, what: string): BackupError {
  if (err instanceof BackupError) return err;
  if (err instanceof MessageFormatError) {
    if (err.kind === 'truncated') {
      return new BackupError(
        'corrupt',
        `${what} is truncated (${err.message}); it cannot be restored`,
      );
    }
    if (err.kind === 'damaged') {
      return new BackupError(
        'corrupt',
        `${what} is damaged: its authentication check failed (${err.message}); it cannot be restored`,
      );
    }
    return new BackupError(
      'decrypt',
      `${what} is not a readable encrypted backup (${err.message})`,
    );
  }
  const message = err instanceof Error ? err.message : String(err);
  if (/unencryptedDataKey has not been set/.test(message)) {
    return new BackupError(
      'wrong-passphrase',
      `cannot decrypt ${what}: the passphrase does not match the one it was encrypted with`,
      {
        remedy: {
          kind: 'set',
          setting: 'backup-passphrase',
          how: 'to the passphrase in use when this backup was made',
        },
      },
    );
  }
  if (/Incomplete (message|Header)/i.test(message)) {
    return new BackupError('corrupt', `${what} is truncated (${message}); it cannot be restored`);
  }
  if (/unable to authenticate data|Commitment does not match|Invalid tag/i.test(message)) {
    return new BackupError(
      'corrupt',
      `${what} is damaged: its authentication check failed (${message}); it cannot be restored`,
    );
  }
  return new BackupError('decrypt', `${what} is not a readable encrypted backup (${message})`, {
    cause: err,
  });
}
