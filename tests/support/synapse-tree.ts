import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';

/** Files Synapse's backup guide says to keep, plus the caches it says to skip. */
export async function makeSynapseTree(
  root: string,
  options: { mediaFiles?: number; bigFileBytes?: number } = {},
): Promise<void> {
  const w = async (rel: string, data: string | Buffer, mode = 0o644) => {
    const file = path.join(root, rel);
    await fsp.mkdir(path.dirname(file), { recursive: true });
    await fsp.writeFile(file, data, { mode });
    await fsp.chmod(file, mode);
  };
  await w('homeserver.yaml', 'server_name: "example.org"\ndatabase:\n  name: sqlite3\n');
  await w('example.org.signing.key', 'ed25519 a_abcd SGVsbG8gd29ybGQ\n', 0o600);
  await w('example.org.log.config', 'version: 1\n');
  makeSqliteDb(path.join(root, 'homeserver.db'));
  const media = options.mediaFiles ?? 20;
  for (let i = 0; i < media; i++) {
    await w(`media_store/local_content/ab/cd/file${i}`, randomBytes(1000 + i * 37));
  }
  await w('media_store/local_content/sp/with space and ünïcødé', randomBytes(333));
  await w('media_store/local_content/sp/new\nline', 'newline in name');
  await w('media_store/local_thumbnails/ab/cd/thumb 1', randomBytes(500), 0o640);
  if (options.bigFileBytes) {
    await w('media_store/local_content/big/blob', randomBytes(options.bigFileBytes));
  }
  await fsp.symlink('../ab/cd/file0', path.join(root, 'media_store/local_content/sp/link'));
  // Caches that must never be backed up.
  await w('media_store/remote_content/x/y', 'remote');
  await w('media_store/remote_thumbnails/x/y', 'remote thumb');
  await w('media_store/url_cache/x', 'url cache');
  await w('media_store/url_cache_thumbnails/x', 'url cache thumb');
  // Fixed mtimes so a restore that loses them is caught.
  const past = new Date('2024-02-03T04:05:06Z');
  for (const rel of ['homeserver.yaml', 'media_store/local_content/ab/cd/file0']) {
    await fsp.utimes(path.join(root, rel), past, past);
  }
}

/** A real SQLite database with a few rows and one-time keys (which a restore must remove). */
export function makeSqliteDb(file: string): void {
  const script = [
    'import sqlite3, sys, os',
    'db = sqlite3.connect(sys.argv[1])',
    'db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB)")',
    'db.executemany("INSERT INTO events (body) VALUES (?)", [(os.urandom(200),) for _ in range(300)])',
    'db.execute("CREATE TABLE e2e_one_time_keys_json (user_id TEXT, key_json TEXT)")',
    'db.executemany("INSERT INTO e2e_one_time_keys_json VALUES (?, ?)", [("@a:example.org", "{}")] * 5)',
    'db.commit()',
  ].join('\n');
  const out = spawnSync('python3', ['-c', script, file]);
  if (out.status !== 0) throw new Error(`cannot create ${file}: ${out.stderr.toString()}`);
}

/** Rows in the database's tables, and SQLite's integrity check. */
export function inspectSqliteDb(file: string): {
  events: number;
  oneTimeKeys: number;
  integrity: string;
} {
  const script = [
    'import json, sqlite3, sys',
    'db = sqlite3.connect(sys.argv[1])',
    'print(json.dumps({',
    '  "events": db.execute("SELECT count(*) FROM events").fetchone()[0],',
    '  "oneTimeKeys": db.execute("SELECT count(*) FROM e2e_one_time_keys_json").fetchone()[0],',
    '  "integrity": db.execute("PRAGMA integrity_check").fetchone()[0],',
    '}))',
  ].join('\n');
  const out = spawnSync('python3', ['-c', script, file]);
  if (out.status !== 0) throw new Error(`cannot inspect ${file}: ${out.stderr.toString()}`);
  return JSON.parse(out.stdout.toString()) as ReturnType<typeof inspectSqliteDb>;
}

