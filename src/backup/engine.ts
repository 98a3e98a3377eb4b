import { type Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  DEFAULT_FRAME_LENGTH,
  createDecryptStream,
  createEncryptStream,
  describeDecryptError,
  encryptionParameters,
  validateFrameLength,
} from '../crypto/esdk';
import { BackupError, ConfigError, errorMessage } from '../errors';
import { MIN_PART_SIZE, ObjectStore } from '../s3/store';
import { ENGINE_NAME, ENGINE_VERSION } from '../version';
import { CommandSink, TailCollector, commandFailure } from '../workload/command';
import { MANIFEST_SUFFIX, OBJECT_SUFFIX, defaultBackupId, validateBackupId } from './ids';
import { MANIFEST_FORMAT, MANIFEST_VERSION, type Manifest, parseManifest } from './manifest';
import { EMPTY_SELECTION_EXIT, tarCreateCommand, tarExtractCommand } from './selection';
import { ByteCounter, EndGate, HashingCounter, ProgressTicker } from './stages';
import { TarScanner, confinedEntryPolicy } from './tar-scanner';
import type {
  BackupInfo,
  CreateRequest,
  CreateResult,
  DeleteResult,
  EngineOptions,
  ListResult,
  RestoreRequest,
  RestoreResult,
  VerifyResult,
} from './types';

export const DEFAULT_DATA_DIR = '/data';
/** 16 MiB parts x 10,000 parts: backups up to 156.25 GiB. */
export const DEFAULT_PART_SIZE = 16 * 1024 * 1024;
/** Memory for upload buffers is about (queueSize + 3) x partSize: 80 MiB by default. */
export const DEFAULT_QUEUE_SIZE = 2;

/**
 * Create, list, restore, delete and verify backups. Each operation is a
 * pipeline of small stream stages; a failure anywhere tears the whole
 * pipeline down and cleans up what it left in S3.
 */
export class BackupEngine {
  private readonly store: ObjectStore;
  private readonly dataDir: string;
  private readonly frameLength: number;
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly progressIntervalMs: number;

  constructor(private readonly options: EngineOptions) {
    if (!options.passphrase) {
      throw new ConfigError('no backup passphrase is set');
    }
    this.dataDir = options.dataDir ?? DEFAULT_DATA_DIR;
    if (!this.dataDir.startsWith('/')) {
      throw new ConfigError(`the data directory must be an absolute path, not "${this.dataDir}"`);
    }
    this.frameLength = validateFrameLength(options.frameLength ?? DEFAULT_FRAME_LENGTH);
    this.partSize = options.partSize ?? DEFAULT_PART_SIZE;
    if (!Number.isInteger(this.partSize) || this.partSize < MIN_PART_SIZE) {
      throw new ConfigError(`the part size must be at least ${MIN_PART_SIZE} bytes (5 MiB)`);
    }
    this.queueSize = options.queueSize ?? DEFAULT_QUEUE_SIZE;
    if (!Number.isInteger(this.queueSize) || this.queueSize < 1 || this.queueSize > 16) {
      throw new ConfigError('the upload queue size must be a whole number from 1 to 16');
    }
    this.progressIntervalMs = options.progressIntervalMs ?? 2000;
    this.store = new ObjectStore(options.s3);
  }

  close(): void {
    this.store.close();
  }

  private objectKey(id: string): string {
    return this.store.key(`${id}${OBJECT_SUFFIX}`);
  }

  private manifestKey(id: string): string {
    return this.store.key(`${id}${MANIFEST_SUFFIX}`);
  }

