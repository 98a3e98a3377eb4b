/**
 * The encryption and decryption stages alone, in memory: MiB of plaintext pushed through
 * each implementation in 64 KiB chunks (what a pipe or a websocket delivers), output
 * discarded. Prints one JSON line per case:
 *   {"stage","impl","frameLength","bytes","seconds","mbPerSecond","cpuSeconds","mbPerCpuSecond"}
 *
 * Usage: node .bench/crypto-stage.js [MIB] [FRAME_LENGTH,...]   (default 1024 MiB, 4096,1048576)
 */
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { buildEncrypt } from '@aws-crypto/encrypt-node';
import { CommitmentPolicy } from '@aws-crypto/material-management-node';
import {
  SUITE_ID,
  createDecryptStream,
  createEncryptStream,
  createKeyring,
  createSdkDecryptStream,
} from '../src/crypto/esdk';

const PASSPHRASE = 'bench-passphrase';
const CHUNK = 64 * 1024;
const { encryptStream } = buildEncrypt(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT);

/** `total` bytes in CHUNK-sized buffers cut from a random pool (fresh Buffer objects). */
function source(total: number, pool: Buffer): Readable {
  let sent = 0;
  return new Readable({
    highWaterMark: 4 * CHUNK,
    read() {
      if (sent >= total) {
        this.push(null);
        return;
      }
      const n = Math.min(CHUNK, total - sent);
      // Sequential when the pool holds it all (a message to decrypt), else cycling.
      const at = pool.length >= total ? sent : sent % (pool.length - CHUNK);
      this.push(pool.subarray(at, at + n));
      sent += n;
    },
  });
}

function sink(collect?: Buffer[]): Writable & { bytes: number } {
  const out = new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk: Buffer, _enc, done) {
      out.bytes += chunk.length;
      collect?.push(chunk);
      done();
    },
  }) as Writable & { bytes: number };
  out.bytes = 0;
  return out;
}

async function measure(
  stage: string,
  impl: string,
  frameLength: number,
  bytes: number,
  run: () => Promise<void>,
): Promise<void> {
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await run();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  console.log(
    JSON.stringify({
      stage,
      impl,
      frameLength,
      bytes,
      seconds: +seconds.toFixed(3),
      mbPerSecond: +(bytes / 1e6 / seconds).toFixed(1),
      cpuSeconds: +((cpu.user + cpu.system) / 1e6).toFixed(3),
      // Throughput per second of CPU: what the stage costs, whatever else runs on the machine.
      mbPerCpuSecond: +(bytes / 1e6 / ((cpu.user + cpu.system) / 1e6)).toFixed(1),
    }),
  );
}

async function main(): Promise<void> {
  const mib = Number(process.argv[2] ?? 1024);
  const frames = (process.argv[3] ?? '4096,1048576').split(',').map(Number);
  const total = mib * 1024 * 1024;
  const pool = randomBytes(64 * 1024 * 1024);
  for (const frameLength of frames) {
    // The SDK is slow with small frames: give it less data so the run stays short.
    const sdkBytes = Math.min(total, frameLength < 65536 ? 256 * 1024 * 1024 : total);
    await measure('encrypt', 'sdk-encryptStream', frameLength, sdkBytes, () =>
      pipeline(
        source(sdkBytes, pool),
        encryptStream(createKeyring(PASSPHRASE), { suiteId: SUITE_ID, frameLength }),
        sink(),
      ),
    );
    await measure('encrypt', 'framed-transform', frameLength, total, () =>
      pipeline(source(total, pool), createEncryptStream(PASSPHRASE, frameLength), sink()),
    );
    // Decryption of a message of 256 MiB (kept in memory), re-fed in 64 KiB chunks.
    const message: Buffer[] = [];
    const msgBytes = Math.min(total, 256 * 1024 * 1024);
    await pipeline(
      source(msgBytes, pool),
      createEncryptStream(PASSPHRASE, frameLength),
      sink(message),
    );
    const whole = Buffer.concat(message);
    message.length = 0;
    await measure('decrypt', 'sdk-decryptUnsignedMessageStream', frameLength, msgBytes, () =>
      pipeline(source(whole.length, whole), createSdkDecryptStream(PASSPHRASE), sink()),
    );
    await measure('decrypt', 'framed-decrypt', frameLength, msgBytes, () =>
      pipeline(source(whole.length, whole), createDecryptStream(PASSPHRASE), sink()),
    );
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
