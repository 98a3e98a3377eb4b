/**
 * Issue #15, "restore replaces only what the backup selects": an in-place restore
 * swaps the backup's items (homeserver.yaml, the signing key, homeserver.db, the
 * local media folders) and nothing else. What the backup does not select stays:
 * homeserver.log, an operator's own files, the remote media caches. A database's
 * -wal, -shm and -journal go with it: an old WAL beside a restored database
 * would be replayed into it.
 */
import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { MemoryStore } from './support/memory-store';
import { memoryEngine, memorySynapseDir } from './support/memory-engine';
import { inspectSqliteDb, snapshotTree, withoutSkipped } from './support/synapse-tree';

/** Runs Python's sqlite3 on `db`: `code` with `db` open as `c`. */
function sqlite(db: string, code: string): string {
  const out = spawnSync('python3', [
    '-c',
    `import os, sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n${code}`,
    db,
  ]);
  if (out.status !== 0) throw new Error(`python3: ${out.stderr.toString()}`);
  return out.stdout.toString();
}

/**
 * Writes `rows` events into `db` in WAL mode and leaves without a checkpoint (as a
 * Synapse killed mid-run does): the rows are only in homeserver.db-wal.
 */
function leaveWalBehind(db: string, rows: number): void {
  sqlite(
    db,
    [
      "c.execute('PRAGMA journal_mode=WAL')",
      "c.execute('PRAGMA wal_autocheckpoint=0')",
      `c.executemany('INSERT INTO events (body) VALUES (?)', [(os.urandom(300),) for _ in range(${rows})])`,
      'c.commit()',
      'os._exit(0)',
    ].join('\n'),
  );
}

describe('an in-place restore replaces only what the backup selects', () => {
  async function setUp() {
    const store = new MemoryStore();
    const dataDir = await memorySynapseDir('restore-selection', { mediaFiles: 3 });
    const db = path.join(dataDir, 'homeserver.db');
    // The database is in WAL mode when backed up, as Synapse's is.
    sqlite(db, "c.execute('PRAGMA journal_mode=WAL')");
    const backedUp = withoutSkipped(await snapshotTree(dataDir));
    await memoryEngine(store, dataDir).create({ id: 'b' });
    // After the backup: Synapse's log, an operator's file, remote media, new local media,
    // a changed config, and database writes that sit in the WAL.
    await fsp.writeFile(path.join(dataDir, 'homeserver.log'), 'log line\n');
    await fsp.writeFile(path.join(dataDir, 'operator-notes.txt'), 'mine\n');
    await fsp.writeFile(path.join(dataDir, 'media_store/remote_content/x/z'), 'fetched later');
    await fsp.writeFile(path.join(dataDir, 'media_store/local_content/new'), 'after backup');
    await fsp.writeFile(
      path.join(dataDir, 'homeserver.yaml'),
      'server_name: "example.org"\n# v2\n',
    );
    leaveWalBehind(db, 200);
    // (Not opened again here: closing the last connection would checkpoint the WAL away.)
    expect((await fsp.stat(`${db}-wal`)).size).toBeGreaterThan(200 * 300);
    const kept = ['homeserver.log', 'operator-notes.txt', 'media_store/remote_content/x/z'];
    const keptBefore = await Promise.all(
      kept.map((f) => fsp.readFile(path.join(dataDir, f), 'utf8')),
    );
    return { store, dataDir, db, backedUp, kept, keptBefore };
  }

  test('homeserver.log, an operator file and remote_content stay; homeserver.db is replaced and the old -wal/-shm/-journal go', async () => {
    const { store, dataDir, db, backedUp, kept, keptBefore } = await setUp();
    // A stale rollback journal too: SQLite would play it back into the restored database.
    await fsp.writeFile(`${db}-journal`, 'stale journal');
    const restored = await memoryEngine(store, dataDir).restore({ id: 'b' });
    expect(restored.oneTimeKeysRemoved).toBe(5);
    const after = await snapshotTree(dataDir);
    // The old database's companions went with it (the restored one's own, made by the
    // one-time keys' removal, were checkpointed away when it closed).
    for (const s of ['-wal', '-shm', '-journal'])
      expect(after.has(`homeserver.db${s}`)).toBe(false);
    expect(inspectSqliteDb(db)).toEqual({ events: 300, oneTimeKeys: 0, integrity: 'ok' });
    // Everything the backup selects is back as it was; nothing else changed.
    const selected = withoutSkipped(after);
    for (const f of ['homeserver.log', 'operator-notes.txt']) selected.delete(f);
    selected.delete('homeserver.db');
    backedUp.delete('homeserver.db');
    expect(selected).toEqual(backedUp);
    expect(await Promise.all(kept.map((f) => fsp.readFile(path.join(dataDir, f), 'utf8')))).toEqual(
      keptBefore,
    );
    expect(after.has('media_store/remote_thumbnails/x/y')).toBe(true);
    expect(after.has('media_store/url_cache/x')).toBe(true);
    expect((await fsp.readdir(dataDir)).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  test('keep-previous keeps exactly the replaced items, with the old database and its WAL', async () => {
    const { store, dataDir, kept } = await setUp();
    const restored = await memoryEngine(store, dataDir).restore({ id: 'b', keepPrevious: true });
    const previous = restored.previousPath!;
    const names = [...(await snapshotTree(previous)).keys()].sort();
    expect(names.filter((n) => !n.includes('/'))).toEqual([
      'example.org.log.config',
      'example.org.signing.key',
      'homeserver.db',
      'homeserver.db-shm',
      'homeserver.db-wal',
      'homeserver.yaml',
      'media_store',
    ]);
    expect(names.filter((n) => /^media_store\/[^/]+$/.test(n))).toEqual([
      'media_store/local_content',
      'media_store/local_thumbnails',
    ]);
    expect(names).toContain('media_store/local_content/new');
    for (const f of kept) expect(names).not.toContain(f);
    // The kept database with its WAL is the live one of before the restore, whole.
    expect(inspectSqliteDb(path.join(previous, 'homeserver.db'))).toMatchObject({
      events: 500,
      integrity: 'ok',
    });
  });
});