  async create(request: CreateRequest = {}): Promise<CreateResult> {
    const id = validateBackupId(request.id ?? defaultBackupId());
    const objectKey = this.objectKey(id);
    const manifestKey = this.manifestKey(id);
    await this.refuseExisting(id, objectKey, manifestKey);

    const startedAt = new Date();
    const proc = this.options.workload.exec({
      command: tarCreateCommand(this.dataDir),
      stdin: false,
    });
    const stderr = new TailCollector(proc.stderr);
    const tarSucceeded = async (): Promise<void> => {
      const status = await proc.wait();
      if (status.exitCode === EMPTY_SELECTION_EXIT) {
        throw new BackupError(
          'empty-selection',
          `nothing to back up in ${this.dataDir}: no homeserver.yaml, signing key, homeserver.db or local media; check that Synapse's data is there`,
        );
      }
      if (status.exitCode !== 0) {
        throw commandFailure(`tar in ${this.options.workload.description}`, status, stderr.text());
      }
    };
    const scanner = new TarScanner();
    const plaintext = new HashingCounter();
    const ciphertext = new ByteCounter();
    const ticker = new ProgressTicker(
      'create',
      () => plaintext.bytes,
      this.options.onProgress,
      this.progressIntervalMs,
    );

    let failure: unknown;
    const fail = (err: unknown): void => {
      failure ??= err;
      proc.kill();
      ciphertext.destroy(err as Error);
    };
    await Promise.all([
      pipeline(
        proc.stdout,
        new EndGate(tarSucceeded),
        scanner,
        plaintext,
        createEncryptStream(this.options.passphrase, this.frameLength),
        ciphertext,
      ).catch(fail),
      this.store
        .upload(objectKey, ciphertext, { partSize: this.partSize, queueSize: this.queueSize })
        .catch(fail),
    ]);
    ticker.stop(failure === undefined);
    if (failure !== undefined && !(failure instanceof BackupError)) {
      // A bare stream error (premature close) is usually tar dying: its exit status says why.
      failure = await tarSucceeded().then(
        () => failure,
        (tarError: unknown) => tarError,
      );
    }

    if (failure === undefined) {
      const manifest: Manifest = {
        format: MANIFEST_FORMAT,
        version: MANIFEST_VERSION,
        id,
        object: objectKey,
        startedAt: startedAt.toISOString(),
        finishedAt: new Date().toISOString(),
        plaintextBytes: plaintext.bytes,
        ciphertextBytes: ciphertext.bytes,
        files: scanner.files,
        entries: scanner.entries,
        sha256: plaintext.sha256,
        encryption: encryptionParameters(this.frameLength),
        dataDir: this.dataDir,
        engine: { name: ENGINE_NAME, version: ENGINE_VERSION },
      };
      try {
        await this.store.putText(
          manifestKey,
          `${JSON.stringify(manifest, null, 2)}\n`,
          'application/json',
        );
        return {
          backupId: id,
          size: ciphertext.bytes,
          plaintextBytes: plaintext.bytes,
          files: scanner.files,
          sha256: plaintext.sha256,
          durationSeconds: ticker.elapsedSeconds,
        };
      } catch (err) {
        failure = err;
      }
    }
    throw await this.cleanUpFailedCreate(id, objectKey, failure);
  }

  private async refuseExisting(id: string, objectKey: string, manifestKey: string): Promise<void> {
    const [object, manifest, uploads] = await Promise.all([
      this.store.head(objectKey),
      this.store.head(manifestKey),
      this.store.listUploads(objectKey),
    ]);
    if (object || manifest) {
      throw new BackupError(
        'already-exists',
        `backup ${id} already exists and is never overwritten: choose another id, or delete it first`,
      );
    }
    if (uploads.some((u) => u.key === objectKey)) {
      throw new BackupError(
        'already-exists',
        `an upload of backup ${id} is in progress or was left behind by an interrupted run: choose another id, or prune stale uploads first`,
      );
    }
  }

  private async cleanUpFailedCreate(
    id: string,
    objectKey: string,
    failure: unknown,
  ): Promise<Error> {
    const error =
      failure instanceof BackupError
        ? failure
        : new BackupError('s3', `backup ${id} failed: ${errorMessage(failure)}`, {
            cause: failure,
          });
    try {
      await this.store.removeFailedUpload(objectKey);
    } catch (cleanupErr) {
      return new BackupError(
        error.code,
        `${error.message}; cleanup also failed: ${errorMessage(cleanupErr)}`,
        { cause: error },
      );
    }
    return error;
  }

