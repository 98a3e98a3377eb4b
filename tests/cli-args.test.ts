/**
 * The CLI's argument handling, through the built bundle (`node build/synapse-backup.js`): a
 * number flag given no value, a flag that does not apply named before its value's problem, a
 * repeated flag, and --stale-hours taking the fractions the charm's stale-hours takes. Every
 * refusal is one line on stderr and exit 2, before any S3 request (the endpoint given to the
 * refusals is a closed port, and no credentials are set).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { type MinioPeer, describeWithPeers, startMinio } from './support/peers';

const ROOT = path.resolve(__dirname, '..');
const BUNDLE = path.join(ROOT, 'build', 'synapse-backup.js');

interface Run {
  code: number | null;
  out: string;
  err: string;
}

/** Runs the bundle with `env` as its only AWS_/SYNAPSE_BACKUP_ variables. */
function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const base: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith('AWS_') && !k.startsWith('SYNAPSE_BACKUP_')) base[k] = v;
  }
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BUNDLE, ...args], {
      env: { ...base, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, out, err }));
  });
}

/** S3 flags for a store nobody listens on: a run that reached S3 would fail otherwise. */
const NOWHERE = ['--bucket', 'b', '--endpoint', 'http://127.0.0.1:9', '--uri-style', 'path'];

/** Expects exit 2, nothing on stdout and exactly `synapse-backup: error: <said>` on stderr. */
async function refused(args: string[], said: string): Promise<void> {
  const run = await cli([...args, ...NOWHERE]);
  expect({ args, ...run }).toEqual({
    args,
    code: 2,
    out: '',
    err: `synapse-backup: error: ${said}\n`,
  });
}

beforeAll(() => {
  if (!existsSync(BUNDLE)) throw new Error('build/synapse-backup.js is missing: npm run build');
});

describe('synapse-backup argument handling (built bundle)', () => {
  test('a number flag given no value (the next flag, or nothing, after it) says it needs a number', async () => {
    const cases: [string[], string][] = [
      [
        ['prune', '--keep-last', '--dry-run'],
        '--keep-last needs a number (a whole number of at least 1)',
      ],
      [
        ['prune', '--keep-days', '--keep-last', '2'],
        '--keep-days needs a number (a whole number of at least 1)',
      ],
      [
        ['prune', '--stale-hours', '--dry-run'],
        '--stale-hours needs a number of hours >= 0 (0.5 is half an hour)',
      ],
      [
        ['delete', '--id', 'x', '--stale-hours', '--json'],
        '--stale-hours needs a number of hours >= 0 (0.5 is half an hour)',
      ],
      [
        ['create', '--data-dir', '/tmp', '--part-size', '--json'],
        '--part-size needs a number (a whole number of at least 5 (MiB))',
      ],
      [
        ['create', '--data-dir', '/tmp', '--queue-size', '--id', 'q'],
        '--queue-size needs a number (a whole number from 1 to 16)',
      ],
      [
        ['create', '--data-dir', '/tmp', '--frame-length', '--json'],
        '--frame-length needs a number (a whole number from 128 to 2147483647)',
      ],
    ];
    for (const [args, said] of cases) await refused(args, said);
    // Out of the engine's range: refused by the flag's name before anything runs.
    const ranges: [string[], string][] = [
      [
        ['create', '--data-dir', '/tmp', '--part-size', '4'],
        '--part-size takes a whole number of at least 5 (MiB), not "4"',
      ],
      [
        ['create', '--data-dir', '/tmp', '--queue-size', '0'],
        '--queue-size takes a whole number from 1 to 16, not "0"',
      ],
      [
        ['create', '--data-dir', '/tmp', '--queue-size', '17'],
        '--queue-size takes a whole number from 1 to 16, not "17"',
      ],
      [
        ['create', '--data-dir', '/tmp', '--frame-length', '0'],
        '--frame-length takes a whole number from 128 to 2147483647, not "0"',
      ],
    ];
    for (const [args, said] of ranges) await refused(args, said);
    // Last on the line: parseArgs alone says "argument missing".
    const last = await cli([...NOWHERE, 'prune', '--keep-last']);
    expect(last).toEqual({
      code: 2,
      out: '',
      err: 'synapse-backup: error: --keep-last needs a number (a whole number of at least 1)\n',
    });
    // A flag whose value is not a number: named too, not "argument is ambiguous".
    await refused(['verify', '--id', '--json'], '--id needs a value; see synapse-backup --help');
    await refused(
      ['verify', '--id', '-x'],
      '--id needs a value: "-x" starts with a dash, so it is not taken as one; write --id=-x if it is the value',
    );
    // A negative value is still a value, refused as a number.
    await refused(
      ['prune', '--keep-last', '-1'],
      '--keep-last takes a whole number of at least 1, not "-1"',
    );
  });

  test('a flag the command does not take is named before any problem with its value', async () => {
    const said = (flag: string, command: string) =>
      `--${flag} does not apply to ${command}; see synapse-backup --help for what ${command} takes`;
    await refused(['list', '--keep-last', '-1'], said('keep-last', 'list'));
    await refused(['list', '--keep-last', '--json'], said('keep-last', 'list'));
    await refused(['list', '--keep-last', 'many'], said('keep-last', 'list'));
    await refused(['verify', '--id', 'x', '--stale-hours', '-2'], said('stale-hours', 'verify'));
    await refused(['list', '--keep-last', '3', '--keep-last', '5'], said('keep-last', 'list'));
  });

  test('a flag given twice is refused by name, whatever its kind; --service may repeat', async () => {
    await refused(
      ['prune', '--keep-last', '3', '--keep-last', '5'],
      '--keep-last is given twice ("3", then "5"); give it once',
    );
    await refused(
      ['delete', '--id', 'a', '--id', 'b'],
      '--id is given twice ("a", then "b"); give it once',
    );
    await refused(
      ['prune', '--data-dir', 'x', '--data-dir=y'],
      '--data-dir is given twice ("x", then "y"); give it once',
    );
    await refused(['list', '--json', '--json'], '--json is given twice; give it once');
    // An endpoint may hold user:password: the values are not echoed (NOWHERE adds a third).
    await refused(
      ['list', '--endpoint=http://u:sekrit@h', '--endpoint', 'http://u:sekrit@h'],
      '--endpoint is given 3 times; give it once',
    );
    // NOWHERE gives --bucket b after it.
    await refused(
      ['list', '--bucket', 'a'],
      '--bucket is given twice ("a", then "b"); give it once',
    );
    await refused(
      ['prune', '--stale-hours', '1', '--stale-hours', '2', '--stale-hours', '3'],
      '--stale-hours is given 3 times ("1", then "2", then "3"); give it once',
    );
    // --service names one service each time: the check after the repeat one answers.
    await refused(
      ['restore', '--id', 'x', '--data-dir', '/tmp/x', '--service', 'a', '--service', 'b'],
      '--service needs --pebble-socket: on this host the CLI manages no services; stop Synapse yourself',
    );
  });

  test('--stale-hours refuses what the charm refuses, with one line saying what it takes', async () => {
    for (const bad of ['-2', 'abc', '0,5', '1e999', '', 'Infinity']) {
      await refused(
        ['prune', `--stale-hours=${bad}`],
        `--stale-hours takes a number of hours >= 0 (0.5 is half an hour), not "${bad}"`,
      );
    }
  });
});

