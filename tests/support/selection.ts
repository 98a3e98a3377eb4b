/** The selection of a data dir on this host, and what a backup of it holds. */
import { spawnSync } from 'node:child_process';
import { promises as fsp, realpathSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { Manifest } from '../../src/backup/manifest';
import { type Selection, readSelection } from '../../src/backup/selection';
import { LocalWorkload } from '../../src/workload/local';
import type { MemoryStore } from './memory-store';
import { memoryEngine } from './memory-engine';
import { tmpDir } from './peers';
import { makeSqliteDb } from './synapse-tree';

/** The selection as create computes it (src/backup/selection.ts), with this host as the workload. */
export function selectionOf(dataDir: string): Promise<Selection> {
  return readSelection(new LocalWorkload(), dataDir);
}

/** The member names of backup `id`'s archive, as GNU tar lists them. */
export async function archiveNames(
  store: MemoryStore,
  dataDir: string,
  id: string,
): Promise<string[]> {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write: (chunk: Buffer, _enc, done) => {
      chunks.push(chunk);
      done();
    },
  });
  await memoryEngine(store, dataDir).decryptTo(id, sink);
  const listed = spawnSync('tar', ['-t', '-f', '-'], { input: Buffer.concat(chunks) });
  if (listed.status !== 0) throw new Error(`tar -t: ${listed.stderr.toString()}`);
  return listed.stdout.toString().trim().split('\n');
}

/** Backup `id`'s manifest, parsed. */
export async function manifestOf(store: MemoryStore, id: string): Promise<Manifest> {
  return JSON.parse(await store.getText(store.key(`${id}.manifest.json`))) as Manifest;
}

/** Writes `file` (and its directories). */
export async function write(file: string, data: string | Buffer, mode = 0o644): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  await fsp.writeFile(file, data, { mode });
}

/**
 * A package-style layout (issue #15): only homeserver.yaml in the data dir; the
 * signing key, log config and an app service file in `etc`, the media in `media`,
 * the SQLite database in `var`, all under one real (symlink-free) temporary root.
 */
export async function packageLayout() {
  const root = realpathSync((await tmpDir('package-layout')).path);
  const dataDir = path.join(root, 'data');
  const etc = path.join(root, 'etc');
  const media = path.join(root, 'media');
  const db = path.join(root, 'var/homeserver.db');
  await write(
    path.join(dataDir, 'homeserver.yaml'),
    [
      'server_name: "example.org"',
      `media_store_path: ${media}`,
      `signing_key_path: ${etc}/example.org.signing.key`,
      `log_config: ${etc}/log.config`,
      `app_service_config_files: [${etc}/bridge.yaml]`,
      `database: {name: sqlite3, args: {database: ${db}}}`,
      '',
    ].join('\n'),
  );
  await write(path.join(etc, 'example.org.signing.key'), 'ed25519 a_pkg c2VlZA\n', 0o600);
  await write(path.join(etc, 'log.config'), 'version: 1\n');
  await write(path.join(etc, 'bridge.yaml'), 'id: bridge\n');
  await write(path.join(etc, 'other.conf'), 'not selected\n');
  await write(path.join(media, 'local_content/ab/cd/m1'), 'media one');
  await write(path.join(media, 'local_thumbnails/ab/cd/t1'), 'thumb one');
  await write(path.join(media, 'remote_content/x/r1'), 'remote');
  await fsp.mkdir(path.dirname(db), { recursive: true });
  makeSqliteDb(db);
  return { root, dataDir, etc, media, db };
}
