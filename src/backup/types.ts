import type { StaleConfigPaths } from './stale-paths';
import type { SwapRecovery } from './swap-journal';
import type { S3Settings } from '../s3/settings';
import type { Workload } from '../workload/workload';
import type { BackupStore } from './store';
import type { EntryWarning, SkippedEntry } from './notes';

export interface Progress {
  phase: 'create' | 'restore' | 'verify' | 'decrypt';
  /** Plaintext (tar) bytes processed so far. */
  bytes: number;
  /** Average plaintext bytes per second since the start. */
  bytesPerSecond: number;
  elapsedSeconds: number;
}

export interface EngineOptions {
  /** The bucket and prefix; its bucket name is also what messages call it when `store` is given. */
  s3: S3Settings;
  /** Where backups are kept. Default: an ObjectStore (S3) on `s3`. */
  store?: BackupStore;
  /**
   * The ESDK passphrase: create, verify, restore and decrypt need it (else ConfigError
   * with a `set backup-passphrase` remedy); list, delete and prune never decrypt.
   */
  passphrase?: string;
  workload: Workload;
  /** Synapse's data directory inside the workload. Default /data. */
  dataDir?: string;
  /**
   * Where homeserver.yaml's absolute paths were written for, when the data dir is
   * that volume mounted elsewhere (the official image's /data at /mnt/synapse):
   * `<configRoot>/x` in the config is read as `<dataDir>/x`. Absolute. Default none.
   */
  configRoot?: string;
  /** ESDK frame length in bytes: a multiple of 128, at most 2^31-1. */
  frameLength?: number;
  /** Multipart part size in bytes (>= 5 MiB). Max backup size = 10,000 x partSize. */
  partSize?: number;
  /**
   * Parts uploaded at once (1-16, default 2). The multipart sink holds queueSize + 1
   * reused part buffers; parts 1-2,000 are half the part size, so memory is
   * (queueSize + 1) x partSize / 2 up to 2,000 parts (24 MiB by default, to 15.6 GiB),
   * then (queueSize + 1) x a little over partSize (54 MiB by default).
   */
  queueSize?: number;
  onProgress?: (progress: Progress) => void;
  /** Called with a sentence the operator should hear of that is no failure (a stale lock taken over). */
  onNotice?: (message: string) => void;
  /** How often onProgress fires. Default 2000 ms. */
  progressIntervalMs?: number;
  /** Aborting it interrupts the running operation (see EngineContext.signal); the reason names the signal. */
  signal?: AbortSignal;
}

export interface CreateRequest {
  /** Backup id; default the UTC time YYYYMMDDHHMMSS. */
  id?: string;
  /**
   * Services (Pebble names) an interrupted restore left stopped: resolving its
   * swap (swap-journal.ts) stops them and starts them after. Default none.
   */
  services?: string[];
}

export interface CreateResult {
  backupId: string;
  /** Bytes stored in S3 (ciphertext). */
  size: number;
  plaintextBytes: number;
  files: number;
  sha256: string;
  durationSeconds: number;
  /**
   * Entries left out (sockets, FIFOs, device nodes: a restore refuses them, and they
   * hold no data), relative to the data dir: the first 1000; `skippedCount` counts all.
   */
  skipped: SkippedEntry[];
  skippedCount: number;
  /**
   * Media that changed or vanished while tar read them (a live server; see
   * Manifest.warnings): the first 1000; `warningsCount` counts all.
   */
  warnings: EntryWarning[];
  warningsCount: number;
  /** An interrupted restore's swap, completed or rolled back before the backup began. */
  swapRecovery?: SwapRecovery;
  /** Paths homeserver.yaml names that do not exist, left out: one sentence each. */
  missing?: string[];
  /** What is not in this backup and what backs it up ("... PostgreSQL ... pg_dump"). */
  notIncluded?: string[];
  /**
   * Set when the data dir had no homeserver.yaml: a sentence naming what was backed
   * up by Synapse's default paths (a right data dir of such a server, or a wrong one).
   */
  noHomeserverYaml?: string;
  /**
   * Paths outside the data dir archived as `@external/...` (homeserver.yaml names
   * them absolutely): a restore of this backup replaces them there.
   */
  archivedOutside?: string[];
}

export interface BackupInfo {
  backupId: string;
  /** ISO time: the manifest's start time, or the object's last-modified time when incomplete. */
  created: string;
  /** Ciphertext bytes in S3. */
  size: number;
  /**
   * complete: object and manifest, sizes agree; incomplete: positively, an object
   * without a manifest or a manifest without an object; unreadable: the manifest
   * could not be read or disagrees with the object (`reason`), so nothing is known
   * and prune never deletes it; in-progress: not complete, and a create's pending
   * marker is there.
   */
  status: 'complete' | 'incomplete' | 'unreadable' | 'in-progress';
  /** Why an unreadable backup is (S3's error, the size mismatch). */
  reason?: string;
  files?: number;
  /** The object's (or, without one, the manifest's, else the pending marker's) last-modified time. */
  lastModified?: string;
  /** When a create wrote its pending marker (`<id>.pending`), if it is there. */
  pendingSince?: string;
  serverName?: string;
  /**
   * Incomplete as an object without a manifest (and no pending marker): a run killed
   * before it had markers, or a backup of the original Python charm, which wrote no
   * manifests and restores with allow-no-manifest. Prune never deletes it.
   */
  objectOnly?: boolean;
}

