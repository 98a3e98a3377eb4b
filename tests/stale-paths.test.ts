/**
 * Which homeserver.yaml keys a restore reports as still naming another data dir
 * (src/backup/stale-paths.ts): the manifest's data dir, or one inferred from the
 * restored files when there is no manifest; never paths under the restore's own
 * data dir (as --config-root reads them) or ones the restore put back outside it.
 */
import { parseHomeserverConfig } from '../src/backup/homeserver';
import { describeStaleConfigPaths, staleConfigPathsOf } from '../src/backup/stale-paths';

/** homeserver.yaml as `--generate-config --data-directory <dir>` writes its paths. */
const generated = (dir: string): string =>
  [
    'server_name: "example.org"',
    `pid_file: ${dir}/homeserver.pid`,
    'database:',
    '  name: sqlite3',
    '  args:',
    `    database: ${dir}/homeserver.db`,
    `log_config: "${dir}/example.org.log.config"`,
    `media_store_path: ${dir}/media_store`,
    `signing_key_path: "${dir}/example.org.signing.key"`,
  ].join('\n');

const ITEMS = [
  'homeserver.yaml',
  'example.org.signing.key',
  'example.org.log.config',
  'media_store/local_content',
  'homeserver.db',
];

const check = (
  text: string,
  dataDir: string,
  restored: { backupDataDir?: string; items?: string[]; outside?: string[] },
  configRoot?: string,
) =>
  staleConfigPathsOf(parseHomeserverConfig(text, dataDir, configRoot), dataDir, configRoot, {
    items: ITEMS,
    outside: [],
    ...restored,
  });

test("the manifest's data dir: every key under it, with its path under the new dir", () => {
  const s = check(generated('/old'), '/new', { backupDataDir: '/old' });
  expect(s).toEqual({
    oldDataDir: '/old',
    dataDir: '/new',
    keys: [
      { key: 'media_store_path', path: '/old/media_store', newPath: '/new/media_store' },
      { key: 'database.args.database', path: '/old/homeserver.db', newPath: '/new/homeserver.db' },
      {
        key: 'signing_key_path',
        path: '/old/example.org.signing.key',
        newPath: '/new/example.org.signing.key',
      },
      {
        key: 'log_config',
        path: '/old/example.org.log.config',
        newPath: '/new/example.org.log.config',
      },
      { key: 'pid_file', path: '/old/homeserver.pid', newPath: '/new/homeserver.pid' },
    ],
  });
  expect(describeStaleConfigPaths(s!, 'b1')).toBe(
    'homeserver.yaml in /new still names paths under /old, not /new where backup b1 put their files: media_store_path /old/media_store, database.args.database /old/homeserver.db, signing_key_path /old/example.org.signing.key, log_config /old/example.org.log.config, pid_file /old/homeserver.pid; so a Synapse started on /new would use the files under /old, and the next create would back them up as @external/...',
  );
});

test('no manifest: the old dir is inferred from the restored files; a pid_file elsewhere is not named', () => {
  const text = generated('/srv/old').replace('/srv/old/homeserver.pid', '/run/synapse.pid');
  const s = check(text, '/new', {});
  expect(s?.oldDataDir).toBe('/srv/old');
  expect(s?.keys.map((k) => k.key)).toEqual([
    'media_store_path',
    'database.args.database',
    'signing_key_path',
    'log_config',
  ]);
  // Nothing restored there: no sign of another data dir.
  expect(check(text, '/new', { items: ['homeserver.yaml'] })).toBeUndefined();
});

test('the normal cases: the same dir, relative paths, paths --config-root maps under the data dir', () => {
  expect(check(generated('/data'), '/data', { backupDataDir: '/data' })).toBeUndefined();
  expect(
    check('server_name: x\nmedia_store_path: media\n', '/new', { backupDataDir: '/old' }),
  ).toBeUndefined();
  // A backup of the official image's /data volume mounted at /mnt/a, restored at /mnt/b.
  const mounted = check(generated('/data'), '/mnt/b', { backupDataDir: '/mnt/a' }, '/data');
  expect(mounted).toBeUndefined();
  // Without --config-root the /data paths are elsewhere, and the restored files say so.
  expect(check(generated('/data'), '/mnt/b', { backupDataDir: '/mnt/a' })?.oldDataDir).toBe(
    '/data',
  );
});

test('paths the backup restored outside the data dir (a package layout) are where they belong', () => {
  const text = [
    'server_name: "example.org"',
    'media_store_path: /var/lib/media',
    'signing_key_path: /etc/synapse/example.org.signing.key',
  ].join('\n');
  const outside = ['/var/lib/media/local_content', '/etc/synapse/example.org.signing.key'];
  // The data dir had a stray copy of the key too (the *.key glob took it).
  const items = ['homeserver.yaml', 'example.org.signing.key', 'homeserver.db'];
  expect(check(text, '/new', { backupDataDir: '/old', outside, items })).toBeUndefined();
  // Had the key not been restored there, its path would name the dir of the copy.
  expect(check(text, '/new', { backupDataDir: '/old', items })?.keys).toEqual([
    {
      key: 'signing_key_path',
      path: '/etc/synapse/example.org.signing.key',
      newPath: '/new/example.org.signing.key',
    },
  ]);
});