export const SKIPPED_PATHS = [
  'media_store/remote_content',
  'media_store/remote_thumbnails',
  'media_store/url_cache',
  'media_store/url_cache_thumbnails',
];

export interface TreeEntry {
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  mtimeMs?: number;
  sha256?: string;
  target?: string;
}

/** Every entry below `root` with type, mode, mtime (files) and content hash or link target. */
export async function snapshotTree(root: string): Promise<Map<string, TreeEntry>> {
  const out = new Map<string, TreeEntry>();
  const walk = async (rel: string): Promise<void> => {
    const entries = await fsp.readdir(path.join(root, rel), { withFileTypes: true });
    for (const entry of entries) {
      const childRel = rel ? `${rel}/${entry.name}` : entry.name;
      const full = path.join(root, childRel);
      const st = await fsp.lstat(full);
      if (st.isSymbolicLink()) {
        out.set(childRel, { type: 'symlink', mode: 0, target: await fsp.readlink(full) });
      } else if (st.isDirectory()) {
        out.set(childRel, { type: 'dir', mode: st.mode & 0o7777 });
        await walk(childRel);
      } else {
        const sha256 = createHash('sha256')
          .update(await fsp.readFile(full))
          .digest('hex');
        out.set(childRel, {
          type: 'file',
          mode: st.mode & 0o7777,
          mtimeMs: Math.floor(st.mtimeMs / 1000) * 1000,
          sha256,
        });
      }
    }
  };
  await walk('');
  return out;
}

/** One hash over the whole tree snapshot: equal trees, equal hashes. */
export async function treeHash(root: string): Promise<string> {
  const snap = await snapshotTree(root);
  const h = createHash('sha256');
  for (const key of [...snap.keys()].sort()) h.update(`${JSON.stringify([key, snap.get(key)])}\n`);
  return h.digest('hex');
}

/** The snapshot without the paths a backup skips. */
export function withoutSkipped(snap: Map<string, TreeEntry>): Map<string, TreeEntry> {
  const out = new Map<string, TreeEntry>();
  for (const [key, value] of snap) {
    if (SKIPPED_PATHS.some((p) => key === p || key.startsWith(`${p}/`))) continue;
    out.set(key, value);
  }
  return out;
}

/**
 * A data dir as `python -m synapse.app.homeserver --generate-config --data-directory
 * <root>` leaves it (Synapse 1.163): homeserver.yaml naming every path absolutely
 * under `root` (pid_file, the database's args.database, log_config, media_store_path,
 * signing_key_path; the text as the generator writes them), plus a SQLite database
 * and one medium, as after a first upload.
 */
export async function makeGeneratedSynapseTree(root: string): Promise<void> {
  await fsp.mkdir(path.join(root, 'media_store/local_content/ab/cd'), { recursive: true });
  await fsp.writeFile(
    path.join(root, 'homeserver.yaml'),
    [
      'server_name: "example.org"',
      `pid_file: ${root}/homeserver.pid`,
      'database:',
      '  name: sqlite3',
      '  args:',
      `    database: ${root}/homeserver.db`,
      `log_config: "${root}/example.org.log.config"`,
      `media_store_path: ${root}/media_store`,
      'report_stats: false',
      `signing_key_path: "${root}/example.org.signing.key"`,
      '',
    ].join('\n'),
  );
  await fsp.writeFile(path.join(root, 'example.org.signing.key'), 'ed25519 a_gen c2VlZA\n', {
    mode: 0o600,
  });
  await fsp.writeFile(path.join(root, 'example.org.log.config'), 'version: 1\n');
  await fsp.writeFile(path.join(root, 'media_store/local_content/ab/cd/m1'), 'media one');
  makeSqliteDb(path.join(root, 'homeserver.db'));
}

/** The keys makeGeneratedSynapseTree's homeserver.yaml names paths with, in its order. */
export const GENERATED_PATH_KEYS = [
  'media_store_path',
  'database.args.database',
  'signing_key_path',
  'log_config',
  'pid_file',
];
