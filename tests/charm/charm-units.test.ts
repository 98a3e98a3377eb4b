import { resultKeyForId } from '../../src/charm/actions/list-backups';
import { decodeCaChain, decodeRelationValue } from '../../src/charm/backup-setup';
import { formatBytes, formatTable, ProgressReporter } from '../../src/charm/format';
import { loadOverrides } from '../../src/charm/overrides';
import { actionFailureMessage } from '../../src/charm/actions/context';
import { charmRemedy, describeForCharm } from '../../src/charm/remedy';
import { BackupError, type Remedy } from '../../src/errors';
import { cliRemedy } from '../../src/cli/remedy';
import { synapseLayer } from '../../src/charm/synapse';
import { isValidActionKeySegment } from '../../src/juju/hook-tools';

describe('ProgressReporter', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('logs every progress event and a heartbeat whenever 5 s pass without one', async () => {
    const logged: number[] = [];
    const messages: string[] = [];
    const reporter = new ProgressReporter(async (m) => {
      logged.push(Date.now());
      messages.push(m);
    }, 'create-backup');
    const start = Date.now();
    reporter.start();
    // The engine reports every 2 s for 10 s, then stalls (S3 slow) for 20 s.
    for (let t = 2000; t <= 10_000; t += 2000) {
      await jest.advanceTimersByTimeAsync(2000);
      reporter.onProgress({
        phase: 'create',
        bytes: t * 1000,
        bytesPerSecond: 1e6,
        elapsedSeconds: t / 1000,
      });
    }
    await jest.advanceTimersByTimeAsync(20_000);
    reporter.stop();
    const gaps = [logged[0] - start, ...logged.slice(1).map((t, i) => t - logged[i])];
    expect(Math.max(...gaps)).toBeLessThanOrEqual(5000);
    expect(messages[0]).toBe('backed up 1.9 MiB so far (976.6 KiB/s, 2 s)');
    expect(messages.at(-1)).toMatch(
      /^backed up 9\.5 MiB so far \(976\.6 KiB\/s, 10 s\); still working \(\d+ s\)$/,
    );
    const count = messages.length;
    await jest.advanceTimersByTimeAsync(20_000);
    expect(messages.length).toBe(count);
  });
});

describe('list-backups result keys', () => {
  it('keeps ids that are valid keys and maps the others to distinct valid keys', () => {
    expect(resultKeyForId('20261126070000')).toBe('20261126070000');
    expect(resultKeyForId('nightly-1')).toBe('nightly-1');
    const ids = ['Weekly_1', 'weekly_1', 'weekly.1', 'A', 'a', '_', 'x-'];
    const keys = ids.map(resultKeyForId);
    expect(new Set(keys).size).toBe(ids.length);
    for (const k of keys) expect([k, isValidActionKeySegment(k)]).toEqual([k, true]);
    expect(resultKeyForId('Weekly_1')).toMatch(/^weekly-1-[0-9a-f]{8}$/);
  });
});

describe('formatting', () => {
  it('aligns table columns and formats sizes', () => {
    expect(
      formatTable(
        ['id', 'size'],
        [
          ['1', '10 B'],
          ['123456', '1.0 KiB'],
        ],
      ),
    ).toBe('id      size\n1       10 B\n123456  1.0 KiB');
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(5 * 1024 ** 3)).toBe('5.0 GiB');
  });
});

describe('s3 relation values', () => {
  it('accepts JSON-encoded and raw values', () => {
    expect(decodeRelationValue('"bucket"')).toBe('bucket');
    expect(decodeRelationValue('bucket')).toBe('bucket');
    expect(
      decodeRelationValue('["-----BEGIN CERTIFICATE-----\\nA\\n-----END CERTIFICATE-----"]'),
    ).toEqual(['-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----']);
  });

  it('takes s3-ca-chain as PEM or base64 PEM', () => {
    const pem = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';
    expect(decodeCaChain(pem)).toBe(pem);
    expect(decodeCaChain(Buffer.from(pem).toString('base64'))).toBe(pem);
    expect(() => decodeCaChain('not a cert')).toThrow(/s3-ca-chain is not a PEM certificate/);
  });
});

