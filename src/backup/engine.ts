import type { Writable } from 'node:stream';
import { DEFAULT_FRAME_LENGTH, validateFrameLength } from '../crypto/esdk';
import { ConfigError } from '../errors';
import { MIN_PART_SIZE, ObjectStore } from '../s3/store';
import { deleteBackup, listBackups } from './catalog';
import type { EngineContext } from './context';
import { createBackup } from './create';
import { decryptBackup, verifyBackup } from './read';
import { withDataDirLock } from './lock';
import { pruneBackups } from './prune';
import { restoreBackup } from './restore';
import type { RetentionPolicy } from './retention';
import type {
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
 * Create, list, restore, delete and verify backups. Create, restore and
 * prune's workload cleanup hold the data dir's lock (lock.ts): one at a time. Each operation is a
 * pipeline of small stream stages; a failure anywhere tears the whole
 * pipeline down and cleans up what it left in S3. A façade over
 * catalog.ts (keys, list, delete), prune.ts, create.ts, read.ts (verify,
 * decrypt) and restore.ts (with swap-journal.ts); the options are checked here, once.
 */
export class BackupEngine {
  private readonly ctx: EngineContext;

  /** Throws ConfigError for a relative data dir, a part size under 5 MiB, a queue size outside 1-16. */
  constructor(options: EngineOptions) {
    const dataDir = options.dataDir ?? DEFAULT_DATA_DIR;
    if (!dataDir.startsWith('/')) {
      throw new ConfigError(`the data directory must be an absolute path, not "${dataDir}"`);
    }
    const configRoot = options.configRoot;
    if (configRoot !== undefined && !configRoot.startsWith('/')) {
      throw new ConfigError(`the config root must be an absolute path, not "${configRoot}"`);
    }
    const frameLength = validateFrameLength(options.frameLength ?? DEFAULT_FRAME_LENGTH);
    const partSize = options.partSize ?? DEFAULT_PART_SIZE;
    if (!Number.isInteger(partSize) || partSize < MIN_PART_SIZE) {
      throw new ConfigError(`the part size must be at least ${MIN_PART_SIZE} bytes (5 MiB)`);
    }
    const queueSize = options.queueSize ?? DEFAULT_QUEUE_SIZE;
    if (!Number.isInteger(queueSize) || queueSize < 1 || queueSize > 16) {
      throw new ConfigError('the upload queue size must be a whole number from 1 to 16');
    }
    this.ctx = {
      store: options.store ?? new ObjectStore(options.s3),
      workload: options.workload,
      dataDir,
      configRoot,
      bucket: options.s3.bucket,
      passphrase: options.passphrase,
      frameLength,
      partSize,
      queueSize,
      progressIntervalMs: options.progressIntervalMs ?? 2000,
      onProgress: options.onProgress,
      onNotice: options.onNotice,
      signal: options.signal,
    };
  }

  close(): void {
    this.ctx.store.close();
  }

  /**
   * Archives the data dir's selection, encrypted, as a new backup (see create.ts).
   * Throws `busy` naming the holder while another run holds the data dir's lock.
   */
  create(request: CreateRequest = {}): Promise<CreateResult> {
    return withDataDirLock(this.ctx, `create-backup ${request.id ?? '(default id)'}`, (ctx) =>
      createBackup(ctx, request),
    );
  }

  list(): Promise<ListResult> {
    return listBackups(this.ctx);
  }

  /** Reads a backup whole and checks it against its manifest; writes nothing. */
  verify(id: string): Promise<VerifyResult> {
    return verifyBackup(this.ctx, id);
  }

  /**
   * Replaces the data dir's files with a backup's (see restore.ts for the protocol).
   * Throws `busy` naming the holder while another run holds the data dir's lock.
   */
  restore(request: RestoreRequest): Promise<RestoreResult> {
    return withDataDirLock(this.ctx, `restore-backup ${request.id}`, (ctx) =>
      restoreBackup(ctx, request),
    );
  }

  /**
   * Applies the retention policy to complete backups and removes what
   * interrupted runs left: in-progress uploads and incomplete backups older
   * than `staleAfterSeconds`. Each server's newest complete backup is never
   * removed (the policy applies to each server_name on its own: retention.ts).
   */
  prune(policy: RetentionPolicy, request: PruneRequest = {}): Promise<PruneResult> {
    // The data dir's leftovers are only removed while no other run uses it.
    if (request.dryRun || request.workloadLeftovers === false) {
      return pruneBackups(this.ctx, policy, request);
    }
    return withDataDirLock(this.ctx, 'prune-backups', (ctx) => pruneBackups(ctx, policy, request));
  }

  /** Writes the plain tar of a backup to `output` (recovery without Juju). */
  decryptTo(
    id: string,
    output: Writable,
    options: { allowMissingManifest?: boolean } = {},
  ): Promise<{ plaintextBytes: number; sha256: string }> {
    return decryptBackup(this.ctx, id, output, options);
  }

  /**
   * Deletes a backup's manifest, then its object; also its pending marker, and
   * an interrupted create's (stale marker) upload. `staleAfterSeconds` (default
   * 24 h): a younger marker without a manifest is a create that may be running,
   * refused (`busy`). See catalog.ts deleteBackup.
   */
  delete(id: string, options: { staleAfterSeconds?: number } = {}): Promise<DeleteResult> {
    return deleteBackup(this.ctx, id, options.staleAfterSeconds);
  }
}
