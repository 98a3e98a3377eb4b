/**
 * The multipart uploader alone, A/B: the project's sink (`ObjectStore.upload`,
 * src/s3/multipart-sink.ts) against the SDK's `Upload` from `@aws-sdk/lib-storage`,
 * on the same stream, the same client settings and the same MinIO. Run by
 * `npm run bench` (scripts/bench.sh) after bench/run.ts; alone:
 *
 *   npx esbuild bench/upload-ab.ts --bundle --platform=node --outfile=.bench/upload-ab.js
 *   node .bench/upload-ab.js [--sizes 1024,4096] [--repeat 2] [--out FILE] [--minio-dir DIR]
 *     [--uploaders sink,lib-storage,lib-storage-8mib,sink-32mib]
 *
 * - The stream: `size` MiB of AES-256-CTR keystream (zeros through the cipher, 64 KiB
 *   chunks): incompressible and cheap to make (its own rate is printed first).
 * - Both contestants: part size 16 MiB and 2 parts in flight (the engine's defaults;
 *   the sink cuts its first 2,000 parts at half that, see uploadPartSize), a client
 *   from createS3Client with checksums WHEN_REQUIRED, path-style, plain HTTP. Each
 *   part goes as the sink sends it over plain HTTP (src/s3/part-integrity.ts):
 *   `UNSIGNED-PAYLOAD` with its CRC32; lib-storage's client gets the same through
 *   {@link protectLikeTheSink}, so the A/B compares the uploaders, not the signing.
 * - Each upload runs in a child process of its own (this script with --child), so
 *   the peak RSS (VmHWM at the end) is that contestant's; wall time is the upload's,
 *   from the first byte to CompleteMultipartUpload, without Node's start-up.
 * - The two alternate, and which goes first alternates too; `--repeat` runs of each
 *   at the first size, one at the others. Between runs the object is deleted,
 *   MinIO's trash emptied, dirty pages synced, and the run waits until MinIO is idle.
 *   MinIO keeps its data on tmpfs (/dev/shm) when it has room for the largest size
 *   three times over.
 *
 * Prints a Markdown table (size, uploader, run, wall s, MB/s, peak RSS MiB, load
 * average at the start) and writes the rows as JSON to --out
 * (default bench-results/upload-ab.json). Credentials reach the children in
 * their environment, never in argv.
 */
