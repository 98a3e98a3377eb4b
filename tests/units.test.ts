import { readFileSync } from 'node:fs';
import { defaultBackupId, validateBackupId } from '../src/backup/ids';
import { parseManifest } from '../src/backup/manifest';
import { tarCreateCommand } from '../src/backup/scripts';
import { snapshotMargin } from '../src/backup/space';
import { minimalEnvironment } from '../src/workload/environment';
import { formatBackupTable, formatBytes } from '../src/format';
import { validateFrameLength } from '../src/crypto/esdk';
import { redact } from '../src/errors';
import { ENGINE_VERSION } from '../src/version';

describe('small pieces', () => {
  test("the engine version is package.json's", () => {
    const pkg = JSON.parse(readFileSync(`${__dirname}/../package.json`, 'utf8')) as {
      version: string;
    };
    expect(ENGINE_VERSION).toBe(pkg.version);
  });

  test('default backup ids are the UTC time as YYYYMMDDHHMMSS, as in the seed', () => {
    expect(defaultBackupId(new Date('2026-11-26T07:08:09.123Z'))).toBe('20261126070809');
  });

  test.each(['', '../x', 'a/b', '-lead', 'a..b', 'x'.repeat(101), 'sp ace'])(
    'backup id %j is refused',
    (id) => {
      expect(() => validateBackupId(id)).toThrow(`backup id "${id}" is not valid`);
    },
  );

  test('frame lengths must suit the Python SDK', () => {
    expect(validateFrameLength(4096)).toBe(4096);
    expect(() => validateFrameLength(1000)).toThrow('is not a multiple of 128 bytes');
    expect(() => validateFrameLength(2 ** 31)).toThrow('from 128 to 2147483647');
  });

  test('manifests from a newer engine or of another kind are refused with a reason', () => {
    expect(() => parseManifest('{', 'k')).toThrow('the manifest k is not valid JSON');
    expect(() => parseManifest('{"format":"x","version":1}', 'k')).toThrow(
      'k is not a synapse-backup manifest',
    );
    expect(() => parseManifest('{"format":"synapse-backup-manifest","version":99}', 'k')).toThrow(
      'upgrade the charm',
    );
  });

  test('the data dir is an argument of the tar script, never part of its text', () => {
    const command = tarCreateCommand('/data/$(reboot)', 0, {
      tarNames: ['media_store/$(reboot)/local_content'],
      parents: ['media_store/$(reboot)'],
      database: { path: '/data/$(reboot).db', archiveName: '@external/data/$(reboot).db' },
    });
    expect(command.slice(5)).toEqual([
      '/data/$(reboot)',
      '/data/$(reboot).db',
      '@external/data/$(reboot).db',
      'media_store/$(reboot)/local_content\n',
      'media_store/$(reboot)',
    ]);
    expect(command[2]).not.toContain('reboot');
  });

  test.each([
    // database, volume: the larger of 10% of the database and 64 MiB (at most 10% of the volume)
    [700, 100 * 1024, 70],
    [100, 100 * 1024, 64],
    [1, 8, 0.8],
    [5, 8, 0.8],
    [2000, 4000, 200],
  ])('the snapshot margin of a %j MiB database on a %j MiB volume is %j MiB', (db, vol, mib) => {
    const MiB = 1024 * 1024;
    const margin = snapshotMargin({
      databaseBytes: db * MiB,
      freeBytes: 0,
      volumeBytes: vol * MiB,
    });
    expect(margin / MiB).toBeCloseTo(mib, 3);
  });

  test("workload commands get PATH, locale and HOME, never the engine's secrets", () => {
    const env = minimalEnvironment(
      { TOKEN: 't' },
      {
        PATH: '/bin',
        LANG: 'C.UTF-8',
        HOME: '/root',
        SYNAPSE_BACKUP_PASSPHRASE: 'p',
        AWS_SECRET_ACCESS_KEY: 's',
        JUJU_CONTEXT_ID: 'x',
      },
    );
    expect(env).toEqual({ PATH: '/bin', LANG: 'C.UTF-8', HOME: '/root', TOKEN: 't' });
    expect(minimalEnvironment({}, {}).PATH).toMatch(/\/usr\/bin/);
  });

  test('secrets are redacted from text', () => {
    expect(redact('key=s3cr3t-value and s3cr3t-value', ['s3cr3t-value'])).toBe('key=*** and ***');
  });

  test('the backup table is aligned', () => {
    const table = formatBackupTable([
      {
        backupId: '20261126070809',
        created: '2026-11-26T07:08:09.000Z',
        size: 1536,
        status: 'complete',
        serverName: 'example.org',
      },
      { backupId: 'x', created: '2026-11-26T07:09:00.000Z', size: 10, status: 'incomplete' },
    ]);
    expect(table.split('\n')).toEqual([
      'backup-id       created                   size     status',
      '20261126070809  2026-11-26T07:08:09.000Z  1.5 KiB  complete',
      'x               2026-11-26T07:09:00.000Z  10 B     incomplete',
    ]);
    expect(formatBytes(3 * 1024 ** 3)).toBe('3.0 GiB');
  });

  test('the backup table names, under it, each complete backup that names no server', () => {
    const at = '2026-11-26T07:08:09.000Z';
    const table = formatBackupTable([
      { backupId: 'named', created: at, size: 1, status: 'complete', serverName: 'example.org' },
      { backupId: 'media', created: at, size: 1, status: 'complete' },
      { backupId: 'half', created: at, size: 1, status: 'incomplete' },
    ]);
    expect(table.split('\n').slice(4)).toEqual([
      "backup media names no server: its homeserver.yaml had no server_name, or there was none (Synapse's default paths)",
    ]);
  });
});
