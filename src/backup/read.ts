/**
 * Reading a backup back: the object streamed through ESDK decryption (which
 * authenticates every frame), the tar scanner and the counters into a sink,
 * then compared with the manifest. Used by verify, decrypt and restore.
 */
import { Writable } from 'node:stream';
import {
  type MessageHeaderContext,
  createDecryptStream,
  describeDecryptError,
  refuseOtherBackup,
} from '../crypto/esdk';
import { BackupError, InterruptedError, errorMessage } from '../errors';
import { counted } from '../format';
import { refuseUnboundSelection } from './binding';
import { completeManifest, objectKey } from './catalog';
import { type EngineContext, passphraseOf, progressTicker } from './context';
import { manifestRoots } from './external';
import { validateBackupId } from './ids';
import type { Manifest } from './manifest';
import { type Stage, runPipeline } from './pipeline';
import { ByteCounter, HashingCounter } from './stages';
import { TarScanner, confinedEntryPolicy } from './tar';
import type { Progress, VerifyResult } from './types';

/** The counters of one read: plaintext bytes and SHA-256, ciphertext bytes, seconds taken. */
export interface ReadCounts {
  plaintext: HashingCounter;
  ciphertext: ByteCounter;
  elapsedSeconds: number;
}

/**
 * Streams backup `id` through decryption (and `scanner`, when given) into
 * `sink`. Returns the counters; the caller compares them with the manifest.
 * Throws the first failing stage's BackupError (`interrupted` when ctx.signal
 * is aborted), `wrong-passphrase`, `corrupt` or `wrong-backup` (the header's
 * backup id is another's) from decryption, else an `s3` error for the read itself.
 */
export async function readArchive(
  ctx: EngineContext,
  id: string,
  phase: Progress['phase'],
  sink: Writable,
  scanner?: TarScanner,
  manifest?: Manifest,
): Promise<ReadCounts> {
  const passphrase = passphraseOf(ctx);
  const { body } = await ctx.store.getStream(objectKey(ctx, id));
  const ciphertext = new ByteCounter();
  const plaintext = new HashingCounter();
  const ticker = progressTicker(ctx, phase, () => plaintext.bytes);
  const decrypt = createDecryptStream(passphrase, id, bindingCheck(id, manifest));
  const stages: Stage[] = [body, ciphertext, decrypt];
  if (scanner) stages.push(scanner);
  stages.push(plaintext, sink);
  const failure = await runPipeline(stages, { signal: ctx.signal });
  if (failure) {
    ticker.stop(false);
    const { stage, error } = failure;
    if (error instanceof BackupError) throw error;
    if (stage === decrypt) throw describeDecryptError(error, `backup ${id}`);
    throw new BackupError('s3', `reading backup ${id} failed: ${errorMessage(error)}`, {
      cause: error,
    });
  }
  ticker.stop(true);
  return { plaintext, ciphertext, elapsedSeconds: ticker.elapsedSeconds };
}

/** Throws `manifest-mismatch` listing every count of `counts` that differs from the manifest's. */
export function compareWithManifest(
  manifest: Manifest,
  counts: { plaintextBytes: number; ciphertextBytes: number; sha256: string; files?: number },
): void {
  const problems: string[] = [];
  if (counts.ciphertextBytes !== manifest.ciphertextBytes) {
    problems.push(
      `${counts.ciphertextBytes} encrypted bytes read, manifest says ${manifest.ciphertextBytes}`,
    );
  }
  if (counts.plaintextBytes !== manifest.plaintextBytes) {
    problems.push(
      `${counts.plaintextBytes} archive bytes, manifest says ${manifest.plaintextBytes}`,
    );
  }
  if (counts.sha256 !== manifest.sha256) {
    problems.push(`SHA-256 ${counts.sha256}, manifest says ${manifest.sha256}`);
  }
  if (counts.files !== undefined && counts.files !== manifest.files) {
    problems.push(`${counted(counts.files, 'file')}, manifest says ${manifest.files}`);
  }
  if (problems.length > 0) {
    throw new BackupError(
      'manifest-mismatch',
      `backup ${manifest.id} does not match its manifest: ${problems.join('; ')}`,
    );
  }
}

