/**
 * What a backup selects, following homeserver.yaml (homeserver.ts): the media
 * store's local_content and local_thumbnails, the SQLite database (as a
 * snapshot), the signing key, log_config and the files the config references,
 * plus the data dir's own globs (scripts/selection.ts SELECTED_GLOBS). Each
 * selected path is resolved in the workload (every symlink followed): one whose
 * real path is in the data dir keeps its relative name; one outside it is an
 * external root, archived as `@external/<real path>` and restored there.
 */
import { posix } from 'node:path';
import { BackupError } from '../errors';
import { emptySelection } from './create-status';
import { runCommand } from '../workload/command';
import type { Workload } from '../workload/workload';
import {
  type HomeserverConfig,
  type HomeserverPaths,
  homeserverPaths,
  readHomeserverConfig,
  referenceKeys,
} from './homeserver';
import { type ServerIdentity, serverIdentityOf } from './identity';
import { EXTERNAL_PREFIX } from './items';
import * as lookedAt from './selection-looked-at';
import { ROOT_LINK_NAME, isBookkeepingName } from './scripts/common';
import { selectionProbeCommand } from './scripts/selection';

/** An item outside the data dir: its archive name (`@external/etc/x.key`) and path. */
export interface ExternalRoot {
  name: string;
  path: string;
}

/** What create archives, and what it says about what it left out. */
export interface Selection {
  /** Names for tar, relative to the data dir (outside it: under ROOT_LINK_NAME); not the database. */
  tarNames: string[];
  /** Data-dir directories above items, archived without their contents (owner, group, mode). */
  parents: string[];
  /** The SQLite database to snapshot: its real path and its name in the archive. */
  database?: { path: string; archiveName: string };
  /** Every item's archive name (the database's too), in selection order. */
  items: string[];
  /** The items that are SQLite databases. */
  databases: string[];
  /** The items outside the data dir. */
  roots: ExternalRoot[];
  /**
   * The media items' names as tar is given them (and names them in its complaints):
   * a live server's changed or vanished files under these are warnings (create-status.ts).
   */
  mediaTarNames: string[];
  /** Paths homeserver.yaml names that do not exist, left out: one sentence each. */
  missing: string[];
  /** What is not in this backup and what backs it up (a PostgreSQL database: pg_dump). */
  notIncluded: string[];
  /** What this run looked at and found, one phrase each (selection-looked-at.ts). */
  lookedAt: string[];
  /** Set when there is no homeserver.yaml: what was taken by Synapse's defaults (a warning). */
  noHomeserverYaml?: string;
}

/** A path homeserver.yaml selects (or defaults to), and what to say if it is missing. */
interface Candidate {
  path: string;
  /** What it is, for the empty selection's message (selection-looked-at.ts). */
  what?: string;
  /** The homeserver.yaml key naming it, when it names it explicitly. */
  key?: string;
  database?: boolean;
  /** local_content or local_thumbnails: Synapse writes and deletes files there while it runs. */
  media?: boolean;
  /** Missing and named explicitly: an error, not a warning. */
  required?: boolean;
}

/**
 * Reads homeserver.yaml and probes the selected paths in the workload.
 * Throws BackupError `invalid-config` for homeserver.yaml that is not YAML, a
 * signing_key_path that does not exist, several SQLite databases or a selected
 * path that cannot be archived (it holds the data dir, a newline, or a name
 * the engine reserves); `empty-selection` when the data dir does not exist.
 * `configRoot`: where the config's absolute paths were written for (homeserver.ts
 * resolveConfigPath).
 */
export async function readSelection(
  workload: Workload,
  dataDir: string,
  configRoot?: string,
): Promise<Selection> {
  const config = await readHomeserverConfig(workload, dataDir, configRoot);
  return selectionOf(workload, dataDir, config, configRoot);
}

/**
 * readSelection of an already read homeserver.yaml (`config`: readHomeserverConfig's,
 * undefined when there is none: Synapse's defaults), probing its paths in the
 * workload; the same errors but for the YAML's.
 */