export interface InProgressUpload {
  key: string;
  uploadId: string;
  initiated?: string;
}

export interface ListResult {
  backups: BackupInfo[];
  uploads: InProgressUpload[];
}

export interface RestoreRequest {
  id: string;
  /** Workload services to stop before writing and start after (the charm passes ['synapse']). */
  services?: string[];
  /**
   * Restore a backup that has no manifest (the original Python charm wrote
   * none). Decryption still authenticates every byte; only the comparison with
   * the manifest's counts and SHA-256 is skipped.
   */
  allowMissingManifest?: boolean;
  /** Keep the replaced files in `<data dir>/.pre-restore-<time>` after a successful restore. */
  keepPrevious?: boolean;
  /**
   * Restore a backup of another server name (or one naming none over a data dir
   * that names one), one without the database or with roots elsewhere, and into
   * a data dir that holds files but none of Synapse's.
   */
  force?: boolean;
  /**
   * The server name this Synapse should have (the charm's server-name), used
   * when the live data dir has no homeserver.yaml to read it from.
   */
  expectedServerName?: string;
}

export interface RestoreResult {
  backupId: string;
  files: number;
  plaintextBytes: number;
  durationSeconds: number;
  /** Seconds of the flush (`sync -f`) of the staged files before the swap (part of the total). */
  flushSeconds?: number;
  /** Where the replaced files were kept (keepPrevious), else undefined. */
  previousPath?: string;
  /**
   * The paths outside the data dir this restore replaced (a format-2 backup's
   * roots: absolute, in the manifest's order; a database's -wal, -shm and
   * -journal went with it). Absent when there were none.
   */
  replacedOutside?: string[];
  /** Kept too (keepPrevious): the replaced items outside the data dir, each beside its path. */
  externalPreviousPaths?: string[];
  /** Rows deleted from e2e_one_time_keys_json; undefined when there was no SQLite database. */
  oneTimeKeysRemoved?: number;
  /** An earlier restore's interrupted swap, completed or rolled back before this one began. */
  swapRecovery?: SwapRecovery;
  /** What the backup does not hold (a PostgreSQL database), restored with `force` all the same. */
  notIncluded?: string[];
  /**
   * homeserver.yaml's keys that still name paths under another data dir (the
   * backup's) than the one restored into (stale-paths.ts); homeserver.yaml is
   * never rewritten. Absent when there are none.
   */
  staleConfigPaths?: StaleConfigPaths;
}

export interface PruneRequest {
  /** Report what would go, delete nothing. */
  dryRun?: boolean;
  /**
   * In-progress uploads, incomplete backups and pending markers older than this
   * are removed; an id whose pending marker is younger is not touched at all.
   * Default 24 h: it must be longer than the longest create.
   */
  staleAfterSeconds?: number;
  now?: Date;
  /**
   * Also remove what interrupted runs left in the workload: in the data dir, a
   * create's database snapshot and a restore's staging directories (never the
   * previous files a restore kept); outside it, the transport's (Workload.removeStale).
   * Only while no other run uses the data dir (the charm runs one action at a
   * time). Default true; never in a dry run.
   */
  workloadLeftovers?: boolean;
  /** Services to stop while an interrupted restore's swap is resolved, and start after (the charm passes ['synapse']). */
  services?: string[];
}

/** One server's share of a prune's retention (PruneResult.servers). */
export interface ServerRetention {
  /** The server_name the backups' manifests name; null for backups that name none. */
  serverName: string | null;
  /** Its complete backups the policy keeps, newest first. */
  kept: string[];
  /** Its complete backups the policy removed (in a dry run, would remove), oldest first. */
  forgotten: string[];
}

export interface PruneResult {
  dryRun: boolean;
  /** Complete backups removed by the retention policy. */
  forgotten: string[];
  /** Incomplete backups (object or manifest without the other) removed. */
  incompleteRemoved: string[];
  /** Keys of in-progress multipart uploads aborted. */
  uploadsAborted: string[];
  /** Ids whose stale pending markers (`<id>.pending`, see backup/pending.ts) were removed. */
  pendingRemoved: string[];
  kept: number;
  /**
   * Each server's share of the retention policy (applied to each server_name's
   * complete backups on its own), only when the complete backups name more than
   * one server (those naming none count as one more): what the policy kept and
   * what it let go of each. Absent with one server, whose ids are `forgotten`.
   */
  servers?: ServerRetention[];
  /**
   * True when the data dir's leftovers were removed (if there were any); false in a
   * dry run, without `workloadLeftovers`, or when it failed.
   */
  leftoversRemoved: boolean;
  /** Why the leftovers could not be removed (the workload command's error). */
  leftoversError?: string;
  /** Paths the transport removed of its own interrupted runs (Workload.removeStale: Pebble's stale direct-stream sockets). */
  staleRemoved: string[];
  /** Why the transport's stale files could not be removed. */
  staleError?: string;
  /** An interrupted restore's swap, completed or rolled back before the leftovers went. */
  swapRecovery?: SwapRecovery;
}

export interface VerifyResult {
  backupId: string;
  files: number;
  plaintextBytes: number;
  sha256: string;
  durationSeconds: number;
}

export interface DeleteResult {
  backupId: string;
  /** Full keys removed: manifest, object, pending marker, in that order. */
  deletedKeys: string[];
  /**
   * When the backup was incomplete and its pending marker stale (an interrupted
   * create's): the marker's last-modified ISO time. Its uploads were aborted too.
   */
  interruptedRunSince?: string;
}
