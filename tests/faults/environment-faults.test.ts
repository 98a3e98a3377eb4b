/**
 * Secrets in the engine's own environment (as the CLI takes them:
 * SYNAPSE_BACKUP_PASSPHRASE, AWS_SECRET_ACCESS_KEY) never reach the workload's
 * processes: a create through the engine, with the local transport and with
 * Pebble (relayed and direct stdout), while /proc/<pid>/environ of the create
 * script's sh and everything below it (tar, python3, dd) is sampled.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { BackupEngine } from '../../src/backup/engine';
import { parseS3Settings } from '../../src/s3/settings';
import { LocalWorkload } from '../../src/workload/local';
import { PebbleWorkload } from '../../src/workload/pebble';
import type { Workload } from '../../src/workload/workload';
import {
  describeWithPeers,
  startMinio,
  startPebble,
  tmpDir,
  type MinioPeer,
  type PebblePeer,
  type TmpDir,
} from '../support/peers';
import { ProcSampler } from '../support/proc-sampler';
import { makeSynapseTree } from '../support/synapse-tree';
import { expected, observed } from './support/report';

const MiB = 1024 * 1024;
const isCreateScript = (cmd: string) => cmd.startsWith('sh -c ') && cmd.includes('tar --create');

describeWithPeers(['minio', 'pebble'])("the engine's environment and workload commands", () => {
  let minio: MinioPeer;
  let pebble: PebblePeer;
  let data: TmpDir;
  const saved = {
    passphrase: process.env.SYNAPSE_BACKUP_PASSPHRASE,
    secret: process.env.AWS_SECRET_ACCESS_KEY,
  };

  beforeAll(async () => {
    minio = await startMinio();
    pebble = await startPebble();
    data = await tmpDir('synapse-env');
    await makeSynapseTree(data.path, { mediaFiles: 4 });
    // 96 MiB for tar to read: long enough to be sampled many times.
    const blob = path.join(data.path, 'media_store/local_content/big/blob');
    await fsp.mkdir(path.dirname(blob), { recursive: true });
    await fsp.writeFile(blob, '');
    await fsp.truncate(blob, 96 * MiB);
  });
  afterAll(async () => {
    restoreEnv();
    await pebble?.stop();
    await minio?.stop();
    await data?.cleanup();
  });

  function restoreEnv(): void {
    for (const [name, value] of [
      ['SYNAPSE_BACKUP_PASSPHRASE', saved.passphrase],
      ['AWS_SECRET_ACCESS_KEY', saved.secret],
    ] as const) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }

  async function createWith(workload: Workload): Promise<void> {
    expected(
      "no secret of the engine's environment in /proc/<pid>/environ of sh, tar, python3 or dd",
    );
    const passphrase = `env-case ${randomBytes(12).toString('base64')}`;
    // Set only now: the peers started above must not inherit them.
    process.env.SYNAPSE_BACKUP_PASSPHRASE = passphrase;
    process.env.AWS_SECRET_ACCESS_KEY = minio.secretAccessKey;
    const sampler = new ProcSampler([passphrase, minio.secretAccessKey], isCreateScript, 20);
    const engine = new BackupEngine({
      s3: parseS3Settings({
        bucket: minio.bucket,
        prefix: 'env',
        endpoint: minio.endpoint,
        uriStyle: 'path',
        accessKeyId: minio.accessKeyId,
        secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
      }),
      passphrase: process.env.SYNAPSE_BACKUP_PASSPHRASE,
      workload,
      dataDir: data.path,
    });
    sampler.start();
    let sample;
    try {
      // An id of its own: the default (the UTC second) collided when two of these ran in one second.
      const result = await engine.create({ id: `env-${Date.now()}-${process.hrtime.bigint()}` });
      observed(`backup ${result.backupId} complete`);
    } finally {
      sample = sampler.stop();
      engine.close();
      restoreEnv();
    }
    const commands = [...sample.commandLines];
    const seen = ['tar --create', 'python3 -c', 'dd bs=1M'].filter((c) =>
      commands.some((line) => line.includes(c)),
    );
    // The sampling saw the script, and tar below it, while they ran.
    expect(sample.rootCommands.size).toBeGreaterThan(0);
    expect(commands.some((c) => c.startsWith('tar --create'))).toBe(true);
    expect(sample.leaks).toEqual([]);
    observed(
      `${sample.samples} /proc samples saw the script and ${seen.join(', ')}; no secret in their environments`,
    );
  }

  test('environment: local transport', async () => {
    await createWith(new LocalWorkload());
  });

  test('environment: Pebble, relayed stdout', async () => {
    await createWith(new PebbleWorkload({ socketPath: pebble.socketPath }));
  });

  test('environment: Pebble, direct stdout', async () => {
    const dir = path.dirname(pebble.socketPath);
    await createWith(
      new PebbleWorkload({
        socketPath: pebble.socketPath,
        sharedDir: { local: dir, workload: dir },
      }),
    );
  });
});