describe('remedies in the charm', () => {
  const relation = { kind: 'relation', provider: 'my-s3' } as const;

  it.each<[Remedy, string, string, string]>([
    [
      { kind: 'set', setting: 's3-ca-chain', how: 'to the CA that signed it' },
      'set s3-ca-chain to the CA that signed it',
      'set tls-ca-chain on my-s3 to the CA that signed it: juju config my-s3 tls-ca-chain=<base64 PEM>',
      'pass --ca-file to the CA that signed it',
    ],
    [
      { kind: 'set', setting: 's3-uri-style', value: 'path', how: 'if it must' },
      'set s3-uri-style=path if it must',
      'set s3-uri-style=path on my-s3 if it must: juju config my-s3 s3-uri-style=path',
      'pass --uri-style path if it must',
    ],
    [
      { kind: 'set', setting: 's3-bucket' },
      'set s3-bucket',
      'set bucket on my-s3: juju config my-s3 bucket=<name>',
      'pass --bucket',
    ],
    [
      { kind: 'set', setting: 's3-region', how: "to the bucket's region" },
      "set s3-region to the bucket's region",
      "set region on my-s3 to the bucket's region: juju config my-s3 region=<region>",
      "pass --region to the bucket's region",
    ],
    [
      { kind: 'set', setting: 's3-endpoint' },
      'set s3-endpoint',
      'set endpoint on my-s3: juju config my-s3 endpoint=<url>',
      'pass --endpoint',
    ],
    [
      { kind: 'set', setting: 's3-path' },
      'set s3-path',
      'set path on my-s3: juju config my-s3 path=<folder>',
      'pass --prefix',
    ],
    [
      { kind: 'set', setting: 's3-credentials' },
      'set s3-credentials',
      'run juju run my-s3/leader sync-s3-credentials access-key=<key> secret-key=<secret>',
      'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY',
    ],
    [
      { kind: 'set', setting: 'backup-passphrase' },
      'set backup-passphrase',
      'set backup-passphrase',
      'set SYNAPSE_BACKUP_PASSPHRASE or --passphrase-file',
    ],
    [
      { kind: 'run', operation: 'prune', why: 'or abort it with your S3 tools' },
      'run prune-backups or abort it with your S3 tools',
      'run prune-backups or abort it with your S3 tools',
      'run synapse-backup prune or abort it with your S3 tools',
    ],
    [
      { kind: 'decrypt', id: 'b1' },
      "restore another backup (list-backups), or take this one's files out by hand with the synapse-backup CLI: synapse-backup decrypt --id b1 --allow-no-manifest > b1.tar",
      "restore another backup (list-backups), or take this one's files out by hand with the synapse-backup CLI: synapse-backup decrypt --id b1 --allow-no-manifest > b1.tar",
      'synapse-backup decrypt --id b1 --allow-no-manifest > b1.tar writes its plain tar (outside paths as @external/<absolute path>) to put back by hand; or restore another backup (synapse-backup list)',
    ],
    [
      { kind: 'data-dir' },
      'the charm writes homeserver.yaml once server-name is set and the synapse container is up (see the unit status); to bring a server back from a backup, run restore-backup',
      'the charm writes homeserver.yaml once server-name is set and the synapse container is up (see the unit status); to bring a server back from a backup, run restore-backup',
      "pass --data-dir the directory that holds Synapse's homeserver.yaml",
    ],
    [
      { kind: 'stop-process', pids: [4242, 4250] },
      'wait for them to finish, or stop them with `juju ssh --container synapse <unit> kill 4242 4250`, then run the action again',
      'wait for them to finish, or stop them with `juju ssh --container synapse <unit> kill 4242 4250`, then run the action again',
      'wait for them to finish, or stop them with `kill 4242 4250` where the workload runs (this host; with --pebble-socket, the container Pebble runs in), then run again',
    ],
  ])('%j: from config, from the relation, in the CLI', (remedy, config, fromRelation, cli) => {
    expect(charmRemedy(remedy)).toBe(config);
    expect(charmRemedy(remedy, { kind: 'config' })).toBe(config);
    expect(charmRemedy(remedy, relation)).toBe(fromRelation);
    expect(cliRemedy(remedy)).toBe(cli);
  });

  it("names the unit in a stop-process remedy's juju ssh command", () => {
    const err = new BackupError('busy', '/data is in use by processes 4242 (tar) in the workload', {
      remedy: { kind: 'stop-process', pids: [4242] },
    });
    expect(actionFailureMessage('restore-backup', err, 'synapse/3')).toBe(
      '/data is in use by processes 4242 (tar) in the workload; wait for it to finish, or stop it with `juju ssh --container synapse synapse/3 kill 4242`, then run the action again',
    );
  });

  it('describes an error as its message, then the remedy for where the settings come from', () => {
    const err = new BackupError('s3-bucket', 'bucket "b" does not exist at http://s3', {
      remedy: { kind: 'set', setting: 's3-bucket', how: 'to an existing bucket, or create it' },
    });
    expect(describeForCharm(err)).toBe(
      'bucket "b" does not exist at http://s3; set s3-bucket to an existing bucket, or create it',
    );
    expect(describeForCharm(err, relation)).toBe(
      'bucket "b" does not exist at http://s3; set bucket on my-s3 to an existing bucket, or create it: juju config my-s3 bucket=<name>',
    );
    expect(describeForCharm(new Error('plain'), relation)).toBe('plain');
  });
});

