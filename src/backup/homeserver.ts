/**
 * Where Synapse keeps its data, as its own homeserver.yaml says. The data dir is
 * only the default: package and Ansible installs put the media store, the SQLite
 * database and the signing key elsewhere, and the generated config names every
 * path absolutely (shared/reference/synapse.md).
 *
 * Rules follow Synapse 1.163's config readers (synapse/config/*.py):
 * - `media_store_path` (repository.py), default `media_store`;
 * - `database` (database.py): `name` sqlite3 (the default) or psycopg2, its
 *   `args.database`; else `database_path` (sqlite3); `databases` (several, by name);
 * - `signing_key_path` (key.py), default `<config dir>/<server_name>.signing.key`
 *   (absent when the key is inline as `signing_key`);
 * - `log_config` (logger.py), `pid_file` (server.py);
 * - files the config references: `app_service_config_files` (appservice.py) and
 *   the `*_path` keys of REFERENCED_FILE_KEYS.
 * Synapse makes relative paths absolute against its working directory
 * (`Config.abspath`); here they are taken relative to the data dir, which is
 * where the charm and the official image run it.
 *
 * `configRoot` (the CLI's --config-root) is where the config's absolute paths
 * were written for: a volume the official image wrote as /data, mounted
 * elsewhere. `<configRoot>/x` is read as `<dataDir>/x` before anything else.
 */
import { posix } from 'node:path';
import { parse } from 'yaml';
import { BackupError, yamlErrorSummary } from '../errors';
import { runCommand } from '../workload/command';
import type { Workload } from '../workload/workload';
import { readSmallFileIfExistsCommand } from './scripts';

/** The config file's name in the data dir, as the charm and the official image write it. */
export const HOMESERVER_CONFIG = 'homeserver.yaml';

/**
 * Top-level keys naming one file each that Synapse reads at start (tls.py, key.py,
 * registration.py, captcha.py, voip.py): restoring the config without them leaves a
 * Synapse that does not start.
 */
export const REFERENCED_FILE_KEYS = [
  'tls_certificate_path',
  'tls_private_key_path',
  'macaroon_secret_key_path',
  'form_secret_path',
  'registration_shared_secret_path',
  'recaptcha_private_key_path',
  'recaptcha_public_key_path',
  'turn_shared_secret_path',
] as const;

/** A database of the config: SQLite (a file this backup can hold) or another engine. */
export type DatabaseLocation =
  { engine: 'sqlite3'; name: string; path: string } | { engine: string; name: string };

/** Absolute paths inside the workload; undefined where the config names none. */
export interface HomeserverPaths {
  /** `<dataDir>/homeserver.yaml`. */
  configPath: string;
  serverName?: string;
  /** Undefined when the key is inline (`signing_key`) or there is no server_name. */
  signingKeyPath?: string;
  mediaStorePath: string;
  /** In config order; `master` for `database`/`database_path`. */
  databases: DatabaseLocation[];
  logConfig?: string;
  pidFile?: string;
  /** app_service_config_files, then REFERENCED_FILE_KEYS in that order, each once. */
  referencedFiles: string[];
}

/**
 * A path homeserver.yaml names, as a path in the workload: relative ones against
 * the data dir; absolute ones under `configRoot` (when given) moved to the same
 * place under the data dir; others as they are.
 */
export function resolveConfigPath(value: string, dataDir: string, configRoot?: string): string {
  const path = posix.resolve(dataDir, value);
  if (configRoot === undefined) return path;
  const rel = posix.relative(posix.resolve(configRoot), path);
  if (rel === '' || (!rel.startsWith('..') && !posix.isAbsolute(rel))) {
    return posix.resolve(dataDir, rel);
  }
  return path;
}

/**
 * Which homeserver.yaml key names each file it references (REFERENCED_FILE_KEYS and
 * app_service_config_files), by the path resolveConfigPath makes of it; the first key wins.
 */
export function referenceKeys(
  config: Record<string, unknown>,
  dataDir: string,
  configRoot: string | undefined,
): Map<string, string> {
  const keys = new Map<string, string>();
  const files = Array.isArray(config.app_service_config_files)
    ? config.app_service_config_files
    : [];
  const named: [string, unknown][] = [
    ...files.map((f): [string, unknown] => ['app_service_config_files', f]),
    ...REFERENCED_FILE_KEYS.map((k): [string, unknown] => [k, config[k]]),
  ];
  for (const [key, value] of named) {
    if (typeof value !== 'string' || value === '') continue;
    const path = resolveConfigPath(value, dataDir, configRoot);
    if (!keys.has(path)) keys.set(path, key);
  }
  return keys;
}

/**
 * The paths of a parsed homeserver.yaml (`config`: the YAML's top-level mapping;
 * anything else counts as empty). Pure: nothing is read or checked for existence.
 */
