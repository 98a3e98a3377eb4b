import { BackupError } from '../errors';
import type { EncryptionParameters } from '../crypto/esdk';
import type { EntryWarning, SkippedEntry } from './notes';

export const MANIFEST_FORMAT = 'synapse-backup-manifest';
/**
 * The newest format this engine reads and writes: 2 has external roots
 * (`roots`); a manifest without them is written as 1, which older engines read.
 */
export const MANIFEST_VERSION = 2;

/** Written after the upload completes: a backup without one is incomplete. Holds no key material. */
export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  id: string;
  object: string;
  startedAt: string;
  finishedAt: string;
  plaintextBytes: number;
  ciphertextBytes: number;
  /** Regular files in the archive. */
  files: number;
  /** All archive entries: files, directories, links. */
  entries: number;
  /** SHA-256 of the plaintext tar, hex. */
  sha256: string;
  encryption: EncryptionParameters;
  dataDir: string;
  /** Synapse's server_name from homeserver.yaml, when there was one. */
  serverName?: string;
  /** The signing key's id (e.g. ed25519:a_AbCd), never the key. */
  signingKeyId?: string;
  /**
   * Entries left out because a restore refuses them and they hold no data (sockets,
   * FIFOs, device nodes), by path relative to the data dir: the first 1000
   * (notes.ts LISTED_LIMIT); `skippedCount` is how many in all. Absent when none.
   */
  skipped?: SkippedEntry[];
  skippedCount?: number;
  /**
   * Media that changed (`changed`: archived as tar found it) or vanished
   * (`removed`: not archived) while tar read them on a live server: the first
   * 1000; `warningsCount` is how many in all. Absent when none.
   */
  warnings?: EntryWarning[];
  warningsCount?: number;
  /**
   * The selection's items, as archive names (`homeserver.yaml`,
   * `media_store/local_content`): exactly what a restore replaces. Absent in
   * older manifests: a restore then derives them from the archive (items.ts).
   */
  items?: string[];
  /** The items that are SQLite databases (their -wal, -shm, -journal go with them). */
  databases?: string[];
  /** Items outside the data dir: archive name (`@external/<path>`) and absolute path. Version 2. */
  roots?: { name: string; path: string }[];
  /** Paths homeserver.yaml names that did not exist, so are not in this backup. */
  missing?: string[];
  /** What is not in this backup and what backs it up (a PostgreSQL database: pg_dump). */
  notIncluded?: string[];
  engine: { name: string; version: string };
}

export function parseManifest(text: string, key: string): Manifest {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new BackupError('corrupt', `the manifest ${key} is not valid JSON`);
  }
  const m = value as Partial<Manifest>;
  if (m?.format !== MANIFEST_FORMAT || typeof m.version !== 'number') {
    throw new BackupError('corrupt', `${key} is not a synapse-backup manifest`);
  }
  if (m.version > MANIFEST_VERSION) {
    throw new BackupError(
      'corrupt',
      `the manifest ${key} has format version ${m.version}; this engine reads up to ${MANIFEST_VERSION}: upgrade the charm`,
    );
  }
  for (const field of ['id', 'sha256', 'startedAt'] as const) {
    if (typeof m[field] !== 'string') {
      throw new BackupError('corrupt', `the manifest ${key} lacks "${field}"`);
    }
  }
  for (const field of ['plaintextBytes', 'ciphertextBytes', 'files', 'entries'] as const) {
    if (typeof m[field] !== 'number') {
      throw new BackupError('corrupt', `the manifest ${key} lacks "${field}"`);
    }
  }
  return m as Manifest;
}
