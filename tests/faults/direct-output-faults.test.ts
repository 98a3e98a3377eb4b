/**
 * Workload faults on the default path, where the archive goes over a unix
 * socket beside Pebble's (workload-exec=pebble: create's tar writes to it,
 * restore's reads from it) and Pebble still starts tar and reports its exit
 * status. create-backup: tar exits non-zero mid-stream, the charm's connection
 * to Pebble drops, and the Pebble daemon is killed and restarted while tar is
 * still writing to the socket (tar is held mid-stream by stalling the upload's
 * parts at the S3 proxy: the engine stops reading, and tar blocks on the
 * socket). restore-backup: Pebble killed and restarted while tar is stopped
 * mid-archive (SIGSTOP), before the swap.
 */
import { promises as fsp, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describeWithPeers } from '../support/peers';
import { FaultBed, pebbleLost, until, within } from './support/bed';
import { expected, observed } from './support/report';

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeWithPeers(['minio', 'pebble'])('workload faults on the direct-output path', () => {
  let bed: FaultBed;

  beforeAll(async () => {
    // With the parts stalled the engine holds up to three 16 MiB part buffers and its stages'
    // buffers; tar runs a few MiB further (the socket's) and must still be in the blob.
    bed = await FaultBed.start({ blobBytes: 160 * MiB });
  });
  afterAll(async () => {
    await bed?.stop();
  });
  afterEach(() => bed.s3.clearRules());

  /**
   * Runs create-backup with every UploadPart held at the S3 proxy until
   * `fault` has run: tar is blocked on the socket in the middle of the blob.
   */
  async function createWithStalledUpload(fault: () => Promise<void>) {
    let release!: () => void;
    bed.s3.addRule({
      op: 'UploadPart',
      fault: { kind: 'stall', release: new Promise<void>((r) => (release = r)) },
    });
    return bed.run('create-backup', {}, async () => {
      try {
        const key = await bed.waitForUpload();
        await until('two parts are held', () => bed.s3.stalled() >= 2);
        await sleep(500); // the buffers behind them fill, and tar blocks
        expect(await bed.tarsRunning()).toHaveLength(1);
        observed(`parts of ${key} held at the proxy; tar blocked on the direct socket`);
        await fault();
      } finally {
        bed.s3.clearRules();
        release();
      }
    });
  }

  test('direct: tar exits 1 mid-stream (a media file shrinks while read)', async () => {
    expected(
      'fails quoting tar: "File shrank by N bytes; padding with zeros", exit status 1 (from Pebble); the upload is aborted; the socket is removed',
    );
    const blob = path.join(bed.h.dataDir, 'media_store/local_content/big/blob');
    const st = await fsp.stat(blob);
    const before = await bed.before();
    const run = await createWithStalledUpload(async () => {
      await fsp.truncate(blob, MiB);
    });
    // Back as it was (the blob is zeros): the live tree must compare equal.
    await fsp.truncate(blob, st.size);
    await fsp.utimes(blob, st.atime, st.mtime);
    const msg = FaultBed.failure(run);
    observed(`action failed: ${msg}`);
    expect(msg.startsWith(`tar in Pebble at ${bed.charmSocket} exited with status 1: `)).toBe(true);
    expect(msg).toMatch(
      /: tar: media_store\/local_content\/big\/blob: File shrank by \d+ bytes; padding with zeros$/,
    );
    expect(run.pebble.bytes).toBeLessThan(MiB);
    observed(
      `through Pebble: ${run.pebble.execs} execs, ${run.pebble.bytes} bytes (not the archive)`,
    );
    observed(await bed.afterFault(before, [run]));
  });

  test('direct: a media directory vanishes mid-stream (a live server): accepted with a warning', async () => {
    expected('succeeds naming media_store/local_thumbnails as removed; the backup verifies');
    const before = await bed.before();
    const thumbs = path.join(bed.h.dataDir, 'media_store/local_thumbnails');
    const away = path.join(bed.h.dir, 'thumbnails-away');
    const run = await createWithStalledUpload(async () => {
      await fsp.rename(thumbs, away);
    });
    await fsp.rename(away, thumbs);
    const id = FaultBed.succeeded(run);
    expect(run.result.results['warning-paths']).toBe('media_store/local_thumbnails (removed)');
    observed(
      `action succeeded: backup ${id}, warning-paths: ${run.result.results['warning-paths']}`,
    );
    observed(await bed.verifyIntact(id));
    observed(await bed.afterFault(before, [run], [id]));
  });

  test('direct: the connection to Pebble drops mid-create', async () => {
    expected(
      "fails saying the connection to Pebble dropped (tar's exit status is lost, so the archive is not trusted); tar ends; the upload is aborted",
    );
    await bed.pebbleLostCase('sh', false, createWithStalledUpload);
  });

  test('direct: Pebble killed and restarted while tar writes to the socket', async () => {
    expected(
      'fails saying the connection to Pebble was lost; tar, orphaned but still writing, gets EPIPE and ends; the upload is aborted; after pebble-ready Synapse runs again',
    );
    await bed.pebbleLostCase('sh', true, createWithStalledUpload);
  });

  /** The pids of `tar --extract` processes extracting into this bed's data dir. */
  /**
   * The pids of `tar --extract` processes extracting into this bed's data dir. Read
   * synchronously: the run's /proc sampler keeps the thread pool busy, and tar may live
   * for only two seconds.
   */
  function extractingTars(): number[] {
    const found: number[] = [];
    for (const pid of readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
      try {
        const cmdline = readFileSync(`/proc/${pid}/cmdline`).toString();
        if (cmdline.startsWith('tar\0--extract\0') && cmdline.includes(bed.h.dataDir)) {
          found.push(Number(pid));
        }
      } catch {
        // gone
      }
    }
    return found;
  }

  test('direct: Pebble killed and restarted mid-restore, before the swap', async () => {
    expected(
      'fails saying the connection to Pebble was lost; the live data untouched; after pebble-ready Synapse runs again; no staging directory left after prune-backups (the orphaned tar may write into it after the cleanup)',
    );
    const created = await bed.run('create-backup');
    const id = FaultBed.succeeded(created);
    const before = await bed.before();
    const stopped: number[] = [];
    const run = await bed.run('restore-backup', { 'backup-id': id }, async () => {
      try {
        await within(
          'tar --extract to start',
          (async () => {
            while (stopped.length === 0) {
              for (const pid of extractingTars()) {
                try {
                  process.kill(pid, 'SIGSTOP');
                  stopped.push(pid);
                } catch {
                  // gone meanwhile
                }
              }
              if (stopped.length === 0) await sleep(2);
            }
          })(),
        );
        observed(`tar --extract (pid ${stopped.join(', ')}) stopped mid-archive`);
        await bed.pebble.restart();
      } finally {
        for (const pid of stopped) {
          try {
            process.kill(pid, 'SIGCONT');
          } catch {
            // gone
          }
        }
      }
    });
    const msg = FaultBed.failure(run);
    observed(`action failed: ${msg}`);
    expect(msg).toMatch(pebbleLost('tar', true));
    // The archive was on its way over the socket, not through Pebble.
    expect(run.pebble.bytes).toBeLessThan(MiB);
    await until('the stopped tar to end', () => extractingTars().length === 0);
    const ready = await bed.pebbleReady();
    observed(`pebble-ready after the restart: ${ready.status?.status}`);
    // The engine removed the staging directory once the new Pebble answered; the tar the old
    // one left behind (here held by SIGSTOP until then) may have written into it again after
    // that. What it left is a leftover like any interrupted run's: prune-backups removes it.
    const staged = () => fsp.readdir(bed.h.dataDir).then((l) => l.filter((f) => f.startsWith('.')));
    const left = await staged();
    const prune = await bed.run('prune-backups', { 'stale-hours': 0 });
    expect(prune.result.failed).toBe(false);
    expect(await staged()).toEqual([]);
    observed(
      left.length
        ? `the orphaned tar wrote ${left.join(', ')} again after the cleanup; prune-backups removed it`
        : 'no staging directory left',
    );
    observed(await bed.afterFault(before, [run, prune]));
  });
});
