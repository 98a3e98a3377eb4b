/**
 * Creating a backup: tar in the workload, streamed through the scanner, the
 * counters and ESDK encryption into the store's upload, then the manifest.
 * A failure anywhere tears the pipeline down and removes what it left.
 */
import { BACKUP_ID_CONTEXT_KEY, createEncryptStream, encryptionParameters } from '../crypto/esdk';
import { BackupError, InterruptedError, errorMessage, remedyOf } from '../errors';
import { ENGINE_NAME, ENGINE_VERSION } from '../version';
import { runCommand } from '../workload/command';
import { SELECTION_CONTEXT_KEY, type BoundSelection, selectionDigest } from './binding';
import { manifestKey, objectKey } from './catalog';
import { type EngineContext, checkInterrupted, passphraseOf, progressTicker } from './context';
import type { ServerIdentity } from './identity';
import { checkSnapshotSpace } from './space';
import { defaultBackupId, validateBackupId } from './ids';
import { releaseBackupId, reserveBackupId } from './pending';
import { MANIFEST_FORMAT, MANIFEST_VERSION, type Manifest } from './manifest';
import { type Consumer, type StageFailure, runPipeline } from './pipeline';
import { removeLeftoversCommand, tarCreateCommand } from './scripts';
import {
  type CreateNotes,
  emptySelection,
  leftOutNote,
  notesOf,
  watchCreateScript,
} from './create-status';
import { ByteCounter, EndGate, HashingCounter } from './stages';
import { type Selection, readIdentityAndSelection } from './selection';
import { resultNotes, selectionNotes } from './selection-looked-at';
import { resolveInterruptedSwap } from './swap-journal';
import { TarScanner, createEntryPolicy } from './tar';
import type { CreateRequest, CreateResult } from './types';

/**
 * Creates backup `request.id` (default: the UTC time, YYYYMMDDHHMMSS): the
 * object `<id>.tar.enc` (one ESDK message of a POSIX tar, without the sockets,
 * FIFOs and device nodes it lists as `skipped`), then its manifest
 * `<id>.manifest.json` with the counts and SHA-256; the id is reserved first
 * by its pending marker (pending.ts) and bound into the encrypted header
 * (encryption context `synapse-backup-id`). Throws `already-exists` for an id
 * in use or being created, `unfinished-swap` when an interrupted restore's swap
 * cannot be resolved, `no-space` when the data dir's volume cannot hold the
 * database snapshot and a margin for Synapse (space.ts, checked before the
 * snapshot), `empty-selection` (also when the archive holds no regular file),
 * `unrestorable-entry` (an entry restore's policy refuses that is not left out:
 * tar/policy.ts createEntryPolicy), `workload-command` (tar, the snapshot; tar's
 * complaints of media only are warnings, see create-status.ts),
 * `corrupt` when the object changed before the manifest was written, the
 * store's errors (`s3`, ...), `interrupted` (ctx.signal: the upload is aborted
 * at once), or ConfigError without a passphrase; a failure leaves nothing in
 * the store but, when its cleanup failed too, the pending marker (for prune).
 */
export async function createBackup(
  ctx: EngineContext,
  request: CreateRequest = {},
): Promise<CreateResult> {
  const passphrase = passphraseOf(ctx);
  const id = validateBackupId(request.id ?? defaultBackupId());
  const oKey = objectKey(ctx, id);
  // Never back up a half-swapped data dir: `unfinished-swap` when it cannot be resolved.
  const swapRecovery = await resolveInterruptedSwap(ctx, request.services ?? []);
  const { identity, keepFree, selection } = await prepareCreate(ctx, id);
  const startedAt = new Date();
  const proc = ctx.workload.exec({
    command: tarCreateCommand(ctx.dataDir, keepFree, selection),
    stdin: false,
    directStdout: true,
  });
  const { check: tarSucceeded, complaints } = watchCreateScript(ctx, proc, selection.mediaTarNames);
  // Restore's entry policy: what it would refuse is left out (no data) or fails the create.
  const scanner = new TarScanner(createEntryPolicy({ roots: selection.roots.map((r) => r.name) }));
  const plaintext = new HashingCounter();
  const ciphertext = new ByteCounter();
  const ticker = progressTicker(ctx, 'create', () => plaintext.bytes);
  const upload: Consumer = {
    consume: (source) =>
      ctx.store.upload(oKey, source, {
        partSize: ctx.partSize,
        queueSize: ctx.queueSize,
        signal: ctx.signal,
      }),
  };
  const stageFailure = await runPipeline(
    [
      proc.stdout,
      new EndGate(tarSucceeded),
      scanner,
      plaintext,
      createEncryptStream(passphrase, ctx.frameLength, {
        [BACKUP_ID_CONTEXT_KEY]: id,
        // What the manifest will list as the selection: a restore refuses a manifest edited after.
        [SELECTION_CONTEXT_KEY]: selectionDigest(boundSelection(ctx, selection)),
      }),
      ciphertext,
    ],
    { consumer: upload, onFailure: () => proc.kill(), signal: ctx.signal },
  );
  ticker.stop(stageFailure === undefined);
  let failure = stageFailure && (await causeOf(stageFailure, upload, tarSucceeded));
  const notes = notesOf(scanner, complaints);
  // Nothing restorable (no file at all, or only what was left out): not a backup.
  if (failure === undefined && scanner.files === 0) {
    failure = emptySelection(ctx.dataDir, leftOutNote(notes.skipped), selection.lookedAt);
  }
  if (failure === undefined) {
    const counted = { scanner, plaintext, ciphertext, notes };
    const manifest = manifestOf(ctx, id, startedAt, identity, selection, counted);
    try {
      await writeManifest(ctx, manifest);
      return {
        backupId: id,
        size: ciphertext.bytes,
        plaintextBytes: plaintext.bytes,
        files: scanner.files,
        sha256: plaintext.sha256,
        durationSeconds: ticker.elapsedSeconds,
        skipped: notes.skipped.items,
        skippedCount: notes.skipped.count,
        warnings: notes.warnings.items,
        warningsCount: notes.warnings.count,
        ...(swapRecovery ? { swapRecovery } : {}),
        ...selectionNotes(selection),
        ...resultNotes(selection),
      };
    } catch (err) {
      failure = err;
    }
  }
  throw await cleanUpFailedCreate(ctx, id, failure);
}

