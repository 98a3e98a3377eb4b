/**
 * What a create looked at, as an operator reads it: for the empty selection's
 * message (create-status.ts emptySelection), which names the actual paths this
 * run's homeserver.yaml (or Synapse's defaults without one) selected and what
 * was found at each.
 */
import { posix } from 'node:path';
import { BackupError } from '../errors';
import { HOMESERVER_CONFIG } from './homeserver';
import { SELECTED_GLOBS } from './scripts';
import { externalPath } from './items';

/** A selected path as the probe found it (selection.ts). */
export interface ProbedPath {
  path: string;
  /** What it is, e.g. "the signing key", "log_config"; media paths are grouped instead. */
  what: string;
  /** local_content or local_thumbnails of a media store. */
  media?: boolean;
  /** The probe's type: `f` (not a directory), `d` (a directory) or `-` (missing). */
  type: string;
}

const STATE: Record<string, string> = {
  '-': 'missing',
  d: 'no regular file',
  f: 'not a regular file',
};

/**
 * One phrase per thing looked at, in selection order, e.g. `no homeserver.yaml,
 * so Synapse's default paths`, `the media store /d/media_store (local_content: no
 * regular file, local_thumbnails: missing)`, `the SQLite database /d/homeserver.db
 * (missing)`, `no *.key, *.yaml, *.yml or *.log.config file in /d`. `globs`: the
 * data-dir files SELECTED_GLOBS matched (names).
 */
export function lookedAtOf(
  dataDir: string,
  hasConfig: boolean,
  probed: readonly ProbedPath[],
  globs: readonly string[],
): string[] {
  const first = hasConfig
    ? `the paths ${posix.join(dataDir, HOMESERVER_CONFIG)} names`
    : `no ${HOMESERVER_CONFIG} in ${dataDir}, so Synapse's default paths`;
  // A media store's folders in one phrase, where its first folder comes.
  const slots: { text?: string; store?: string }[] = [{ text: first }];
  const stores = new Map<string, string[]>();
  for (const p of probed) {
    const state = STATE[p.type] ?? 'found';
    if (!p.media) {
      slots.push({ text: `${p.what} ${p.path} (${state})` });
      continue;
    }
    const store = posix.dirname(p.path);
    const folders = stores.get(store) ?? [];
    if (folders.length === 0) slots.push({ store });
    stores.set(store, [...folders, `${posix.basename(p.path)}: ${state}`]);
  }
  const phrases = slots.map(({ text, store }) =>
    store ? `the media store ${store} (${stores.get(store)?.join(', ')})` : (text ?? ''),
  );
  phrases.push(
    globs.length
      ? `${dataDir}'s ${globs.join(', ')} (of ${SELECTED_GLOBS.join(', ')})`
      : `no ${SELECTED_GLOBS.slice(0, -1).join(', ')} or ${SELECTED_GLOBS.at(-1)} file in ${dataDir}`,
  );
  return phrases;
}

/**
 * The create's warning when the data dir has no homeserver.yaml (Selection's
 * `noHomeserverYaml`; nothing when `hasConfig` or nothing was selected): Synapse's
 * default paths were taken, which is right for a server run that way but also what
 * a wrong --data-dir gives. `items`: the selection's archive names, named by their
 * top folder or file: `no homeserver.yaml in /d: backed up media_store alone, with
 * Synapse's default paths; the backup names no server`.
 */
export function noConfigNote(
  dataDir: string,
  hasConfig: boolean,
  items: readonly string[],
): { noHomeserverYaml?: string } {
  if (hasConfig || items.length === 0) return {};
  const tops = [...new Set(items.map((item) => item.split('/')[0]))];
  const shown = tops.slice(0, 5).join(', ') + (tops.length > 5 ? ', ...' : '');
  return {
    noHomeserverYaml: `no ${HOMESERVER_CONFIG} in ${dataDir}: backed up ${shown} alone, with Synapse's default paths; the backup names no server`,
  };
}

/** What homeserver.yaml names that a backup does not hold, for create's result and manifest. */
export function selectionNotes(s: { missing: string[]; notIncluded: string[] }): {
  missing?: string[];
  notIncluded?: string[];
} {
  return {
    ...(s.missing.length ? { missing: s.missing } : {}),
    ...(s.notIncluded.length ? { notIncluded: s.notIncluded } : {}),
  };
}

/**
 * What a create's result (not its manifest) says of its selection: `noHomeserverYaml`,
 * and `archivedOutside`, the absolute paths outside the data dir it archived (as
 * `@external/...`, from homeserver.yaml's absolute paths), which a restore puts back there.
 */
export function resultNotes(s: { noHomeserverYaml?: string; items: readonly string[] }): {
  noHomeserverYaml?: string;
  archivedOutside?: string[];
} {
  const outside = s.items.flatMap((i) => externalPath(i) ?? []);
  return {
    ...(s.noHomeserverYaml ? { noHomeserverYaml: s.noHomeserverYaml } : {}),
    ...(outside.length ? { archivedOutside: outside } : {}),
  };
}

/**
 * homeserver.yaml, a database, a signing key (`*.key`) or a media folder: Synapse's own
 * data. `item`: an archive name (`media_store/local_content`); `databases`: the database items.
 */
export function isSynapseItem(item: string, databases: readonly string[]): boolean {
  return (
    item === HOMESERVER_CONFIG ||
    databases.includes(item) ||
    item.endsWith('.key') ||
    /(^|\/)local_(content|thumbnails)$/.test(item)
  );
}

/**
 * Throws BackupError `empty-selection` (remedy `data-dir`) when the selection holds none of
 * Synapse's data, only stray files: `--data-dir` named a compose file's folder, say.
 */
export function refuseStraySelection(
  dataDir: string,
  items: readonly string[],
  databases: readonly string[],
): void {
  if (items.some((item) => isSynapseItem(item, databases))) return;
  const shown = items.slice(0, 5).join(', ') + (items.length > 5 ? ', ...' : '');
  throw new BackupError(
    'empty-selection',
    `nothing of Synapse's to back up in ${dataDir}: no homeserver.yaml, signing key, SQLite database or media store there, only ${shown}`,
    { remedy: { kind: 'data-dir' } },
  );
}