describe('overrides', () => {
  it('defaults to the real Juju and image paths', () => {
    expect(loadOverrides({})).toEqual({
      containersDir: '/charm/containers',
      pebbleSocket: '/charm/containers/synapse/pebble.socket',
      workloadSharedDir: '/charm/container',
      dataDir: '/data',
      configPath: '/data/homeserver.yaml',
      generateCommand: ['/start.py', 'generate'],
      serviceCommand: '/start.py',
      synapseUrl: 'http://localhost:8008',
      healthWaitMs: 60000,
    });
    expect(
      loadOverrides({ SYNAPSE_CHARM_WORKLOAD_SHARED_DIR: '/tmp/h/containers/synapse' })
        .workloadSharedDir,
    ).toBe('/tmp/h/containers/synapse');
    expect(() => loadOverrides({ SYNAPSE_CHARM_GENERATE_COMMAND: '/start.py generate' })).toThrow(
      /JSON array/,
    );
  });

  it('builds the Pebble layer for the synapse service', () => {
    expect(synapseLayer(loadOverrides({}), 'example.com')).toBe(
      [
        'summary: Synapse',
        'description: Matrix Synapse homeserver, managed by the synapse charm',
        'services:',
        '  synapse:',
        '    override: replace',
        '    summary: Synapse homeserver',
        '    command: /start.py',
        '    startup: enabled',
        '    environment:',
        '      SYNAPSE_SERVER_NAME: example.com',
        '      SYNAPSE_REPORT_STATS: "no"',
        '      SYNAPSE_CONFIG_DIR: /data',
        '      SYNAPSE_CONFIG_PATH: /data/homeserver.yaml',
        '      SYNAPSE_DATA_DIR: /data',
        '    on-check-failure:',
        '      synapse-health: restart',
        'checks:',
        '  synapse-health:',
        '    override: replace',
        '    level: alive',
        '    period: 10s',
        '    timeout: 3s',
        '    threshold: 3',
        '    http:',
        '      url: http://localhost:8008/health',
        '',
      ].join('\n'),
    );
  });
});
