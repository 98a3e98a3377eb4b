/**
 * Workload faults during create-backup, through the charm's action: a media
 * directory vanishes while tar is blocked on its pipe (a live server: accepted,
 * with a warning); tar exits non-zero mid-stream (a media file shrinks while
 * read; a file it may not read, with Pebble running as an unprivileged user), the
 * charm's connection to Pebble drops, and the Pebble daemon is killed and
 * restarted (Juju then runs pebble-ready, which brings Synapse back).
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { describeWithPeers, tmpDir } from '../support/peers';
import { FaultBed, within } from './support/bed';
import { expected, observed } from './support/report';

const MiB = 1024 * 1024;
const NOBODY = 65534;
const isTarCreate = (command: string[]) => command[2]?.includes('tar --create') ?? false;

describeWithPeers(['minio', 'pebble'])('workload faults during create-backup', () => {
  let bed: FaultBed;

  beforeAll(async () => {
    // The held stream stops 17 MiB in, inside the blob: tar itself runs up to about 3 MiB
    // further (dd's 1 MiB block, its 1 MiB pipe, Pebble's reads), and must still be in it.
    bed = await FaultBed.start({ blobBytes: 24 * MiB });
    // These cases hold tar's output in the Pebble proxy: the archive must go through
    // Pebble's websocket (the default takes it over a socket beside Pebble's:
    // direct-output-faults.test.ts).
    bed.h.setConfig({ 'workload-exec': 'pebble-relay' });
  });
  afterAll(async () => {
    await bed?.stop();
  });

  /**
   * Runs create-backup with tar's output held once 17 MiB have passed (the
   * first 16 MiB part is on its way, so a multipart upload is in progress, and
   * tar is blocked on its pipe in the middle of local media); `fault` runs
   * while it is held, then the output flows again.
   */
  async function createWithHeldTar(fault: () => Promise<void>) {
    const hold = bed.pebbleProxy.holdOutput(isTarCreate, 17 * MiB);
    return bed.run('create-backup', {}, async () => {
      await within('tar to produce 17 MiB', hold.reached).catch((err: unknown) => {
        hold.release();
        throw err;
      });
      const key = await bed.waitForUpload();
      observed(`tar held mid-stream with ${key} in progress`);
      await fault();
      hold.release();
    });
  }

  const workload = () => `Pebble at ${bed.charmSocket}`;

  test('workload: a media directory vanishes mid-stream (a live server): tar exits 2, accepted with a warning', async () => {
    expected(
      'succeeds naming media_store/local_thumbnails as removed (warnings, warning-paths); the backup verifies',
    );
    const before = await bed.before();
    const thumbs = path.join(bed.h.dataDir, 'media_store/local_thumbnails');
    const away = path.join(bed.h.dir, 'thumbnails-away');
    const run = await createWithHeldTar(async () => {
      await fsp.rename(thumbs, away);
    });
    await fsp.rename(away, thumbs);
    const id = FaultBed.succeeded(run);
    expect(run.result.results).toMatchObject({
      warnings: '1',
      'warning-paths': 'media_store/local_thumbnails (removed)',
    });
    observed(
      `action succeeded: backup ${id}, warning-paths: ${run.result.results['warning-paths']}`,
    );
    observed(await bed.verifyIntact(id));
    observed(await bed.afterFault(before, [run], [id]));
  });

  test('workload: tar exits 1 mid-stream (a media file shrinks while read: zeros would replace it)', async () => {
    expected(
      'fails quoting tar: "File shrank by N bytes; padding with zeros", exit status 1; the upload is aborted',
    );
    const blob = path.join(bed.h.dataDir, 'media_store/local_content/big/blob');
    const st = await fsp.stat(blob);
    const before = await bed.before();
    const run = await createWithHeldTar(async () => {
      await fsp.truncate(blob, MiB);
    });
    // Back as it was (the blob is zeros): the live tree must compare equal.
    await fsp.truncate(blob, st.size);
    await fsp.utimes(blob, st.atime, st.mtime);
    const msg = FaultBed.failure(run);
    observed(`action failed: ${msg}`);
    expect(msg.startsWith(`tar in ${workload()} exited with status 1: `)).toBe(true);
    expect(msg).toMatch(
      /: tar: media_store\/local_content\/big\/blob: File shrank by \d+ bytes; padding with zeros$/,
    );
    observed(await bed.afterFault(before, [run]));
  });

  test('workload: the connection to Pebble drops mid-create', async () => {
    expected(
      'fails saying the connection to Pebble dropped; the upload is aborted; Pebble and Synapse unaffected',
    );
    await bed.pebbleLostCase('sh', false, createWithHeldTar);
  });

  test('workload: Pebble killed and restarted mid-create', async () => {
    expected(
      'fails saying the connection to Pebble was lost; the upload is aborted; after pebble-ready Synapse runs again',
    );
    await bed.pebbleLostCase('sh', true, createWithHeldTar);
  });

  describe('with Pebble running as an unprivileged user', () => {
    let unprivileged: FaultBed;
    let locked: string;

    beforeAll(async () => {
      const data = await tmpDir('synapse-data');
      unprivileged = await FaultBed.start({ pebbleUid: NOBODY, dataDir: data.path });
      // A file Synapse's user may not read (owned by root, mode 0600).
      locked = path.join(data.path, 'media_store/local_content/ab/locked');
      await fsp.writeFile(locked, 'root only\n', { mode: 0o600 });
    });
    afterAll(async () => {
      await unprivileged?.stop();
    });

    test('workload: tar exits 2 on a file it may not read (permission denied)', async () => {
      expected('fails quoting tar: "Cannot open: Permission denied", exit status 2');
      const before = await unprivileged.before();
      const run = await unprivileged.run('create-backup');
      const msg = FaultBed.failure(run);
      observed(`action failed: ${msg}`);
      expect(msg).toBe(
        `tar in Pebble at ${unprivileged.charmSocket} exited with status 2: tar: media_store/local_content/ab/locked: Cannot open: Permission denied`,
      );
      observed(await unprivileged.afterFault(before, [run]));
    });
  });
});