describeWithPeers(['minio'])('synapse-backup --stale-hours fractions (real MinIO)', () => {
  let minio: MinioPeer;
  let s3: string[];
  let env: Record<string, string>;

  beforeAll(async () => {
    minio = await startMinio();
    s3 = ['--endpoint', minio.endpoint, '--region', 'us-east-1', '--uri-style', 'path'];
    s3.push('--bucket', minio.bucket, '--prefix', 'args');
    env = { AWS_ACCESS_KEY_ID: minio.accessKeyId, AWS_SECRET_ACCESS_KEY: minio.secretAccessKey };
  });
  afterAll(async () => {
    await minio?.stop();
  });

  test('--stale-hours 0.5 is half an hour, as the charm takes it: prune and delete use it', async () => {
    const prune = await cli(['prune', '--dry-run', '--stale-hours', '0.5', ...s3], env);
    expect(prune.err).toBe('');
    expect(prune.code).toBe(0);
    expect(prune.out).toContain('would remove incomplete backups older than 0.5 h: none');

    // A create's fresh pending marker: delete with --stale-hours 0.5 waits for it to be 30 min old.
    await minio.client.send(
      new PutObjectCommand({
        Bucket: minio.bucket,
        Key: 'args/running.pending',
        Body: '{"host":"h","pid":1}\n',
      }),
    );
    const busy = await cli(['delete', '--id', 'running', '--stale-hours', '.5', ...s3], env);
    expect(busy.code).toBe(1);
    expect(busy.err.split('\n')).toHaveLength(2);
    expect(busy.err).toContain('again once the marker is 30 min old');

    const gone = await cli(['delete', '--id', 'running', '--stale-hours', '0', ...s3], env);
    expect(gone.err).toBe('');
    expect(gone.code).toBe(0);
    expect(gone.out).toContain('deleted backup running');
  });
});