import { spawnSync } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { DeleteObjectCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { createS3Client } from '../src/s3/client';
import { crc32Base64 } from '../src/s3/part-integrity';
import { parseS3Settings, type S3Settings } from '../src/s3/settings';
import { ObjectStore } from '../src/s3/store';
import { type Minio, settle, startMinio } from './minio';

const MIB = 1024 * 1024;
const PART_SIZE = 16 * MIB;
const QUEUE_SIZE = 2;
const CHUNK = 64 * 1024;
/**
 * The contestants: the sink; lib-storage with the engine's part size; and, with
 * `--uploaders`, lib-storage with 8 MiB parts (the size of the sink's first 2,000)
 * and the sink with a 32 MiB part size (16 MiB parts, as lib-storage's).
 */
const UPLOADERS = ['sink', 'lib-storage', 'lib-storage-8mib', 'sink-32mib'] as const;
type Uploader = (typeof UPLOADERS)[number];

/** What a child is told (in UPLOAD_AB_CHILD), and the secret key in UPLOAD_AB_SECRET. */
interface ChildConfig {
  uploader: Uploader;
  endpoint: string;
  bucket: string;
  key: string;
  accessKeyId: string;
  bytes: number;
}

/** What a child prints, one JSON line. */
interface ChildReport {
  wallSeconds: number;
  /** VmHWM of the child at the end, bytes. */
  peakRssBytes: number;
  /** The size HeadObject reports after the upload, bytes. */
  storedBytes: number;
}

interface Row {
  sizeMiB: number;
  uploader: Uploader;
  run: number;
  wallSeconds: number;
  mbPerSecond: number;
  peakRssMiB: number;
  loadAverage: number;
}

const log = (msg: string) => process.stderr.write(`==> ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `bytes` of AES-256-CTR keystream in CHUNK-sized buffers. */
function keystream(bytes: number): Readable {
  const cipher = createCipheriv('aes-256-ctr', randomBytes(32), randomBytes(16));
  const zeros = Buffer.alloc(CHUNK);
  let left = bytes;
  return new Readable({
    highWaterMark: CHUNK,
    read() {
      if (left <= 0) {
        this.push(null);
        return;
      }
      const n = Math.min(CHUNK, left);
      left -= n;
      this.push(cipher.update(n === CHUNK ? zeros : zeros.subarray(0, n)));
    },
  });
}

function vmHwmBytes(): number {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const kib = /^VmHWM:\s+(\d+)\s+kB$/m.exec(status)?.[1];
  return kib ? Number(kib) * 1024 : process.memoryUsage().rss;
}

async function upload(config: ChildConfig, settings: S3Settings, client: S3Client): Promise<void> {
  const body = keystream(config.bytes);
  if (config.uploader === 'sink' || config.uploader === 'sink-32mib') {
    const partSize = config.uploader === 'sink' ? PART_SIZE : 32 * MIB;
    const store = new ObjectStore(settings);
    try {
      await store.upload(config.key, body, { partSize, queueSize: QUEUE_SIZE });
    } finally {
      store.close();
    }
    return;
  }
  protectLikeTheSink(client);
  await new Upload({
    client,
    params: {
      Bucket: config.bucket,
      Key: config.key,
      Body: body,
      ContentType: 'application/octet-stream',
    },
    partSize: config.uploader === 'lib-storage-8mib' ? 8 * MIB : PART_SIZE,
    queueSize: QUEUE_SIZE,
    leavePartsOnError: false,
  }).done();
}

/**
 * Makes `client` send PutObject and UploadPart bodies as the sink does over plain
 * HTTP: `UNSIGNED-PAYLOAD`, with the body's CRC32 in `x-amz-checksum-crc32`.
 */
function protectLikeTheSink(client: S3Client): void {
  const marked = new WeakSet<object>();
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const input = args.input as { Body?: unknown; ChecksumCRC32?: string };
      const name = (context as { commandName?: string }).commandName ?? '';
      if (/^(UploadPart|PutObject)Command$/.test(name) && input.Body instanceof Uint8Array) {
        input.ChecksumCRC32 = crc32Base64(input.Body);
        marked.add(context);
      }
      return next(args);
    },
    { step: 'initialize', name: 'uploadAbCrc32' },
  );
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const request = args.request as { headers?: Record<string, string> };
      if (marked.has(context) && request.headers) {
        request.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      }
      return next(args);
    },
    { step: 'build', name: 'uploadAbUnsigned' },
  );
}

/** One upload, in this process; prints a ChildReport. */
async function child(): Promise<void> {
  const config = JSON.parse(process.env.UPLOAD_AB_CHILD ?? '') as ChildConfig;
  const settings = parseS3Settings({
    bucket: config.bucket,
    endpoint: config.endpoint,
    uriStyle: 'path',
    accessKeyId: config.accessKeyId,
    secretAccessKey: process.env.UPLOAD_AB_SECRET,
  });
  const client = createS3Client(settings);
  try {
    const t0 = process.hrtime.bigint();
    await upload(config, settings, client);
    const wallSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const peakRssBytes = vmHwmBytes();
    const head = await client.send(
      new HeadObjectCommand({ Bucket: config.bucket, Key: config.key }),
    );
    const report: ChildReport = { wallSeconds, peakRssBytes, storedBytes: head.ContentLength ?? 0 };
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } finally {
    client.destroy();
  }
}

// ---------------------------------------------------------------- the parent

function runChild(config: ChildConfig, secret: string): ChildReport {
  const out = spawnSync(process.execPath, [__filename, '--child'], {
    env: {
      ...process.env,
      UPLOAD_AB_CHILD: JSON.stringify(config),
      UPLOAD_AB_SECRET: secret,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    },
    maxBuffer: 1 << 20,
  });
  if (out.status !== 0) {
    throw new Error(`${config.uploader} failed: ${out.stderr.toString().trim()}`);
  }
  const report = JSON.parse(out.stdout.toString().trim()) as ChildReport;
  if (report.storedBytes !== config.bytes) {
    throw new Error(`${config.uploader} stored ${report.storedBytes} of ${config.bytes} bytes`);
  }
  return report;
}

/** The source alone: MB/s of the keystream into nowhere (1 GiB). */
async function sourceRate(): Promise<number> {
  const t0 = process.hrtime.bigint();
  for await (const chunk of keystream(1024 * MIB)) void chunk;
  return (1024 * MIB) / 1e6 / (Number(process.hrtime.bigint() - t0) / 1e9);
}

async function measure(
  minio: Minio,
  sizes: number[],
  repeat: number,
  uploaders: Uploader[],
): Promise<Row[]> {
  const rows: Row[] = [];
  const cleaner = createS3Client(
    parseS3Settings({
      bucket: 'bench',
      endpoint: minio.endpoint,
      uriStyle: 'path',
      accessKeyId: minio.user,
      secretAccessKey: minio.secret,
    }),
  );
  try {
    for (const [index, sizeMiB] of sizes.entries()) {
      const runs = index === 0 ? repeat : 1;
      for (let run = 1; run <= runs; run++) {
        const order = run % 2 === 1 ? uploaders : [...uploaders].reverse();
        for (const uploader of order) {
          const key = `ab/${uploader}-${sizeMiB}-${run}`;
          await settle(minio);
          const loadAverage = Number(fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
          const config: ChildConfig = {
            uploader,
            endpoint: minio.endpoint,
            bucket: 'bench',
            key,
            accessKeyId: minio.user,
            bytes: sizeMiB * MIB,
          };
          const r = runChild(config, minio.secret);
          const row: Row = {
            sizeMiB,
            uploader,
            run,
            wallSeconds: +r.wallSeconds.toFixed(2),
            mbPerSecond: +((sizeMiB * MIB) / 1e6 / r.wallSeconds).toFixed(1),
            peakRssMiB: Math.round(r.peakRssBytes / MIB),
            loadAverage,
          };
          log(
            `${sizeMiB} MiB ${uploader} #${run}: ${row.wallSeconds} s, ${row.mbPerSecond} MB/s, ${row.peakRssMiB} MiB`,
          );
          rows.push(row);
          await cleaner.send(new DeleteObjectCommand({ Bucket: 'bench', Key: key }));
        }
      }
    }
  } finally {
    cleaner.destroy();
  }
  return rows;
}