  async list(): Promise<ListResult> {
    const [objects, uploads] = await Promise.all([this.store.list(), this.store.listUploads()]);
    const byId = new Map<string, { object?: (typeof objects)[number]; manifestKey?: string }>();
    for (const obj of objects) {
      const name = this.store.relativeName(obj.key);
      if (!name) continue;
      const [suffix, slot] = name.endsWith(OBJECT_SUFFIX)
        ? [OBJECT_SUFFIX, 'object' as const]
        : name.endsWith(MANIFEST_SUFFIX)
          ? [MANIFEST_SUFFIX, 'manifestKey' as const]
          : [undefined, undefined];
      if (!suffix || !slot) continue;
      const id = name.slice(0, -suffix.length);
      const entry = byId.get(id) ?? {};
      if (slot === 'object') entry.object = obj;
      else entry.manifestKey = obj.key;
      byId.set(id, entry);
    }
    const backups: BackupInfo[] = [];
    for (const [backupId, { object, manifestKey }] of byId) {
      const manifest = manifestKey
        ? await this.store
            .getText(manifestKey)
            .then((text) => parseManifest(text, manifestKey))
            .catch(() => undefined)
        : undefined;
      const complete = Boolean(object && manifest && manifest.ciphertextBytes === object.size);
      backups.push({
        backupId,
        created:
          manifest?.startedAt ?? object?.lastModified?.toISOString() ?? new Date(0).toISOString(),
        size: object?.size ?? 0,
        status: complete ? 'complete' : 'incomplete',
        files: manifest?.files,
      });
    }
    backups.sort((a, b) => a.backupId.localeCompare(b.backupId));
    return {
      backups,
      uploads: uploads.map((u) => ({
        key: u.key,
        uploadId: u.uploadId,
        initiated: u.initiated?.toISOString(),
      })),
    };
  }

  /**
   * Loads the manifest of a complete backup, with a specific error for each way
   * it can be missing. With `allowMissing`, a backup written by the original
   * Python charm (which wrote no manifests) yields undefined instead.
   */
  private async completeManifest(id: string, allowMissing: true): Promise<Manifest | undefined>;
  private async completeManifest(id: string, allowMissing?: false): Promise<Manifest>;
  private async completeManifest(id: string, allowMissing = false): Promise<Manifest | undefined> {
    const manifestKey = this.manifestKey(id);
    const objectKey = this.objectKey(id);
    const [manifestHead, objectHead] = await Promise.all([
      this.store.head(manifestKey),
      this.store.head(objectKey),
    ]);
    if (!manifestHead && !objectHead) {
      throw new BackupError(
        'not-found',
        `backup ${id} does not exist in bucket "${this.options.s3.bucket}"; run list-backups to see the ids`,
      );
    }
    if (!objectHead) {
      throw new BackupError(
        'corrupt',
        `backup ${id} has a manifest but its data object ${objectKey} is missing`,
      );
    }
    if (!manifestHead) {
      if (allowMissing) return undefined;
      throw new BackupError(
        'corrupt',
        `backup ${id} is incomplete: it has no manifest (the run that made it did not finish, or an older charm wrote it); if it is an old charm's backup, restore it with allow-no-manifest`,
      );
    }
    const manifest = parseManifest(await this.store.getText(manifestKey), manifestKey);
    if (manifest.ciphertextBytes !== objectHead.size) {
      throw new BackupError(
        'corrupt',
        `backup ${id} is damaged: its object holds ${objectHead.size} bytes but the manifest says ${manifest.ciphertextBytes}`,
      );
    }
    return manifest;
  }

  /**
   * Streams the backup through decryption and the tar scanner into `sink`.
   * Returns the counters; the caller compares them with the manifest.
   */
  private async readArchive(
    id: string,
    phase: 'restore' | 'verify' | 'decrypt',
    sink: Writable,
    scanner?: TarScanner,
  ): Promise<{ plaintext: HashingCounter; ciphertext: ByteCounter; elapsedSeconds: number }> {
    const objectKey = this.objectKey(id);
    const { body } = await this.store.getStream(objectKey);
    const ciphertext = new ByteCounter();
    const plaintext = new HashingCounter();
    const ticker = new ProgressTicker(
      phase,
      () => plaintext.bytes,
      this.options.onProgress,
      this.progressIntervalMs,
    );
    const decrypt = createDecryptStream(this.options.passphrase);
    const stages: (Readable | Writable)[] = [body as Readable, ciphertext, decrypt];
    if (scanner) stages.push(scanner);
    stages.push(plaintext, sink);
    // The first stage to fail names the cause; the others only see the teardown.
    let origin: { stage: Readable | Writable; error: unknown } | undefined;
    for (const stage of stages) {
      stage.once('error', (error: unknown) => {
        origin ??= { stage, error };
      });
    }
    try {
      await (pipeline as (...streams: (Readable | Writable)[]) => Promise<void>)(...stages);
    } catch (err) {
      ticker.stop(false);
      const error = origin?.error ?? err;
      if (error instanceof BackupError) throw error;
      if (origin?.stage === decrypt) throw describeDecryptError(error, `backup ${id}`);
      throw new BackupError('s3', `reading backup ${id} failed: ${errorMessage(error)}`, {
        cause: error,
      });
    }
    ticker.stop(true);
    return { plaintext, ciphertext, elapsedSeconds: ticker.elapsedSeconds };
  }