export async function selectionOf(
  workload: Workload,
  dataDir: string,
  config: HomeserverConfig | undefined,
  configRoot?: string,
): Promise<Selection> {
  const raw = config?.config ?? {};
  const paths = config?.paths ?? homeserverPaths({}, dataDir);
  const { candidates, notIncluded } = candidatesOf(raw, paths, configRoot);
  const out = await runCommand(
    workload,
    selectionProbeCommand(
      dataDir,
      candidates.map((c, i) => [String(i), c.path]),
    ),
    `looking for the selected paths of ${dataDir}`,
  );
  const fields = out.split('\0');
  if (fields[0] === 'nodir') {
    throw new BackupError(
      'empty-selection',
      `nothing to back up: ${dataDir} does not exist in the workload`,
      { remedy: { kind: 'data-dir' } },
    );
  }
  const records: { kind: string; path: string; type: string; real: string }[] = [];
  for (let i = 0; i + 3 < fields.length; i += 4) {
    records.push({
      kind: fields[i],
      path: fields[i + 1],
      type: fields[i + 2],
      real: fields[i + 3],
    });
  }
  const realDataDir = records[0]?.real || dataDir;
  const selection = new SelectionBuilder(dataDir, realDataDir, notIncluded, configRoot);
  const probed: lookedAt.ProbedPath[] = [];
  for (const r of records.slice(1)) {
    const candidate =
      r.kind === 'glob' ? { path: posix.join(dataDir, r.path) } : candidates[Number(r.kind)];
    if (!candidate) continue;
    if (r.kind !== 'glob') {
      const what = candidate.what ?? candidate.key ?? 'a file homeserver.yaml names';
      probed.push({ path: candidate.path, what, media: candidate.media, type: r.type });
    }
    if (r.type === '-') selection.missing(candidate);
    else selection.add(candidate, r.real);
  }
  const globs = records.filter((r) => r.kind === 'glob').map((r) => r.path);
  const built = selection.build();
  const seen = lookedAt.lookedAtOf(dataDir, !!config, probed, globs);
  return { ...built, lookedAt: seen, ...lookedAt.noConfigNote(dataDir, !!config, built.items) };
}

/**
 * homeserver.yaml read once (readHomeserverConfig), and both what create takes from
 * it: the server's identity (identity.ts) and the selection (selectionOf), each
 * settling on its own (either rejects with the read's error).
 */
export function readIdentityAndSelection(ctx: {
  workload: Workload;
  dataDir: string;
  configRoot?: string;
}): { identity: Promise<ServerIdentity>; selection: Promise<Selection> } {
  const config = readHomeserverConfig(ctx.workload, ctx.dataDir, ctx.configRoot);
  return {
    identity: config.then((c) => serverIdentityOf(ctx.workload, c)),
    selection: config
      .then((c) => selectionOf(ctx.workload, ctx.dataDir, c, ctx.configRoot))
      .then((s) => {
        // Nothing there at all: say so before tar starts.
        if (s.items.length === 0) throw emptySelection(ctx.dataDir, '', s.lookedAt);
        lookedAt.refuseStraySelection(ctx.dataDir, s.items, s.databases);
        return s;
      }),
  };
}

/** The paths homeserver.yaml selects, and its databases that no backup here holds. */
function candidatesOf(
  config: Record<string, unknown>,
  paths: HomeserverPaths,
  configRoot: string | undefined,
): { candidates: Candidate[]; notIncluded: string[] } {
  const candidates: Candidate[] = [];
  if (paths.signingKeyPath) {
    const key = 'signing_key_path' in config ? 'signing_key_path' : undefined;
    const what = 'the signing key';
    candidates.push({ path: paths.signingKeyPath, what, key, required: key !== undefined });
  }
  if (paths.logConfig) candidates.push({ path: paths.logConfig, key: 'log_config' });
  const keys = referenceKeys(config, posix.dirname(paths.configPath), configRoot);
  for (const path of paths.referencedFiles) candidates.push({ path, key: keys.get(path) });
  const mediaKey = 'media_store_path' in config ? 'media_store_path' : undefined;
  for (const sub of ['local_content', 'local_thumbnails']) {
    candidates.push({
      path: posix.join(paths.mediaStorePath, sub),
      key: mediaKey && `${mediaKey} (${sub})`,
      media: true,
    });
  }
  const notIncluded: string[] = [];
  const sqlite = paths.databases.filter((d) => 'path' in d);
  if (sqlite.length > 1) {
    throw new BackupError(
      'invalid-config',
      `homeserver.yaml names ${sqlite.length} SQLite databases (${sqlite.map((d) => d.name).join(', ')}): a backup holds one`,
      {
        remedy: {
          kind: 'advice',
          text: 'use one SQLite database, or PostgreSQL and back it up with pg_dump',
        },
      },
    );
  }
  for (const d of paths.databases) {
    if ('path' in d) {
      // The default (homeserver.db in the data dir) may be missing silently, as before.
      const named = d.path !== posix.join(posix.dirname(paths.configPath), 'homeserver.db');
      const what = 'the SQLite database';
      candidates.push({ path: d.path, what, key: named ? 'database' : undefined, database: true });
    } else {
      const what = d.engine === 'psycopg2' ? 'PostgreSQL' : d.engine;
      notIncluded.push(
        `the ${d.name} database (${what}) is not in this backup: back it up with ${d.engine === 'psycopg2' ? 'pg_dump' : 'its own tools'}`,
      );
    }
  }
  return { candidates, notIncluded };
}