/** The rows as a Markdown table. */
export function table(rows: Row[]): string {
  const lines = [
    '| size | uploader | run | wall s | MB/s | peak RSS MiB | load avg |',
    '|---:|---|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    const size = r.sizeMiB >= 1024 ? `${r.sizeMiB / 1024} GiB` : `${r.sizeMiB} MiB`;
    lines.push(
      `| ${size} | ${r.uploader} | ${r.run} | ${r.wallSeconds.toFixed(1)} | ${r.mbPerSecond.toFixed(0)} | ${r.peakRssMiB} | ${r.loadAverage.toFixed(2)} |`,
    );
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
  const { values: args } = parseArgs({
    options: {
      sizes: { type: 'string', default: '1024,4096' },
      repeat: { type: 'string', default: '2' },
      uploaders: { type: 'string', default: 'sink,lib-storage' },
      out: { type: 'string', default: path.resolve('bench-results', 'upload-ab.json') },
      'minio-dir': { type: 'string', default: process.env.BENCH_MINIO_DIR ?? '' },
    },
  });
  const sizes = args.sizes!.split(',').map(Number);
  const repeat = Math.max(1, Number(args.repeat));
  const uploaders = args.uploaders!.split(',') as Uploader[];
  const unknown = uploaders.filter((u) => !UPLOADERS.includes(u));
  if (unknown.length) throw new Error(`unknown uploaders: ${unknown.join(', ')}`);
  log(`the source alone: ${(await sourceRate()).toFixed(0)} MB/s of AES-256-CTR keystream`);
  const minio = await startMinio(Math.max(...sizes), args['minio-dir']!);
  log(`MinIO at ${minio.endpoint}, data in ${minio.dir}`);
  try {
    const rows = await measure(minio, sizes, repeat, uploaders);
    const result = {
      date: new Date().toISOString(),
      cpus: os.cpus().length,
      node: process.version,
      minioDir: minio.dir.startsWith('/dev/shm') ? 'tmpfs (/dev/shm)' : minio.dir,
      partSize: PART_SIZE,
      queueSize: QUEUE_SIZE,
      rows,
    };
    fs.mkdirSync(path.dirname(args.out!), { recursive: true });
    fs.writeFileSync(args.out!, `${JSON.stringify(result, null, 2)}\n`);
    process.stdout.write(`${table(rows)}\n`);
    log(`wrote ${args.out}`);
  } finally {
    minio.process.kill('SIGKILL');
    await sleep(200);
    fs.rmSync(minio.work, { recursive: true, force: true });
    if (!minio.dir.startsWith(minio.work)) fs.rmSync(minio.dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  (process.argv.includes('--child') ? child() : main()).catch((err: unknown) => {
    console.error(err instanceof Error ? err.stack : err);
    process.exit(1);
  });
}
