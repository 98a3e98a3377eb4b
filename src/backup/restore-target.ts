/**
 * The data dir a restore goes to, as found before anything is staged: it must
 * exist (only the operator knows its owner), have room for the staged copy
 * (restore.ts), and be Synapse's, a new one or an empty one: a directory that
 * holds files but none of Synapse's is a mistyped `--data-dir` (a compose
 * file's folder, `/srv`, the media store itself), which the swap would fill
 * with Synapse's files and give the backed-up data dir's owner and mode.
 */
import { posix } from 'node:path';
import { BackupError } from '../errors';
import { runCommand } from '../workload/command';
import type { EngineContext } from './context';
import { HOMESERVER_CONFIG } from './homeserver';
import type { Manifest } from './manifest';
import { freeSpaceCommand, NO_DATA_DIR, NOT_A_DIR } from './scripts';
import { isBookkeepingName } from './scripts/common';
import { isSynapseItem } from './selection-looked-at';

/** What the restore found in its data dir (freeSpaceCommand). */
export interface RestoreTarget {
  /** Bytes free for unprivileged writers on its filesystem; NaN when df printed no number. */
  free: number;
  /** Its top-level names, dot-files included. */
  entries: string[];
}

/**
 * The data dir's free bytes and top-level names (one workload command). Rejects with
 * `no-data-dir` when it does not exist or is not a directory: the restore stages
 * inside it, and only the operator knows its owner and mode (the CLI makes a missing
 * one on its own host, never in a workload); with `workload-command` when df fails.
 */
export async function readRestoreTarget(ctx: EngineContext): Promise<RestoreTarget> {
  const output = await runCommand(
    ctx.workload,
    freeSpaceCommand(ctx.dataDir),
    `checking free space in ${ctx.dataDir}`,
  );
  const newline = output.indexOf('\n');
  const first = (newline < 0 ? output : output.slice(0, newline)).trim();
  if (first === NO_DATA_DIR || first === NOT_A_DIR) {
    const [what, make] =
      first === NO_DATA_DIR
        ? ['does not exist', 'create it']
        : [
            'is not a directory (something else has its name)',
            'move that aside and create the directory',
          ];
    throw new BackupError(
      'no-data-dir',
      `the data dir ${ctx.dataDir} ${what}: nothing was restored`,
      {
        remedy: {
          kind: 'advice',
          text: `${make} where Synapse runs, owned by the user Synapse runs as (the official image's: install -d -o 991 -g 991 ${ctx.dataDir}), then run the restore again`,
        },
      },
    );
  }
  const entries = newline < 0 ? [] : output.slice(newline + 1).split('\0');
  return {
    free: first === '' ? NaN : Number(first),
    entries: entries.filter((name) => name !== ''),
  };
}

/** Rejects at once when `targetRead` did with `no-data-dir`; any other outcome waits for its turn. */
export async function refuseMissingDataDir(targetRead: Promise<RestoreTarget>): Promise<void> {
  await targetRead.catch((err: unknown) => {
    if (err instanceof BackupError && err.code === 'no-data-dir') throw err;
  });
}

/**
 * Names an empty data dir may hold: the engine's own (its lock, an interrupted run's
 * staging dir, kept previous copies, the journal) and a fresh ext4 volume's lost+found
 * (a Kubernetes volume the charm mounts, before Synapse wrote anything).
 */
function countsAsEmpty(name: string): boolean {
  return isBookkeepingName(name) || name === 'lost+found';
}

/** A media store's folders (Synapse's media repository), for the hint that one was named. */
const MEDIA_FOLDERS = new Set([
  'local_content',
  'local_thumbnails',
  'remote_content',
  'remote_thumbnail',
  'url_cache',
  'url_cache_thumbnails',
]);

/**
 * Whether top-level `name` is Synapse's, as create's empty-selection refusal sees
 * it (selection-looked-at.ts isSynapseItem): homeserver.yaml, a signing key
 * (`*.key`), the default database and media store (`homeserver.db`, `media_store`),
 * or the top folder of a database or media folder the backup's manifest names.
 */
function synapseNames(manifest: Manifest | undefined): (name: string) => boolean {
  const names = new Set([HOMESERVER_CONFIG, 'homeserver.db', 'media_store']);
  const databases = manifest?.databases ?? [];
  for (const item of manifest?.items ?? []) {
    if (!item.startsWith('@') && isSynapseItem(item, databases)) names.add(item.split('/')[0]);
  }
  return (name) => names.has(name) || name.endsWith('.key');
}

/**
 * Throws BackupError `foreign-data-dir` (remedy `restore-dir`) when the data dir
 * holds entries but none of Synapse's (see synapseNames); `--force` overrides it
 * (restore.ts refuseUnlessForced). An empty
 * data dir (countsAsEmpty) is a fresh restore's and passes. The message names the
 * first five entries (sorted) and, for a media store's folders, its parent.
 */
export function refuseForeignDataDir(
  dataDir: string,
  id: string,
  entries: readonly string[],
  manifest: Manifest | undefined,
): void {
  const found = entries.filter((name) => !countsAsEmpty(name)).sort();
  const isSynapse = synapseNames(manifest);
  if (found.length === 0 || found.some(isSynapse)) return;
  const shown =
    found.slice(0, 5).join(', ') + (found.length > 5 ? ` and ${found.length - 5} more` : '');
  const media = found.some((name) => MEDIA_FOLDERS.has(name))
    ? ` (a media store's folders: Synapse's data dir is likely ${posix.dirname(dataDir)})`
    : '';
  throw new BackupError(
    'foreign-data-dir',
    `the data dir ${dataDir} holds none of Synapse's files (no homeserver.yaml, signing key, SQLite database or media store), only ${shown}${media}: restoring backup ${id} there would put Synapse's files among them and give ${dataDir} the backed-up data dir's owner and mode; nothing was restored`,
    { remedy: { kind: 'restore-dir', dir: dataDir } },
  );
}