/**
 * The checks and reads before tar starts, at once (an S3 problem is reported
 * before a workload one): no such backup yet, the leftovers gone, the server's
 * identity, the selection (selection.ts) and room for its database's snapshot.
 * Reserves the id first (its pending marker) and releases it when one fails.
 */
async function prepareCreate(
  ctx: EngineContext,
  id: string,
): Promise<{ identity: ServerIdentity; keepFree: number; selection: Selection }> {
  await reserveBackupId(ctx, id);
  const configured = readIdentityAndSelection(ctx);
  const [existing, leftovers, identityRead, selectionRead] = await Promise.allSettled([
    refuseExisting(ctx, id),
    runCommand(ctx.workload, removeLeftoversCommand(ctx.dataDir), 'removing leftovers'),
    configured.identity,
    configured.selection,
  ]);
  try {
    settledValue(existing);
    settledValue(leftovers);
    const identity = settledValue(identityRead);
    const selection = settledValue(selectionRead);
    // After the leftovers went: an interrupted run's snapshot is no longer taking space.
    const keepFree = await checkSnapshotSpace(ctx.workload, ctx.dataDir, selection.database?.path);
    checkInterrupted(ctx, 'nothing was started; nothing was stored');
    return { identity, keepFree, selection };
  } catch (err) {
    await releaseBackupId(ctx, id);
    throw err;
  }
}

/**
 * Confirms that the object is listed in the configured bucket with its size,
 * writes the manifest (only where there is none), then looks at the object
 * again: it must still be there with the size the manifest records, else the
 * backup is not reported complete. Then removes the pending marker (a failure
 * there only leaves a marker that prune removes once it is stale).
 */
async function writeManifest(ctx: EngineContext, manifest: Manifest): Promise<void> {
  const { id } = manifest;
  // A listing, not a HEAD: the addressing style can take writes (and HEADs) to
  // another bucket (src/s3/landing.ts). A failure's cleanup removes the object.
  await ctx.store.confirmListed(objectKey(ctx, id), manifest.ciphertextBytes);
  const key = manifestKey(ctx, id);
  const text = `${JSON.stringify(manifest, null, 2)}\n`;
  if (!(await ctx.store.putTextIfAbsent(key, text, 'application/json'))) {
    throw new BackupError(
      'already-exists',
      `backup ${id}'s manifest ${key} was written by another run`,
    );
  }
  const object = await ctx.store.head(objectKey(ctx, id));
  if (object?.size !== manifest.ciphertextBytes) {
    await ctx.store.delete(key);
    throw new BackupError(
      'corrupt',
      `backup ${id}'s object ${object ? `holds ${object.size} bytes, not ${manifest.ciphertextBytes}` : 'is gone'} after its upload: something else changed it`,
    );
  }
  await releaseBackupId(ctx, id);
}