  private compareWithManifest(
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
      problems.push(`${counts.files} files, manifest says ${manifest.files}`);
    }
    if (problems.length > 0) {
      throw new BackupError(
        'manifest-mismatch',
        `backup ${manifest.id} does not match its manifest: ${problems.join('; ')}`,
      );
    }
  }

  async verify(id: string): Promise<VerifyResult> {
    validateBackupId(id);
    const manifest = await this.completeManifest(id);
    const scanner = new TarScanner(confinedEntryPolicy());
    const discard = new Writable({ write: (_chunk, _enc, done) => done() });
    const { plaintext, ciphertext, elapsedSeconds } = await this.readArchive(
      id,
      'verify',
      discard,
      scanner,
    );
    this.compareWithManifest(manifest, {
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

  async restore(request: RestoreRequest): Promise<RestoreResult> {
    const id = validateBackupId(request.id);
    const manifest = request.allowMissingManifest
      ? await this.completeManifest(id, true)
      : await this.completeManifest(id);
    const services = request.services ?? [];
    let stopped = false;
    const sink = new CommandSink(
      this.options.workload,
      { command: tarExtractCommand(this.dataDir) },
      `tar extracting into ${this.dataDir}`,
      async () => {
        if (services.length > 0) {
          await this.options.workload.stopServices(services);
          stopped = true;
        }
      },
    );
    const scanner = new TarScanner(confinedEntryPolicy());
    try {
      const { plaintext, ciphertext, elapsedSeconds } = await this.readArchive(
        id,
        'restore',
        sink,
        scanner,
      );
      if (manifest) {
        this.compareWithManifest(manifest, {
          plaintextBytes: plaintext.bytes,
          ciphertextBytes: ciphertext.bytes,
          sha256: plaintext.sha256,
          files: scanner.files,
        });
      }
      return {
        backupId: id,
        files: scanner.files,
        plaintextBytes: plaintext.bytes,
        durationSeconds: elapsedSeconds,
      };
    } finally {
      if (stopped) await this.options.workload.startServices(services);
    }
  }

  /** Writes the plain tar of a backup to `output` (recovery without Juju). */
  async decryptTo(
    id: string,
    output: Writable,
  ): Promise<{ plaintextBytes: number; sha256: string }> {
    validateBackupId(id);
    const manifest = await this.completeManifest(id);
    const { plaintext, ciphertext } = await this.readArchive(id, 'decrypt', output);
    this.compareWithManifest(manifest, {
      plaintextBytes: plaintext.bytes,
      ciphertextBytes: ciphertext.bytes,
      sha256: plaintext.sha256,
    });
    return { plaintextBytes: plaintext.bytes, sha256: plaintext.sha256 };
  }

  async delete(id: string): Promise<DeleteResult> {
    validateBackupId(id);
    const manifestKey = this.manifestKey(id);
    const objectKey = this.objectKey(id);
    const [manifest, object] = await Promise.all([
      this.store.head(manifestKey),
      this.store.head(objectKey),
    ]);
    if (!manifest && !object) {
      throw new BackupError(
        'not-found',
        `backup ${id} does not exist in bucket "${this.options.s3.bucket}"; run list-backups to see the ids`,
      );
    }
    // Manifest first: a half-deleted backup must never look complete.
    const deletedKeys: string[] = [];
    for (const key of [manifest ? manifestKey : undefined, object ? objectKey : undefined]) {
      if (!key) continue;
      await this.store.delete(key);
      deletedKeys.push(key);
    }
    return { backupId: id, deletedKeys };
  }
}