/** Reads a complete backup whole, through restore's entry checks, and compares it with its manifest. */
export async function verifyBackup(ctx: EngineContext, id: string): Promise<VerifyResult> {
  passphraseOf(ctx);
  validateBackupId(id);
  const manifest = await completeManifest(ctx, id);
  const scanner = new TarScanner(
    confinedEntryPolicy({ roots: manifestRoots(manifest, id, ctx.dataDir) }),
  );
  const discard = new Writable({ write: (_chunk, _enc, done) => done() });
  const { plaintext, ciphertext, elapsedSeconds } = await withCleanup(
    readArchive(ctx, id, 'verify', discard, scanner, manifest),
    'the read was stopped; nothing to clean up',
  );
  compareWithManifest(manifest, {
    plaintextBytes: plaintext.bytes,
    ciphertextBytes: ciphertext.bytes,
    sha256: plaintext.sha256,
    files: scanner.files,
  });
  return {
    backupId: id,
    files: scanner.files,
    plaintextBytes: plaintext.bytes,
    sha256: plaintext.sha256,
    durationSeconds: elapsedSeconds,
  };
}

/** Writes the plain tar of a backup to `output` (recovery without Juju). */
export async function decryptBackup(
  ctx: EngineContext,
  id: string,
  output: Writable,
  options: { allowMissingManifest?: boolean } = {},
): Promise<{ plaintextBytes: number; sha256: string }> {
  passphraseOf(ctx);
  validateBackupId(id);
  const manifest = options.allowMissingManifest
    ? await completeManifest(ctx, id, true)
    : await completeManifest(ctx, id);
  const { plaintext, ciphertext } = await withCleanup(
    readArchive(ctx, id, 'decrypt', output, undefined, manifest),
    'the read was stopped; the output is incomplete',
  );
  if (manifest) {
    compareWithManifest(manifest, {
      plaintextBytes: plaintext.bytes,
      ciphertextBytes: ciphertext.bytes,
      sha256: plaintext.sha256,
    });
  }
  return { plaintextBytes: plaintext.bytes, sha256: plaintext.sha256 };
}

/** `read`, with an InterruptedError's message saying what `cleanedUp` says. */
export async function withCleanup<T>(read: Promise<T>, cleanedUp: string): Promise<T> {
  try {
    return await read;
  } catch (err) {
    if (err instanceof InterruptedError) throw new InterruptedError(err.signalName, cleanedUp);
    throw err;
  }
}

/**
 * Decrypts just the message header: a wrong passphrase, or another backup's
 * object under this id (`wrong-backup`), fails here, before anything is written.
 */
export async function checkPassphrase(
  ctx: EngineContext,
  id: string,
  manifest?: Manifest,
): Promise<void> {
  const passphrase = passphraseOf(ctx);
  const { body } = await ctx.store.getStream(objectKey(ctx, id), { end: 64 * 1024 - 1 });
  const check = bindingCheck(id, manifest);
  const decrypt = createDecryptStream(passphrase, id, check);
  try {
    await new Promise<void>((resolve, reject) => {
      decrypt.once('MessageHeader', (header: MessageHeaderContext) => {
        const refused = refuseOtherBackup(header, id) ?? check?.(header);
        if (refused) reject(refused);
        else resolve();
      });
      // `on`, not `once`: the SDK can emit more than one error for one failure.
      decrypt.on('error', reject);
      decrypt.on('data', () => undefined);
      body.on('error', reject);
      body.pipe(decrypt);
    });
  } catch (err) {
    throw describeDecryptError(err, `backup ${id}`);
  } finally {
    body.destroy();
    decrypt.destroy();
  }
}

/** The manifest's selection must be the one the header binds (binding.ts); none without a manifest. */
function bindingCheck(
  id: string,
  manifest: Manifest | undefined,
): ((header: MessageHeaderContext) => Error | undefined) | undefined {
  return manifest && ((header) => refuseUnboundSelection(header, id, manifest));
}
