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
import { BackupError, ConfigError, errorMessage, remedyOf } from '../errors';
import { checkBucket } from '../s3/client';
import { MIN_PART_SIZE, ObjectStore } from '../s3/store';
import { ENGINE_NAME, ENGINE_VERSION } from '../version';
import { formatBytes } from '../format';
import { CommandSink, TailCollector, commandFailure, runCommand } from '../workload/command';
import { MANIFEST_SUFFIX, OBJECT_SUFFIX, defaultBackupId, validateBackupId } from './ids';
import { MANIFEST_FORMAT, MANIFEST_VERSION, type Manifest, parseManifest } from './manifest';
import { readServerIdentity } from './identity';
import { type RetentionPolicy, backupsToForget } from './retention';
import {
  EMPTY_SELECTION_EXIT,
  SNAPSHOT_FAILED_EXIT,
  tarCreateCommand,
  tarExtractCommand,
} from './selection';
import { ByteCounter, EndGate, HashingCounter, ProgressTicker } from './stages';
import { TarScanner, confinedEntryPolicy } from './tar-scanner';
import {
  PREVIOUS_PREFIX,
  STAGING_PREFIX,
  freeSpaceCommand,
  makeDirCommand,
  removeLeftoversCommand,
  removeOneTimeKeysCommand,
  removeTreeCommand,
  rollbackCommand,
  swapCommand,
  syncCommand,
} from './workload-scripts';
import type {
  BackupInfo,
  CreateRequest,
  CreateResult,
  DeleteResult,
  EngineOptions,
  ListResult,
  PruneRequest,
  PruneResult,
  RestoreRequest,
  RestoreResult,
  VerifyResult,
} from './types';

