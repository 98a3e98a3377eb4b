/**
 * Issue #13, case 5, through the built CLI (`npm run build` first): SIGTERM
 * or SIGINT mid-create aborts the upload, removes the snapshot, prints one
 * line saying so and exits 128 + the signal's number (143, 130).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, promises as fsp, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { ListMultipartUploadsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { type FaultyProxy, startFaultyProxy } from './support/faulty-proxy';
import { type MinioPeer, describeWithPeers, startMinio, tmpDir } from './support/peers';
import { makeSynapseTree } from './support/synapse-tree';

const BUNDLE = path.resolve(__dirname, '..', 'build', 'synapse-backup.js');
const PREFIX = 'cli-interrupt';

describeWithPeers(['minio'])('synapse-backup interrupted by a signal', () => {
  let minio: MinioPeer;
  let proxy: FaultyProxy;
  beforeAll(async () => {
    if (!existsSync(BUNDLE)) throw new Error('build/synapse-backup.js is missing: npm run build');
    minio = await startMinio();
    proxy = await startFaultyProxy(minio.endpoint);
  });
  afterAll(async () => {
    await proxy?.close();
    await minio?.stop();
  });

  const uploads = async () =>
    (
      await minio.client.send(
        new ListMultipartUploadsCommand({ Bucket: minio.bucket, Prefix: `${PREFIX}/` }),
      )
    ).Uploads ?? [];

  test.each([
    ['SIGTERM', 143],
    ['SIGINT', 130],
  ] as const)(
    'create: %s mid-upload aborts it and exits %i with one line',
    async (signal, status) => {
      const dataDir = (await tmpDir('cli-interrupt')).path;
      await makeSynapseTree(dataDir, { mediaFiles: 2, bigFileBytes: 48 * 1024 * 1024 });
      const id = `int-${signal.toLowerCase()}`;
      // Parts wait at the proxy: the upload is certainly under way when the signal comes.
      let release!: () => void;
      proxy.addRule({
        op: 'UploadPart',
        fault: { kind: 'stall', release: new Promise<void>((r) => (release = r)) },
      });
      const child = spawn(
        process.execPath,
        [
          BUNDLE,
          'create',
          '--data-dir',
          dataDir,
          '--id',
          id,
          '--part-size',
          '5',
          ...['--endpoint', proxy.endpoint, '--region', 'us-east-1', '--uri-style', 'path'],
          ...['--bucket', minio.bucket, '--prefix', PREFIX],
        ],
        {
          env: {
            ...process.env,
            AWS_ACCESS_KEY_ID: minio.accessKeyId,
            AWS_SECRET_ACCESS_KEY: minio.secretAccessKey,
            SYNAPSE_BACKUP_PASSPHRASE: 'cli interrupt passphrase',
          },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      child.stdout.resume();
      const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
      while (proxy.stalled() === 0) {
        if (child.exitCode !== null) throw new Error(`create ended first: ${stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      // Twice at once, as `timeout` sends it (to the command, then to its process group):
      // still one interruption, with the whole cleanup.
      child.kill(signal);
      child.kill(signal);
      const code = await exited;
      proxy.clearRules();
      release();
      expect(code).toBe(status);
      expect(stderr).toBe(
        `synapse-backup: error: interrupted by ${signal}: tar was stopped, the upload of backup ${id} aborted and the database snapshot removed; nothing was stored\n`,
      );
      expect(await uploads()).toEqual([]);
      const listed = await minio.client.send(
        new ListObjectsV2Command({ Bucket: minio.bucket, Prefix: `${PREFIX}/` }),
      );
      expect(listed.Contents ?? []).toEqual([]);
      expect((await fsp.readdir(dataDir)).filter((n) => n.startsWith('.'))).toEqual([]);
    },
    120_000,
  );

  test("Ctrl-C in a terminal (SIGINT to the CLI's whole process group) reaches only the CLI: its cleanup ends tar, and no process of the run is left", async () => {
    const dataDir = (await tmpDir('cli-ctrl-c')).path;
    await makeSynapseTree(dataDir, { mediaFiles: 2, bigFileBytes: 48 * 1024 * 1024 });
    const id = 'int-ctrl-c';
    // tar behind a wrapper that notes a SIGINT reaching it (its tar runs in the
    // background, where a non-interactive sh ignores SIGINT, and is waited for).
    const bin = (await tmpDir('cli-ctrl-c-bin')).path;
    const mark = path.join(bin, 'sigint-reached-tar');
    const realTar = execFileSync('sh', ['-c', 'command -v tar'], { encoding: 'utf8' }).trim();
    await fsp.writeFile(
      path.join(bin, 'tar'),
      [
        '#!/bin/sh',
        `trap 'echo SIGINT >> "${mark}"' INT`,
        // A background list's stdin would be /dev/null: tar reads the names from it.
        'exec 5<&0',
        `"${realTar}" "$@" 0<&5 5<&- &`,
        'pid=$!',
        'while :; do wait $pid; st=$?; kill -0 $pid 2>/dev/null || exit $st; done',
        '',
      ].join('\n'),
      { mode: 0o755 },
    );
    let release!: () => void;
    proxy.addRule({
      op: 'UploadPart',
      fault: { kind: 'stall', release: new Promise<void>((r) => (release = r)) },
    });
    // A group of its own, as a shell gives a foreground job.
    const child = spawn(
      process.execPath,
      [
        BUNDLE,
        ...['create', '--data-dir', dataDir, '--id', id, '--part-size', '5'],
        ...['--endpoint', proxy.endpoint, '--region', 'us-east-1', '--uri-style', 'path'],
        ...['--bucket', minio.bucket, '--prefix', PREFIX],
      ],
      {
        env: {
          ...process.env,
          PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}`,
          AWS_ACCESS_KEY_ID: minio.accessKeyId,
          AWS_SECRET_ACCESS_KEY: minio.secretAccessKey,
          SYNAPSE_BACKUP_PASSPHRASE: 'cli interrupt passphrase',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      },
    );
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.stdout.resume();
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    while (proxy.stalled() === 0) {
      if (child.exitCode !== null) throw new Error(`create ended first: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    // The run's processes: the CLI and the commands it started (their arguments name the data dir).
    const runProcesses = () =>
      readdirSync('/proc')
        .filter((e) => /^\d+$/.test(e))
        .filter((e) => {
          try {
            return readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(dataDir);
          } catch {
            return false;
          }
        });
    expect(runProcesses().length).toBeGreaterThanOrEqual(2);
    process.kill(-child.pid!, 'SIGINT');
    const code = await exited;
    proxy.clearRules();
    release();
    expect(stderr).toBe(
      `synapse-backup: error: interrupted by SIGINT: tar was stopped, the upload of backup ${id} aborted and the database snapshot removed; nothing was stored\n`,
    );
    expect(code).toBe(130);
    // The terminal's SIGINT reached the CLI only; tar went by the CLI's own kill.
    expect(existsSync(mark)).toBe(false);
    expect(runProcesses()).toEqual([]);
    expect(await uploads()).toEqual([]);
    expect((await fsp.readdir(dataDir)).filter((n) => n.startsWith('.'))).toEqual([]);
  }, 120_000);
});
