/**
 * Issue #15, "the selection follows homeserver.yaml": media_store_path, the SQLite
 * database path, signing_key_path, log_config and the files homeserver.yaml
 * references are archived (and restored) where it says; with PostgreSQL the
 * result and the manifest say the database is not in the backup; a path it names
 * that does not exist is left out and named (a missing signing key is an error).
 * The engine runs on this host (local workload) with the in-memory store.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { MemoryStore } from './support/memory-store';
import { memoryEngine } from './support/memory-engine';
import { tmpDir } from './support/peers';
import type { ExecOptions, ExecProcess } from '../src/workload/workload';
import { LocalWorkload } from '../src/workload/local';
import { archiveNames, manifestOf } from './support/selection';
import { inspectSqliteDb, makeSqliteDb } from './support/synapse-tree';

async function write(file: string, data: string | Buffer, mode = 0o644): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  await fsp.writeFile(file, data, { mode });
}

describe('the selection follows homeserver.yaml', () => {
  test('paths it sets inside the data dir: archived under their names, restored there; the default media_store is not taken', async () => {
    const store = new MemoryStore();
    const dir = (await tmpDir('selection-config')).path;
    await write(
      path.join(dir, 'homeserver.yaml'),
      [
        'server_name: "example.org"',
        'media_store_path: media',
        'signing_key_path: keys/example.org.signing.key',
        'log_config: conf/log.config',
        'database:',
        '  name: sqlite3',
        '  args:',
        '    database: db/synapse.db',
        'app_service_config_files: [conf/bridge.yaml]',
        '',
      ].join('\n'),
    );
    await write(path.join(dir, 'keys/example.org.signing.key'), 'ed25519 a_xyz c2VlZA\n', 0o600);
    await write(path.join(dir, 'conf/log.config'), 'version: 1\n');
    await write(path.join(dir, 'conf/bridge.yaml'), 'id: bridge\n');
    await write(path.join(dir, 'conf/unrelated.txt'), 'not selected\n');
    await fsp.mkdir(path.join(dir, 'db'));
    makeSqliteDb(path.join(dir, 'db/synapse.db'));
    await write(path.join(dir, 'media/local_content/ab/cd/m1'), 'media one');
    await write(path.join(dir, 'media/local_thumbnails/ab/cd/t1'), 'thumb one');
    await write(path.join(dir, 'media/remote_content/x/r1'), 'remote');
    // Not where homeserver.yaml says the media are: not selected.
    await write(path.join(dir, 'media_store/local_content/old'), 'stale');

    const created = await memoryEngine(store, dir).create({ id: 'c' });
    expect(created.missing).toBeUndefined();
    expect(created.notIncluded).toBeUndefined();
    expect((await archiveNames(store, dir, 'c')).sort()).toEqual(
      [
        './',
        'conf/',
        'conf/bridge.yaml',
        'conf/log.config',
        'db/',
        'db/synapse.db',
        'homeserver.yaml',
        'keys/',
        'keys/example.org.signing.key',
        'media/',
        'media/local_content/',
        'media/local_content/ab/',
        'media/local_content/ab/cd/',
        'media/local_content/ab/cd/m1',
        'media/local_thumbnails/',
        'media/local_thumbnails/ab/',
        'media/local_thumbnails/ab/cd/',
        'media/local_thumbnails/ab/cd/t1',
      ].sort(),
    );
    const manifest = await manifestOf(store, 'c');
    expect(manifest).toMatchObject({
      version: 1,
      signingKeyId: 'ed25519:a_xyz',
      items: [
        'homeserver.yaml',
        'keys/example.org.signing.key',
        'conf/log.config',
        'conf/bridge.yaml',
        'media/local_content',
        'media/local_thumbnails',
        'db/synapse.db',
      ],
      databases: ['db/synapse.db'],
    });

    // Everything selected changes or goes; restore puts each back where homeserver.yaml says.
    await fsp.rm(path.join(dir, 'keys/example.org.signing.key'));
    await fsp.writeFile(path.join(dir, 'conf/log.config'), 'changed\n');
    await fsp.rm(path.join(dir, 'media/local_content'), { recursive: true });
    await fsp.rm(path.join(dir, 'db/synapse.db'));
    const restored = await memoryEngine(store, dir).restore({ id: 'c' });
    expect(restored.oneTimeKeysRemoved).toBe(5);
    expect(await fsp.readFile(path.join(dir, 'keys/example.org.signing.key'), 'utf8')).toBe(
      'ed25519 a_xyz c2VlZA\n',
    );
    expect(await fsp.readFile(path.join(dir, 'conf/log.config'), 'utf8')).toBe('version: 1\n');
    expect(await fsp.readFile(path.join(dir, 'media/local_content/ab/cd/m1'), 'utf8')).toBe(
      'media one',
    );
    expect(inspectSqliteDb(path.join(dir, 'db/synapse.db'))).toEqual({
      events: 300,
      oneTimeKeys: 0,
      integrity: 'ok',
    });
    // Not selected, not touched.
    expect(await fsp.readFile(path.join(dir, 'conf/unrelated.txt'), 'utf8')).toBe('not selected\n');
    expect(await fsp.readFile(path.join(dir, 'media/remote_content/x/r1'), 'utf8')).toBe('remote');
    expect(await fsp.readFile(path.join(dir, 'media_store/local_content/old'), 'utf8')).toBe(
      'stale',
    );
  });

  test('PostgreSQL: the result and the manifest say the database is not in the backup, and what backs it up', async () => {
    const store = new MemoryStore();
    const dir = (await tmpDir('selection-postgres')).path;
    await write(
      path.join(dir, 'homeserver.yaml'),
      'server_name: "example.org"\ndatabase:\n  name: psycopg2\n  args:\n    host: db\n',
    );
    await write(path.join(dir, 'example.org.signing.key'), 'ed25519 a_pg c2VlZA\n');
    // A stray SQLite file is not the server's database: not archived.
    makeSqliteDb(path.join(dir, 'homeserver.db'));
    const said = 'the master database (PostgreSQL) is not in this backup: back it up with pg_dump';
    const created = await memoryEngine(store, dir).create({ id: 'pg' });
    expect(created.notIncluded).toEqual([said]);
    expect(await manifestOf(store, 'pg')).toMatchObject({ notIncluded: [said], databases: [] });
    expect((await archiveNames(store, dir, 'pg')).sort()).toEqual([
      './',
      'example.org.signing.key',
      'homeserver.yaml',
    ]);

    // Its restore would leave the live database as it is: refused unless forced.
    await write(path.join(dir, 'media_store/local_content/ab/new'), 'uploaded after the backup');
    await expect(memoryEngine(store, dir).restore({ id: 'pg' })).rejects.toMatchObject({
      code: 'not-included',
      message: `backup pg does not hold everything Synapse needs (${said}); restoring it alone over the live database would delete media that database still refers to; nothing was changed`,
      remedy: {
        kind: 'run-again',
        option: 'force',
        when: 'once the database is restored from its dump of the same time',
      },
    });
    expect(await fsp.readFile(path.join(dir, 'media_store/local_content/ab/new'), 'utf8')).toBe(
      'uploaded after the backup',
    );
    const restored = await memoryEngine(store, dir).restore({ id: 'pg', force: true });
    expect(restored.notIncluded).toEqual([said]);
  });

  test('a signing_key_path that does not exist fails the create (nothing stored); a missing log_config is left out and named', async () => {
    const store = new MemoryStore();
    const dir = (await tmpDir('selection-missing')).path;
    await write(
      path.join(dir, 'homeserver.yaml'),
      'server_name: "example.org"\nsigning_key_path: /nonexistent/example.org.signing.key\n',
    );
    await expect(memoryEngine(store, dir).create({ id: 'nokey' })).rejects.toMatchObject({
      code: 'invalid-config',
      message:
        "homeserver.yaml's signing_key_path /nonexistent/example.org.signing.key does not exist: a backup without the signing key could not restore this server's identity",
      remedy: {
        kind: 'advice',
        text: 'put the signing key there, or correct signing_key_path, then back up again',
      },
    });
    expect(store.keys()).toEqual([]);

    await write(
      path.join(dir, 'homeserver.yaml'),
      `server_name: "example.org"\nlog_config: ${dir}/gone.log.config\ntls_certificate_path: tls/cert.pem\n`,
    );
    await write(path.join(dir, 'example.org.signing.key'), 'ed25519 a_x c2VlZA\n');
    const created = await memoryEngine(store, dir).create({ id: 'nolog' });
    const said = [
      `${dir}/gone.log.config (homeserver.yaml's log_config) does not exist: not in this backup`,
      `${dir}/tls/cert.pem (homeserver.yaml's tls_certificate_path) does not exist: not in this backup`,
    ];
    expect(created.missing).toEqual(said);
    expect(await manifestOf(store, 'nolog')).toMatchObject({ missing: said });
  });

  test('a new server: media_store_path named but no upload yet (no local_content): no warning', async () => {
    const store = new MemoryStore();
    const dir = (await tmpDir('selection-new')).path;
    await write(
      path.join(dir, 'homeserver.yaml'),
      `server_name: "example.org"\nmedia_store_path: ${dir}/media_store\n`,
    );
    await write(path.join(dir, 'example.org.signing.key'), 'ed25519 a_x c2VlZA\n');
    await fsp.mkdir(path.join(dir, 'media_store'));
    const created = await memoryEngine(store, dir).create({ id: 'new' });
    expect(created.missing).toBeUndefined();
    expect(created.files).toBe(2);
  });

  test('create reads homeserver.yaml once: the identity and the selection are of the same text', async () => {
    const store = new MemoryStore();
    const dir = (await tmpDir('selection-read-once')).path;
    const config = path.join(dir, 'homeserver.yaml');
    await write(config, `server_name: "example.org"\nmedia_store_path: ${dir}/media_store\n`);
    await write(path.join(dir, 'example.org.signing.key'), 'ed25519 a_once c2VlZA\n');
    await write(path.join(dir, 'media_store/local_content/ab/m1'), 'media');
    // The commands create runs, as this host runs them: which of them read homeserver.yaml.
    const reads: string[][] = [];
    class CountingWorkload extends LocalWorkload {
      override exec(options: ExecOptions): ExecProcess {
        const reading = options.command.join(' ').includes('head -c');
        if (reading && options.command.at(-1) === config) {
          reads.push(options.command);
        }
        return super.exec(options);
      }
    }
    const engine = memoryEngine(store, dir, { workload: new CountingWorkload() });
    const created = await engine.create({ id: 'once' });
    expect(created.files).toBe(3);
    expect(reads).toHaveLength(1);
    const manifest = await manifestOf(store, 'once');
    expect(manifest).toMatchObject({ serverName: 'example.org', signingKeyId: 'ed25519:a_once' });
    expect(manifest.items).toEqual([
      'example.org.signing.key',
      'homeserver.yaml',
      'media_store/local_content',
    ]);
  });

  test('a data dir that does not exist: a clear error before anything is stored', async () => {
    const store = new MemoryStore();
    const dir = path.join((await tmpDir('selection-gone')).path, 'data');
    await expect(memoryEngine(store, dir).create({ id: 'gone' })).rejects.toMatchObject({
      code: 'empty-selection',
      message: `nothing to back up: ${dir} does not exist in the workload`,
    });
    expect(store.keys()).toEqual([]);
  });

  test('several SQLite databases: a clear error', async () => {
    const store = new MemoryStore();
    const dir = (await tmpDir('selection-two-db')).path;
    await write(
      path.join(dir, 'homeserver.yaml'),
      'server_name: "example.org"\ndatabases:\n  one: {name: sqlite3, args: {database: a.db}}\n  two: {name: sqlite3, args: {database: b.db}}\n',
    );
    await expect(memoryEngine(store, dir).create({ id: 'two' })).rejects.toMatchObject({
      code: 'invalid-config',
      message: 'homeserver.yaml names 2 SQLite databases (one, two): a backup holds one',
    });
  });
});
