/**
 * The selection a manifest lists (its `items`, `databases`, `roots` and `dataDir`)
 * decides what a restore replaces and deletes, and the manifest is plain JSON in
 * S3. So create binds it into the authenticated ESDK header: the encryption
 * context carries its SHA-256 under `synapse-backup-selection`, and restore,
 * verify and decrypt refuse a manifest that does not hash to it (an edit that
 * widens a root to a parent directory, or an item to its whole folder), before
 * a byte of the archive is used. A manifest of an older engine lists none of
 * them, and its header binds none: a restore then takes the items from the
 * (authenticated) archive and allows no outside roots.
 */
import { createHash } from 'node:crypto';
import type { MessageHeaderContext } from '../crypto/esdk';
import { BackupError } from '../errors';
import type { Manifest } from './manifest';

/** The encryption context key holding the selection's digest (hex SHA-256). */
export const SELECTION_CONTEXT_KEY = 'synapse-backup-selection';

/** What of a manifest the digest covers. */
export type BoundSelection = Pick<Manifest, 'dataDir' | 'items' | 'databases' | 'roots'>;

/** Hex SHA-256 of the selection's canonical JSON (fixed order; absent lists as null, roots as []). */
export function selectionDigest(s: BoundSelection): string {
  const canonical = JSON.stringify([
    s.dataDir ?? null,
    s.items ?? null,
    s.databases ?? null,
    (s.roots ?? []).map((r) => [r.name, r.path]),
  ]);
  return createHash('sha256').update(canonical).digest('hex');
}

/**
 * `corrupt` when the manifest's selection is not the one the authenticated header
 * binds (or the manifest lists one that the header does not bind); undefined when
 * they agree, or neither has one (an older engine's or the Python charm's backup).
 */
export function refuseUnboundSelection(
  header: MessageHeaderContext,
  id: string,
  manifest: BoundSelection,
): BackupError | undefined {
  const bound = header.encryptionContext?.[SELECTION_CONTEXT_KEY];
  const claims =
    manifest.items !== undefined ||
    manifest.databases !== undefined ||
    manifest.roots !== undefined;
  if (bound === undefined ? !claims : bound === selectionDigest(manifest)) return undefined;
  return new BackupError(
    'corrupt',
    `backup ${id}'s manifest does not match its encrypted header: the items, roots or data dir it lists were changed after the backup was made; refused, nothing was changed`,
    {
      remedy: {
        kind: 'advice',
        text: 'restore another backup (list-backups), and find out who can write to the bucket',
      },
    },
  );
}