export function homeserverPaths(
  config: unknown,
  dataDir: string,
  configRoot?: string,
): HomeserverPaths {
  const c: Record<string, unknown> =
    config && typeof config === 'object' && !Array.isArray(config)
      ? (config as Record<string, unknown>)
      : {};
  const at = (value: unknown): string | undefined =>
    typeof value === 'string' && value !== ''
      ? resolveConfigPath(value, dataDir, configRoot)
      : undefined;
  const serverName = typeof c.server_name === 'string' ? c.server_name : undefined;
  const signingKeyPath =
    'signing_key' in c
      ? undefined
      : (at(c.signing_key_path) ??
        (serverName ? posix.join(dataDir, `${serverName}.signing.key`) : undefined));
  const referenced: string[] = [];
  const files = Array.isArray(c.app_service_config_files) ? c.app_service_config_files : [];
  for (const value of [...files, ...REFERENCED_FILE_KEYS.map((k) => c[k])]) {
    const path = at(value);
    if (path && !referenced.includes(path)) referenced.push(path);
  }
  return {
    configPath: posix.join(dataDir, HOMESERVER_CONFIG),
    serverName,
    signingKeyPath,
    mediaStorePath: at(c.media_store_path) ?? posix.join(dataDir, 'media_store'),
    databases: databasesOf(c, at, dataDir),
    logConfig: at(c.log_config),
    pidFile: at(c.pid_file),
    referencedFiles: referenced,
  };
}

function databasesOf(
  c: Record<string, unknown>,
  at: (value: unknown) => string | undefined,
  dataDir: string,
): DatabaseLocation[] {
  const one = (name: string, value: unknown): DatabaseLocation => {
    const d = value && typeof value === 'object' ? (value as Record<string, unknown>) : {};
    const engine = typeof d.name === 'string' ? d.name : 'sqlite3';
    if (engine !== 'sqlite3') return { engine, name };
    const args = d.args && typeof d.args === 'object' ? (d.args as Record<string, unknown>) : {};
    const path = at(args.database) ?? at(c.database_path) ?? posix.join(dataDir, 'homeserver.db');
    return { engine, name, path };
  };
  if (c.databases && typeof c.databases === 'object') {
    return Object.entries(c.databases as Record<string, unknown>).map(([n, v]) => one(n, v));
  }
  if (c.database && typeof c.database === 'object') return [one('master', c.database)];
  return [one('master', {})];
}

/** The data dir's homeserver.yaml, read and parsed; undefined when there is none. */
export interface HomeserverConfig {
  /** The file's text, as read. */
  text: string;
  /** Its top-level mapping ({} when the YAML is not one). */
  config: Record<string, unknown>;
  paths: HomeserverPaths;
}

/**
 * A small file's text (at most 1 MiB), or undefined when `path` is not a regular
 * file, in one workload command. Throws WorkloadCommandError ("reading <path>
 * exited with status N: ...") when it cannot be read.
 */
export async function readSmallFileIfExists(
  workload: Workload,
  path: string,
): Promise<string | undefined> {
  const out = await runCommand(workload, readSmallFileIfExistsCommand(path), `reading ${path}`);
  return out.startsWith('+') ? out.slice(1) : undefined;
}

/**
 * Reads `<dataDir>/homeserver.yaml` through the workload, in one workload command
 * (readSmallFileIfExists; `configRoot`: see resolveConfigPath). Resolves undefined
 * when the file does not exist; throws BackupError `invalid-config` (from
 * parseHomeserverConfig) when it is not YAML, and the workload's errors when it
 * cannot be read.
 */
export async function readHomeserverConfig(
  workload: Workload,
  dataDir: string,
  configRoot?: string,
): Promise<HomeserverConfig | undefined> {
  const text = await readSmallFileIfExists(workload, posix.join(dataDir, HOMESERVER_CONFIG));
  return text === undefined ? undefined : parseHomeserverConfig(text, dataDir, configRoot);
}

/** readHomeserverConfig for an engine context: its workload, data dir and config root. */
export function readHomeserverConfigOf(ctx: {
  workload: Workload;
  dataDir: string;
  configRoot?: string;
}): Promise<HomeserverConfig | undefined> {
  return readHomeserverConfig(ctx.workload, ctx.dataDir, ctx.configRoot);
}

/** Parses homeserver.yaml's text; BackupError `invalid-config` (with the YAML error) if it is not YAML. */
export function parseHomeserverConfig(
  text: string,
  dataDir: string,
  configRoot?: string,
): HomeserverConfig {
  let parsed: unknown;
  try {
    parsed = parse(text);
  } catch (err) {
    throw new BackupError(
      'invalid-config',
      `${posix.join(dataDir, HOMESERVER_CONFIG)} is not valid YAML (${yamlErrorSummary(err)}): fix it; Synapse cannot start with it either`,
    );
  }
  const config =
    parsed && typeof parsed === 'object' && !Array.isArray(parsed)
      ? (parsed as Record<string, unknown>)
      : {};
  return { text, config, paths: homeserverPaths(config, dataDir, configRoot) };
}