class SelectionBuilder {
  private readonly found: {
    name: string;
    tarName: string;
    root?: ExternalRoot;
    database?: string;
    media?: boolean;
  }[] = [];
  private readonly absent: string[] = [];

  constructor(
    private readonly dataDir: string,
    private readonly realDataDir: string,
    private readonly notIncluded: string[],
    private readonly configRoot: string | undefined,
  ) {}

  /**
   * For a missing path under /data while the data dir is elsewhere and no config
   * root was given: the config was likely written by the official image for a
   * volume now mounted at the data dir.
   */
  private mountHint(path: string): string | undefined {
    const image = '/data';
    if (this.configRoot !== undefined || this.dataDir === image) return undefined;
    if (!path.startsWith(`${image}/`)) return undefined;
    return `if homeserver.yaml was written for ${image} and that volume is mounted at ${this.dataDir}, pass --config-root ${image} (its paths under ${image} are then read under ${this.dataDir})`;
  }

  missing(c: Candidate): void {
    const hint = this.mountHint(c.path);
    if (c.required) {
      throw new BackupError(
        'invalid-config',
        `homeserver.yaml's ${c.key} ${c.path} does not exist: a backup without the signing key could not restore this server's identity`,
        {
          remedy: {
            kind: 'advice',
            text:
              hint ?? 'put the signing key there, or correct signing_key_path, then back up again',
          },
        },
      );
    }
    // Synapse makes local_content and local_thumbnails with the first upload: a new
    // server has neither, which is no sign of a wrong media_store_path.
    if (c.key && !c.media)
      this.absent.push(
        `${c.path} (homeserver.yaml's ${c.key}) does not exist: not in this backup${hint ? `; ${hint}` : ''}`,
      );
  }

  add(c: Candidate, real: string): void {
    const bad = (why: string) =>
      new BackupError(
        'invalid-config',
        `cannot back up ${c.path}${real !== c.path ? ` (${real})` : ''}: ${why}`,
        {
          remedy: {
            kind: 'advice',
            text: 'correct homeserver.yaml or move the file, then back up again',
          },
        },
      );
    if (real.includes('\n') || !real.startsWith('/'))
      throw bad('its path holds a newline or cannot be resolved');
    const top = this.realDataDir === '/' ? '/' : `${this.realDataDir}/`;
    if (real === this.realDataDir || top.startsWith(`${real}/`))
      throw bad(`it holds the data dir ${this.dataDir}`);
    if (real.startsWith(top)) {
      const name = real.slice(top.length);
      const first = name.split('/')[0];
      if (isBookkeepingName(first) || first === EXTERNAL_PREFIX)
        throw bad(`the engine reserves the name ${first}`);
      this.found.push({
        name,
        tarName: name,
        database: c.database ? real : undefined,
        media: c.media,
      });
    } else {
      const root = { name: `${EXTERNAL_PREFIX}${real}`, path: real };
      this.found.push({
        name: root.name,
        tarName: `${ROOT_LINK_NAME}${real}`,
        root,
        database: c.database ? real : undefined,
        media: c.media,
      });
    }
  }

  build(): Omit<Selection, 'lookedAt'> {
    // Each name once; nothing inside another item (the database wins a tie).
    const byName = new Map<string, (typeof this.found)[number]>();
    for (const f of this.found) if (!byName.has(f.name) || f.database) byName.set(f.name, f);
    const names = [...byName.keys()];
    const kept = [...byName.values()].filter((f) => !names.some((n) => f.name.startsWith(`${n}/`)));
    const db = kept.find((f) => f.database);
    const parents = new Set<string>();
    for (const f of kept) {
      if (f.root) continue;
      const parts = f.name.split('/');
      for (let i = 1; i < parts.length; i++) parents.add(parts.slice(0, i).join('/'));
    }
    return {
      tarNames: kept.filter((f) => !f.database).map((f) => f.tarName),
      parents: [...parents],
      database: db && { path: db.database!, archiveName: db.name },
      items: kept.map((f) => f.name),
      databases: db ? [db.name] : [],
      roots: kept.flatMap((f) => (f.root ? [f.root] : [])),
      mediaTarNames: kept.filter((f) => f.media).map((f) => f.tarName),
      missing: this.absent,
      notIncluded: this.notIncluded,
    };
  }
}
