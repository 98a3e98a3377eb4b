/**
 * A throwaway MinIO for bench/upload-ab.ts, started and settled as bench/run.ts
 * does it: data on tmpfs when there is room, random root credentials, one bucket.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { createS3Client } from '../src/s3/client';
import { parseS3Settings } from '../src/s3/settings';

const MIB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A running MinIO: its process, data dir, work dir (logs), endpoint and root credentials. */
export interface Minio {
  process: ChildProcess;
  dir: string;
  work: string;
  endpoint: string;
  user: string;
  secret: string;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function cpuSecondsOf(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** tmpfs when it holds three times the largest size (object, trash, slack); else the work dir. */
function minioDir(work: string, largestMiB: number, chosen: string): string {
  if (chosen) return chosen;
  try {
    const st = fs.statfsSync('/dev/shm');
    if (st.bavail * st.bsize > 3 * largestMiB * MIB) {
      return fs.mkdtempSync('/dev/shm/synapse-upload-ab-');
    }
  } catch {
    // no /dev/shm
  }
  return path.join(work, 'minio');
}

/**
 * Starts MinIO (the peers' build, or MINIO_BIN) with its data in `chosenDir`, else on tmpfs
 * when it holds 3 x `largestMiB`, and creates the bucket `bench`. Logs go to work/minio.log.
 */
export async function startMinio(largestMiB: number, chosenDir: string): Promise<Minio> {
  const peers =
    process.env.SYNAPSE_PEERS_CACHE ?? path.join(os.homedir(), '.cache', 'synapse-backup-peers');
  const bin = process.env.MINIO_BIN ?? path.join(peers, 'bin', 'minio');
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'synapse-upload-ab-'));
  const dir = minioDir(work, largestMiB, chosenDir);
  fs.mkdirSync(dir, { recursive: true });
  const [port, consolePort] = [await freePort(), await freePort()];
  const user = `bench${randomBytes(4).toString('hex')}`;
  const secret = randomBytes(16).toString('hex');
  const fd = fs.openSync(path.join(work, 'minio.log'), 'a');
  const argv = ['server', dir, '--address', `127.0.0.1:${port}`];
  const proc = spawn(bin, [...argv, '--console-address', `127.0.0.1:${consolePort}`], {
    env: {
      ...process.env,
      MINIO_ROOT_USER: user,
      MINIO_ROOT_PASSWORD: secret,
      MINIO_UPDATE: 'off',
      HOME: work,
    },
    stdio: ['ignore', fd, fd],
  });
  fs.closeSync(fd);
  const minio = { process: proc, dir, work, endpoint: `http://127.0.0.1:${port}`, user, secret };
  const settings = parseS3Settings({
    bucket: 'bench',
    endpoint: minio.endpoint,
    uriStyle: 'path',
    accessKeyId: user,
    secretAccessKey: secret,
  });
  const client = createS3Client(settings);
  try {
    for (let i = 0; ; i++) {
      if (proc.exitCode !== null) throw new Error('minio exited while starting');
      try {
        await client.send(new CreateBucketCommand({ Bucket: 'bench' }));
        break;
      } catch (err) {
        if (i >= 300) throw err;
        await sleep(100);
      }
    }
  } finally {
    client.destroy();
  }
  return minio;
}

/** Empties MinIO's trash, syncs, and waits (up to 20 s) until MinIO uses under 5% of a CPU. */
export async function settle(minio: Minio): Promise<void> {
  fs.rmSync(path.join(minio.dir, '.minio.sys', 'tmp', '.trash'), { recursive: true, force: true });
  spawnSync('sync');
  for (let i = 0; i < 40; i++) {
    const before = cpuSecondsOf(minio.process.pid!);
    await sleep(500);
    if (cpuSecondsOf(minio.process.pid!) - before < 0.025) return;
  }
}
