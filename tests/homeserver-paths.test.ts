import {
  homeserverPaths,
  parseHomeserverConfig,
  resolveConfigPath,
} from '../src/backup/homeserver';
import { BackupError } from '../src/errors';

describe('homeserverPaths: where homeserver.yaml says Synapse keeps its data', () => {
  it('defaults to the data dir when the config names nothing', () => {
    const p = homeserverPaths({ server_name: 'example.org' }, '/data');
    expect(p).toEqual({
      configPath: '/data/homeserver.yaml',
      serverName: 'example.org',
      signingKeyPath: '/data/example.org.signing.key',
      mediaStorePath: '/data/media_store',
      databases: [{ engine: 'sqlite3', name: 'master', path: '/data/homeserver.db' }],
      logConfig: undefined,
      pidFile: undefined,
      referencedFiles: [],
    });
  });

  it('follows absolute and relative paths of a package-style install', () => {
    const p = homeserverPaths(
      {
        server_name: 'example.org',
        media_store_path: '/var/lib/matrix-synapse/media',
        signing_key_path: '/etc/matrix-synapse/homeserver.signing.key',
        database: { name: 'sqlite3', args: { database: 'db/homeserver.db' } },
        log_config: '/etc/matrix-synapse/log.yaml',
        pid_file: '/run/matrix-synapse.pid',
        app_service_config_files: ['/etc/matrix-synapse/bridge.yaml', 42],
        tls_certificate_path: '/etc/ssl/synapse.crt',
        macaroon_secret_key_path: '/etc/matrix-synapse/macaroon',
      },
      '/data',
    );
    expect(p.mediaStorePath).toBe('/var/lib/matrix-synapse/media');
    expect(p.signingKeyPath).toBe('/etc/matrix-synapse/homeserver.signing.key');
    expect(p.databases).toEqual([
      { engine: 'sqlite3', name: 'master', path: '/data/db/homeserver.db' },
    ]);
    expect(p.logConfig).toBe('/etc/matrix-synapse/log.yaml');
    expect(p.pidFile).toBe('/run/matrix-synapse.pid');
    expect(p.referencedFiles).toEqual([
      '/etc/matrix-synapse/bridge.yaml',
      '/etc/ssl/synapse.crt',
      '/etc/matrix-synapse/macaroon',
    ]);
  });

  it('knows PostgreSQL is not a file, database_path, several databases and an inline key', () => {
    expect(homeserverPaths({ database: { name: 'psycopg2', args: {} } }, '/d').databases).toEqual([
      { engine: 'psycopg2', name: 'master' },
    ]);
    expect(homeserverPaths({ database_path: '/x/h.db' }, '/d').databases).toEqual([
      { engine: 'sqlite3', name: 'master', path: '/x/h.db' },
    ]);
    expect(
      homeserverPaths(
        { databases: { main: { name: 'psycopg2' }, state: { args: { database: '/s.db' } } } },
        '/d',
      ).databases,
    ).toEqual([
      { engine: 'psycopg2', name: 'main' },
      { engine: 'sqlite3', name: 'state', path: '/s.db' },
    ]);
    expect(
      homeserverPaths({ server_name: 'a', signing_key: 'ed25519 a x' }, '/d').signingKeyPath,
    ).toBeUndefined();
  });

  it('says which file is not YAML', () => {
    expect(() => parseHomeserverConfig('a: [', '/data')).toThrow(BackupError);
    expect(() => parseHomeserverConfig('a: [', '/data')).toThrow(
      /\/data\/homeserver.yaml is not valid YAML/,
    );
    expect(parseHomeserverConfig('- a\n', '/data').config).toEqual({});
    // The yaml package's message quotes the offending line (and some first lines a token).
    for (const text of ['registration_shared_secret: SECRETREG: bad\n', '- a\nb: SECRETREG\n']) {
      let message = '';
      try {
        parseHomeserverConfig(text, '/data');
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message).toMatch(/is not valid YAML \(.+ at line \d+, column \d+\)/);
      expect(message).not.toContain('SECRETREG');
      expect(message).not.toContain('\n');
    }
  });
});

describe('configRoot: a config written for /data, its volume mounted elsewhere', () => {
  it('maps <configRoot>/x to <dataDir>/x before anything else; other paths stay', () => {
    const p = homeserverPaths(
      {
        server_name: 'example.org',
        media_store_path: '/data/media_store',
        signing_key_path: '/data/example.org.signing.key',
        database: { name: 'sqlite3', args: { database: '/data/homeserver.db' } },
        log_config: '/data/example.org.log.config',
        pid_file: '/data/homeserver.pid',
        app_service_config_files: ['/data/bridges/irc.yaml', 'relative.yaml'],
        tls_certificate_path: '/etc/ssl/synapse.crt',
      },
      '/mnt/synapse',
      '/data',
    );
    expect(p).toEqual({
      configPath: '/mnt/synapse/homeserver.yaml',
      serverName: 'example.org',
      signingKeyPath: '/mnt/synapse/example.org.signing.key',
      mediaStorePath: '/mnt/synapse/media_store',
      databases: [{ engine: 'sqlite3', name: 'master', path: '/mnt/synapse/homeserver.db' }],
      logConfig: '/mnt/synapse/example.org.log.config',
      pidFile: '/mnt/synapse/homeserver.pid',
      referencedFiles: [
        '/mnt/synapse/bridges/irc.yaml',
        '/mnt/synapse/relative.yaml',
        '/etc/ssl/synapse.crt',
      ],
    });
  });

  it('matches whole path components, the root itself and unnormalised spellings', () => {
    expect(resolveConfigPath('/data', '/mnt/s', '/data')).toBe('/mnt/s');
    expect(resolveConfigPath('/data/../data/k', '/mnt/s', '/data/')).toBe('/mnt/s/k');
    expect(resolveConfigPath('/database/k', '/mnt/s', '/data')).toBe('/database/k');
    expect(resolveConfigPath('/data/k', '/mnt/s')).toBe('/data/k');
    expect(resolveConfigPath('k', '/mnt/s', '/data')).toBe('/mnt/s/k');
  });

  it('parseHomeserverConfig passes the config root on', () => {
    const c = parseHomeserverConfig('signing_key_path: /data/k\n', '/mnt/s', '/data');
    expect(c.paths.signingKeyPath).toBe('/mnt/s/k');
  });
});
