/**
 * After a restore into another data dir than the backup's: homeserver.yaml's
 * absolute paths (what `synapse --generate-config` writes: media_store_path, the
 * database's args.database, signing_key_path, log_config, pid_file) still name
 * the old dir, so a Synapse started on the new one would use the old media
 * store and database, and the next create would back the old dir up as
 * `@external/...`. The restore never rewrites homeserver.yaml; it says so
 * (RestoreResult.staleConfigPaths), naming the keys, the old and new paths.
 *
 * The old dir is the manifest's `dataDir` when that is not the restore's; else
 * (no manifest, or a backup made with --config-root) one inferred from the
 * restored files: a path homeserver.yaml names whose tail is a data-dir item the
 * restore put under the new data dir (`/old/media_store` for
 * `media_store/local_content`).
 */
import { posix } from 'node:path';
import type { EngineContext } from './context';
import {
  type HomeserverConfig,
  REFERENCED_FILE_KEYS,
  readHomeserverConfigOf,
  resolveConfigPath,
} from './homeserver';

/** One homeserver.yaml key naming a path under the old data dir. */
export interface StalePath {
  /** The key, e.g. `media_store_path`, `database.args.database`, `databases.main.args.database`. */
  key: string;
  /** The path it names (absolute, as the config's paths are read: homeserver.ts). */
  path: string;
  /** The same path under the restore's data dir: what the key should name. */
  newPath: string;
}

/** homeserver.yaml's keys that name paths under another data dir than the restore's. */
export interface StaleConfigPaths {
  /** The data dir the paths are under (the backup's, as its manifest or the restored files say). */
  oldDataDir: string;
  /** The restore's data dir. */
  dataDir: string;
  keys: StalePath[];
}

/** Every key of a parsed homeserver.yaml that names a path, with its value (non-empty strings only). */
export function pathKeysOf(config: Record<string, unknown>): { key: string; value: string }[] {
  const named: [string, unknown][] = [['media_store_path', config.media_store_path]];
  const args = (d: unknown): unknown =>
    d && typeof d === 'object' ? (d as Record<string, unknown>).args : undefined;
  const database = (d: unknown): unknown => {
    const a = args(d);
    return a && typeof a === 'object' ? (a as Record<string, unknown>).database : undefined;
  };
  named.push(['database.args.database', database(config.database)]);
  named.push(['database_path', config.database_path]);
  if (config.databases && typeof config.databases === 'object') {
    for (const [name, d] of Object.entries(config.databases as Record<string, unknown>)) {
      named.push([`databases.${name}.args.database`, database(d)]);
    }
  }
  for (const key of ['signing_key_path', 'log_config', 'pid_file', ...REFERENCED_FILE_KEYS]) {
    named.push([key, config[key]]);
  }
  const files = Array.isArray(config.app_service_config_files)
    ? config.app_service_config_files
    : [];
  for (const f of files) named.push(['app_service_config_files', f]);
  return named.flatMap(([key, value]) =>
    typeof value === 'string' && value !== '' ? [{ key, value }] : [],
  );
}

const isUnder = (path: string, dir: string): boolean =>
  path === dir || path.startsWith(dir === '/' ? '/' : `${dir}/`);

/**
 * The keys of `config` (the restored data dir's homeserver.yaml) naming paths under
 * another dir than `dataDir`: the manifest's `backupDataDir` when it is another, else
 * one inferred from `items` (the data-dir items restored, archive names); paths the
 * restore put back outside the data dir (`outside`) are where they belong. Undefined
 * when there are none. Pure.
 */
export function staleConfigPathsOf(
  config: HomeserverConfig,
  dataDir: string,
  configRoot: string | undefined,
  restored: { backupDataDir?: string; items: readonly string[]; outside: readonly string[] },
): StaleConfigPaths | undefined {
  const named = pathKeysOf(config.config).map(({ key, value }) => ({
    key,
    path: resolveConfigPath(value, dataDir, configRoot),
  }));
  const elsewhere = named.filter(
    (n) =>
      !isUnder(n.path, dataDir) &&
      !restored.outside.some((o) => isUnder(n.path, o) || isUnder(o, n.path)),
  );
  const candidates: string[] = [];
  if (restored.backupDataDir && restored.backupDataDir !== dataDir) {
    candidates.push(restored.backupDataDir);
  }
  for (const { key, path } of elsewhere) {
    // media_store_path names the folder of the items local_content, local_thumbnails.
    const files =
      key === 'media_store_path' ? [`${path}/local_content`, `${path}/local_thumbnails`] : [path];
    for (const file of files) {
      const item = restored.items.find((i) => file.endsWith(`/${i}`));
      if (item) candidates.push(file.slice(0, -item.length - 1) || '/');
    }
  }
  for (const old of candidates) {
    const keys = elsewhere
      .filter((n) => isUnder(n.path, old))
      .map((n) => ({ ...n, newPath: posix.join(dataDir, posix.relative(old, n.path)) }));
    if (keys.length) return { oldDataDir: old, dataDir, keys };
  }
  return undefined;
}

/**
 * Reads the data dir's homeserver.yaml after a restore (one workload command) and
 * returns staleConfigPathsOf it; undefined when there is none, or it cannot be read
 * or parsed (the restore is done: this is a warning, never a failure). Nothing is
 * read for a backup of this very data dir (its manifest's `dataDir`), the normal
 * case and every charm restore of its own backups: its paths are the ones it had.
 */
export async function checkStaleConfigPaths(
  ctx: EngineContext,
  restored: { backupDataDir?: string; items: readonly string[]; outside: readonly string[] },
): Promise<StaleConfigPaths | undefined> {
  if (restored.backupDataDir === ctx.dataDir) return undefined;
  const config = await readHomeserverConfigOf(ctx).catch(() => undefined);
  return config && staleConfigPathsOf(config, ctx.dataDir, ctx.configRoot, restored);
}

/**
 * The problem in a sentence, without the fix (the CLI and the charm add theirs):
 * `homeserver.yaml in /new still names paths under /old, not /new where backup X
 * put their files: media_store_path /old/media_store, signing_key_path ...; so a
 * Synapse started on /new would use the files under /old, and the next create
 * would back them up as @external/...`.
 */
export function describeStaleConfigPaths(s: StaleConfigPaths, id: string): string {
  const keys = s.keys.map((k) => `${k.key} ${k.path}`).join(', ');
  return `homeserver.yaml in ${s.dataDir} still names paths under ${s.oldDataDir}, not ${s.dataDir} where backup ${id} put their files: ${keys}; so a Synapse started on ${s.dataDir} would use the files under ${s.oldDataDir}, and the next create would back them up as @external/...`;
}

/** The keys StaleConfigPaths names, each once, comma-separated. */
export function staleKeysOf(s: StaleConfigPaths): string {
  return [...new Set(s.keys.map((k) => k.key))].join(', ');
}