export const DEFAULT_DATA_DIR = '/data';
/** 16 MiB parts x 10,000 parts: backups up to 156.25 GiB. */
export const DEFAULT_PART_SIZE = 16 * 1024 * 1024;
/** Parts in flight. The sink holds queueSize + 1 reused part buffers: 24 MiB up to 15.6 GiB, then 54 MiB. */
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
    const workload = this.options.workload;
    // Independent round trips, at once; an S3 problem is reported before a workload one.
    const [existing, leftovers, identityRead] = await Promise.allSettled([
      this.refuseExisting(id, objectKey, manifestKey),
      runCommand(workload, removeLeftoversCommand(this.dataDir), 'removing leftovers'),
      readServerIdentity(workload, this.dataDir),
    ]);
    settledValue(existing);
    settledValue(leftovers);
    const identity = settledValue(identityRead);
    const startedAt = new Date();
    const proc = workload.exec({
      command: tarCreateCommand(this.dataDir),
      stdin: false,
      directStdout: true,
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
      if (status.exitCode === SNAPSHOT_FAILED_EXIT) {
        const lines = stderr.text().split('\n').filter(Boolean).slice(-2);
        throw new BackupError(
          'workload-command',
          lines.join(': ') || 'the database snapshot failed',
        );
      }
      if (status.exitCode !== 0) {
        throw commandFailure(`tar in ${workload.description}`, status, stderr.text());
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
    let uploadFailure: unknown;
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
        .catch((err: unknown) => {
          uploadFailure = err;
          fail(err);
        }),
    ]);
    ticker.stop(failure === undefined);
    if (failure !== undefined && !(failure instanceof BackupError)) {
      // A bare error is the teardown reaching this side first. An S3 SDK error (it carries
      // $metadata) came from the upload, whose own error, reported once the upload is aborted,
      // says what S3 did (tar's status would only say that `fail` killed it); anything else
      // (premature close) is usually tar dying: its exit status says why.
      const fromS3 = (failure as { $metadata?: unknown }).$metadata !== undefined;
      failure =
        fromS3 && uploadFailure instanceof BackupError
          ? uploadFailure
          : await tarSucceeded().then(
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
        serverName: identity.serverName,
        signingKeyId: identity.signingKeyId,
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
      this.store.uploadsOf(objectKey),
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
      // The snapshot file survives if the workload's script was killed.
      await runCommand(
        this.options.workload,
        removeLeftoversCommand(this.dataDir),
        'removing leftovers',
      ).catch(() => undefined);
      await this.store.removeFailedUpload(objectKey);
    } catch (cleanupErr) {
      return new BackupError(
        error.code,
        `${error.message}; cleanup also failed: ${errorMessage(cleanupErr)}`,
        // The messages no longer carry their fixes: keep one (the failure's, else the cleanup's).
        { cause: error, remedy: error.remedy ?? remedyOf(cleanupErr) },
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
        lastModified: object?.lastModified?.toISOString(),
        serverName: manifest?.serverName,
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
    if (!manifestHead && !objectHead) throw await this.notFound(id);
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

  /**
   * Restores without risking the live data: every check comes first, the
   * archive is extracted into a staging directory beside the data, and only a
   * fully authenticated archive that matches its manifest is swapped in (by
   * renames), with Synapse stopped just for the swap. A failure before the swap
   * leaves the live data as it was; a failure during or after it moves the
   * previous files back.
   */
  async restore(request: RestoreRequest): Promise<RestoreResult> {
    const id = validateBackupId(request.id);
    const workload = this.options.workload;
    const manifest = request.allowMissingManifest
      ? await this.completeManifest(id, true)
      : await this.completeManifest(id);
    await this.refuseOtherServer(id, manifest?.serverName, request);
    await this.checkPassphrase(id);
    await this.checkFreeSpace(id, manifest);

    await runCommand(workload, removeLeftoversCommand(this.dataDir), 'removing leftovers');
    const stamp = new Date().toISOString().replace(/[-:.]/g, '');
    const staging = `${STAGING_PREFIX}${stamp}`;
    const previous = `${PREVIOUS_PREFIX}${stamp}`;
    const stagingPath = `${this.dataDir}/${staging}`;
    await runCommand(workload, makeDirCommand(stagingPath), 'creating the staging directory');

    const scanner = new TarScanner(confinedEntryPolicy());
    let extracted: Awaited<ReturnType<BackupEngine['readArchive']>>;
    try {
      const sink = new CommandSink(
        workload,
        { command: tarExtractCommand(stagingPath), directStdin: true },
        `tar extracting into ${stagingPath}`,
      );
      extracted = await this.readArchive(id, 'restore', sink, scanner);
      if (manifest) {
        this.compareWithManifest(manifest, {
          plaintextBytes: extracted.plaintext.bytes,
          ciphertextBytes: extracted.ciphertext.bytes,
          sha256: extracted.plaintext.sha256,
          files: scanner.files,
        });
      }
      // On disk before Synapse stops: the swap below is renames only.
      await runCommand(workload, syncCommand(stagingPath), 'flushing the restored files to disk');
    } catch (err) {
      await this.removeTree(stagingPath, err);
      throw err;
    }

    const services = request.services ?? [];
    await workload.stopServices(services);
    let oneTimeKeysRemoved: number | undefined;
    try {
      await runCommand(
        workload,
        swapCommand(this.dataDir, staging, previous),
        `moving the restored files into ${this.dataDir}`,
      );
      try {
        oneTimeKeysRemoved = await this.removeOneTimeKeys();
        await workload.startServices(services);
      } catch (err) {
        await workload.stopServices(services).catch(() => undefined);
        await runCommand(
          workload,
          rollbackCommand(this.dataDir, staging, previous),
          'moving the previous files back',
        );
        throw err;
      }
    } catch (err) {
      await this.removeTree(stagingPath, err);
      await workload.startServices(services).catch(() => undefined);
      throw err;
    }

    const previousPath = `${this.dataDir}/${previous}`;
    // The previous files go only once the swap itself is on disk; if it cannot be
    // flushed, they stay, and the result says where.
    let keepPrevious = Boolean(request.keepPrevious);
    if (!keepPrevious) {
      keepPrevious = await runCommand(
        workload,
        syncCommand(this.dataDir),
        'flushing the swap',
      ).then(
        () => false,
        () => true,
      );
      if (!keepPrevious) await this.removeTree(previousPath);
    }
    return {
      backupId: id,
      files: scanner.files,
      plaintextBytes: extracted.plaintext.bytes,
      durationSeconds: extracted.elapsedSeconds,
      previousPath: keepPrevious ? previousPath : undefined,
      oneTimeKeysRemoved,
    };
  }

  private async refuseOtherServer(
    id: string,
    backupServer: string | undefined,
    request: RestoreRequest,
  ): Promise<void> {
    if (!backupServer || request.force) return;
    const live = await readServerIdentity(this.options.workload, this.dataDir);
    const current = live.serverName ?? request.expectedServerName;
    if (current && current !== backupServer) {
      throw new BackupError(
        'wrong-server',
        `backup ${id} is of server "${backupServer}" but this Synapse is "${current}": restoring it would replace this server's identity; run again with force=true if that is what you want`,
      );
    }
  }

  /** An id that is not there. A missing bucket also answers 404 to HEAD: name that instead. */
  private async notFound(id: string): Promise<BackupError> {
    await checkBucket(this.options.s3, this.store.client);
    return new BackupError(
      'not-found',
      `backup ${id} does not exist in bucket "${this.options.s3.bucket}"; run list-backups to see the ids`,
    );
  }

  /** Decrypts just the message header: a wrong passphrase fails here, before anything is written. */
  private async checkPassphrase(id: string): Promise<void> {
    const { body } = await this.store.getStream(this.objectKey(id), { end: 64 * 1024 - 1 });
    const decrypt = createDecryptStream(this.options.passphrase);
    try {
      await new Promise<void>((resolve, reject) => {
        decrypt.once('MessageHeader', () => resolve());
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

  private async checkFreeSpace(id: string, manifest: Manifest | undefined): Promise<void> {
    const needed =
      manifest?.plaintextBytes ?? (await this.store.head(this.objectKey(id)))?.size ?? 0;
    const output = await runCommand(
      this.options.workload,
      freeSpaceCommand(this.dataDir),
      `checking free space in ${this.dataDir}`,
    );
    const free = Number(output.trim());
    if (!Number.isFinite(free)) return;
    if (free < needed) {
      throw new BackupError(
        'no-space',
        `restoring backup ${id} needs ${formatBytes(needed)} free in ${this.dataDir} for the staged copy, but only ${formatBytes(free)} is free: grow the data volume or free space, then retry`,
      );
    }
  }

  private async removeOneTimeKeys(): Promise<number | undefined> {
    const db = `${this.dataDir}/homeserver.db`;
    const exists = await runCommand(
      this.options.workload,
      ['sh', '-c', '[ -f "$1" ] && echo yes || true', 'synapse-backup', db],
      `checking ${db}`,
    );
    if (exists.trim() !== 'yes') return undefined;
    const out = await runCommand(
      this.options.workload,
      removeOneTimeKeysCommand(db),
      'removing one-time keys from the restored database',
    );
    return out.trim() ? Number(out.trim()) : 0;
  }

  /** Removes a tree the engine made; a failure is added to `cause`'s story rather than hiding it. */
  private async removeTree(path: string, cause?: unknown): Promise<void> {
    try {
      await runCommand(this.options.workload, removeTreeCommand(path), `removing ${path}`);
    } catch (err) {
      if (cause instanceof Error)
        cause.message += `; also could not remove ${path}: ${errorMessage(err)}`;
      else throw err;
    }
  }

  /**
   * Applies the retention policy to complete backups and removes what
   * interrupted runs left: in-progress uploads and incomplete backups older
   * than `staleAfterSeconds`. The newest complete backup is never removed.
   */
  async prune(policy: RetentionPolicy, request: PruneRequest = {}): Promise<PruneResult> {
    const now = request.now ?? new Date();
    const staleBefore = now.getTime() - (request.staleAfterSeconds ?? 86_400) * 1000;
    const dryRun = Boolean(request.dryRun);
    const { backups, uploads } = await this.list();
    const forgotten = backupsToForget(backups, policy, now);
    const incomplete = backups.filter(
      (b) => b.status === 'incomplete' && Date.parse(b.lastModified ?? b.created) < staleBefore,
    );
    const staleUploads = uploads.filter(
      (u) => u.initiated !== undefined && Date.parse(u.initiated) < staleBefore,
    );
    if (!dryRun) {
      for (const backup of [...forgotten, ...incomplete]) await this.delete(backup.backupId);
      for (const u of staleUploads)
        await this.store.abortUpload({ key: u.key, uploadId: u.uploadId });
    }
    return {
      dryRun,
      forgotten: forgotten.map((b) => b.backupId),
      incompleteRemoved: incomplete.map((b) => b.backupId),
      uploadsAborted: staleUploads.map((u) => u.key),
      kept: backups.filter((b) => b.status === 'complete').length - forgotten.length,
    };
  }

  /** Writes the plain tar of a backup to `output` (recovery without Juju). */
  async decryptTo(
    id: string,
    output: Writable,
    options: { allowMissingManifest?: boolean } = {},
  ): Promise<{ plaintextBytes: number; sha256: string }> {
    validateBackupId(id);
    const manifest = options.allowMissingManifest
      ? await this.completeManifest(id, true)
      : await this.completeManifest(id);
    const { plaintext, ciphertext } = await this.readArchive(id, 'decrypt', output);
    if (manifest) {
      this.compareWithManifest(manifest, {
        plaintextBytes: plaintext.bytes,
        ciphertextBytes: ciphertext.bytes,
        sha256: plaintext.sha256,
      });
    }
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
    if (!manifest && !object) throw await this.notFound(id);
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

/** The value of a settled promise, or its reason thrown. */
function settledValue<T>(result: PromiseSettledResult<T>): T {
  if (result.status === 'rejected') throw result.reason;
  return result.value;
}