/** The manifest of a finished upload: what was archived, counted as it streamed. */
function manifestOf(
  ctx: EngineContext,
  id: string,
  startedAt: Date,
  identity: ServerIdentity,
  selection: Selection,
  counted: {
    scanner: TarScanner;
    plaintext: HashingCounter;
    ciphertext: ByteCounter;
    notes: CreateNotes;
  },
): Manifest {
  const { scanner, plaintext, ciphertext, notes } = counted;
  return {
    format: MANIFEST_FORMAT,
    // An engine that knows no external roots must refuse rather than restore half.
    version: selection.roots.length ? MANIFEST_VERSION : 1,
    id,
    object: objectKey(ctx, id),
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    plaintextBytes: plaintext.bytes,
    ciphertextBytes: ciphertext.bytes,
    files: scanner.files,
    entries: scanner.entries,
    sha256: plaintext.sha256,
    encryption: encryptionParameters(ctx.frameLength),
    serverName: identity.serverName,
    signingKeyId: identity.signingKeyId,
    ...(notes.skipped.count > 0
      ? { skipped: notes.skipped.items, skippedCount: notes.skipped.count }
      : {}),
    ...(notes.warnings.count > 0
      ? { warnings: notes.warnings.items, warningsCount: notes.warnings.count }
      : {}),
    ...boundSelection(ctx, selection),
    ...selectionNotes(selection),
    engine: { name: ENGINE_NAME, version: ENGINE_VERSION },
  };
}

/**
 * The error to report for the pipeline's first failure. A BackupError says what
 * failed (tar's status, the scanner), and so does what the upload rejected with
 * (what S3 did). A bare error elsewhere is the teardown of tar dying (a
 * premature close): its exit status says why.
 */
async function causeOf(
  failure: StageFailure,
  upload: Consumer,
  tarSucceeded: () => Promise<void>,
): Promise<unknown> {
  const { stage, error } = failure;
  if (error instanceof BackupError || stage === upload) return error;
  return tarSucceeded().then(
    () => error,
    (tarError: unknown) => tarError,
  );
}

/** Refuses an id that has an object, a manifest or an upload in progress: never overwrite. */
async function refuseExisting(ctx: EngineContext, id: string): Promise<void> {
  const oKey = objectKey(ctx, id);
  const [object, manifest, uploads] = await Promise.all([
    ctx.store.head(oKey),
    ctx.store.head(manifestKey(ctx, id)),
    ctx.store.uploadsOf(oKey),
  ]);
  if (object || manifest) {
    throw new BackupError(
      'already-exists',
      `backup ${id} already exists and is never overwritten: choose another id, or delete it first`,
    );
  }
  if (uploads.some((u) => u.key === oKey)) {
    throw new BackupError(
      'already-exists',
      `an upload of backup ${id} is in progress or was left behind by an interrupted run`,
      {
        remedy: {
          kind: 'run',
          operation: 'prune',
          why: 'to abort stale uploads, or choose another id',
        },
      },
    );
  }
}

/**
 * Removes what a failed create left (the snapshot file in the data dir, the
 * upload or object in the store: all this run's, as it holds the id's pending
 * marker), then the marker, and returns the error to throw: `failure` as a
 * BackupError, with a failed cleanup added to its message. When the cleanup
 * fails the marker stays, for prune to find the upload by its key.
 */
async function cleanUpFailedCreate(
  ctx: EngineContext,
  id: string,
  failure: unknown,
): Promise<Error> {
  const error =
    failure instanceof BackupError
      ? failure
      : new BackupError('s3', `backup ${id} failed: ${errorMessage(failure)}`, {
          cause: failure,
        });
  try {
    // The snapshot file survives if the workload's script was killed.
    await runCommand(ctx.workload, removeLeftoversCommand(ctx.dataDir), 'removing leftovers').catch(
      () => undefined,
    );
    await ctx.store.removeFailedUpload(objectKey(ctx, id));
    // Only once nothing is left: else the marker is what lets prune find the upload.
    await releaseBackupId(ctx, id);
  } catch (cleanupErr) {
    if (error instanceof InterruptedError) {
      return new InterruptedError(
        error.signalName,
        `tar was stopped; cleaning up backup ${id} failed: ${errorMessage(cleanupErr)}`,
      );
    }
    return new BackupError(
      error.code,
      `${error.message}; cleanup also failed: ${errorMessage(cleanupErr)}`,
      // The messages carry no fixes: keep one (the failure's, else the cleanup's).
      { cause: error, remedy: error.remedy ?? remedyOf(cleanupErr) },
    );
  }
  if (error instanceof InterruptedError) {
    return new InterruptedError(
      error.signalName,
      `tar was stopped, the upload of backup ${id} aborted and the database snapshot removed; nothing was stored`,
    );
  }
  return error;
}

/** The value of a settled promise, or its reason thrown. */
function settledValue<T>(result: PromiseSettledResult<T>): T {
  if (result.status === 'rejected') throw result.reason;
  return result.value;
}

/** The manifest's selection fields, which the encrypted header binds (binding.ts). */
function boundSelection(ctx: EngineContext, selection: Selection): BoundSelection {
  return {
    dataDir: ctx.dataDir,
    items: selection.items,
    databases: selection.databases,
    ...(selection.roots.length ? { roots: selection.roots } : {}),
  };
}
