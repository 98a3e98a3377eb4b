/**
 * The charm process killed mid-create with SIGKILL: the run leaves a multipart
 * upload behind; list-backups shows it and the next prune-backups
 * (stale-hours=0) aborts it. The workload's tar does not outlive the charm, no
 * direct-output socket is left, the live data is untouched and Synapse keeps
 * running. With SIGTERM (what Juju sends on `juju cancel-task` and timeouts)
 * the action aborts the upload itself and fails saying so (issue #13, case 5).
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { KEYS_DONE_MARK, SNAPSHOT_NAME } from '../../src/backup/scripts';
import { describeWithPeers } from '../support/peers';
import { inspectSqliteDb } from '../support/synapse-tree';
import { FaultBed, until, within } from './support/bed';
import { expected, observed } from './support/report';

const MiB = 1024 * 1024;

describeWithPeers(['minio', 'pebble'])('the charm killed mid-create', () => {
  let bed: FaultBed;

  beforeAll(async () => {
    bed = await FaultBed.start({ blobBytes: 18 * MiB });
  });
  afterAll(async () => {
    await bed?.stop();
  });

  test('charm: SIGTERM mid-create aborts the upload and fails the action saying so', async () => {
    expected(
      'action fails: "create-backup was interrupted (SIGTERM): tar was stopped, the upload ... aborted and the database snapshot removed; nothing was stored"; no upload, snapshot or socket left',
    );
    const before = await bed.before();
    let release!: () => void;
    bed.s3.addRule({
      op: 'UploadPart',
      fault: { kind: 'stall', release: new Promise<void>((r) => (release = r)) },
    });
    let key = '';
    const run = await bed.run('create-backup', {}, async () => {
      key = await bed.waitForUpload();
      await until('a part is held', () => bed.s3.stalled() > 0);
      const pid = await bed.dispatchPid();
      expect(pid).toBeDefined();
      process.kill(pid!, 'SIGTERM');
      observed(`charm (pid ${pid}) sent SIGTERM with ${key} in progress`);
    });
    bed.s3.clearRules();
    release();
    const id = key.replace(/^.*\//, '').replace(/\.tar\.enc$/, '');
    expect(FaultBed.failure(run)).toBe(
      `create-backup was interrupted (SIGTERM): tar was stopped, the upload of backup ${id} aborted and the database snapshot removed; nothing was stored`,
    );
    observed(`action failed: ${FaultBed.failure(run)}`);
    await bed.noTarLeft();
    expect(await fsp.readdir(bed.h.dataDir)).not.toContain(SNAPSHOT_NAME);
    expect(bed.directOutputSockets()).toEqual([]);
    observed(await bed.afterFault(before, [run]));
  });

  test.each(['SIGKILL'] as const)(
    'charm: killed with %s mid-create; prune-backups cleans up',
    async (signal) => {
      expected(
        'the killed run leaves one upload (and no socket); list-backups shows it as unfinished (no backup listed complete); prune-backups stale-hours=0 aborts it',
      );
      const before = await bed.before();
      let release!: () => void;
      // Parts wait at the proxy: the upload is certainly in progress when the charm dies.
      bed.s3.addRule({
        op: 'UploadPart',
        fault: { kind: 'stall', release: new Promise<void>((r) => (release = r)) },
      });
      let key = '';
      const run = await bed.run('create-backup', {}, async () => {
        key = await bed.waitForUpload();
        await until('a part is held', () => bed.s3.stalled() > 0);
        const pid = await bed.dispatchPid();
        expect(pid).toBeDefined();
        process.kill(pid!, signal);
        observed(`charm (pid ${pid}) sent ${signal} with ${key} in progress`);
      });
      bed.s3.clearRules();
      release();
      expect(run.result.exitCode).toBeNull();
      expect(run.result.failed).toBe(false);
      observed(`dispatch ended by ${signal}, no action-fail`);
      await bed.noTarLeft();
      const snapshot = path.join(bed.h.dataDir, SNAPSHOT_NAME);
      const left = await fsp.stat(snapshot).then(
        () => true,
        () => false,
      );
      observed(left ? `${SNAPSHOT_NAME} left in the data dir` : 'no snapshot left');
      // The archive came over a socket beside Pebble's (workload-exec=pebble), whose file
      // goes as soon as tar connects: nothing of it is left.
      expect(bed.directOutputSockets()).toEqual([]);
      observed("no direct-output socket left beside Pebble's");

      const list = await bed.run('list-backups');
      expect(list.result.failed).toBe(false);
      const formatted = list.result.results.formatted as string;
      expect(formatted).toContain(`1 unfinished upload(s): ${key} since `);
      expect(formatted).not.toMatch(/\bcomplete\b/);
      observed(`list-backups: "${formatted.split('\n').at(-1)}"`);

      const prune = await bed.run('prune-backups', { 'stale-hours': 0 });
      expect(prune.result.failed).toBe(false);
      expect(prune.result.results['uploads-aborted']).toBe(key);
      observed(`prune-backups: uploads-aborted=${String(prune.result.results['uploads-aborted'])}`);
      expect(prune.result.logs).toContain(
        `removed what interrupted runs left in ${bed.h.dataDir}, if anything`,
      );
      observed(await bed.afterFault(before, [run, list, prune]));
    },
  );

  test('charm: SIGKILL mid-restore, after the swap, before the one-time keys; the next create-backup completes it', async () => {
    expected(
      'the killed restore leaves the swap journal; the next create-backup completes the swap (one-time keys deleted, previous files removed), says so in swap-recovery, starts Synapse and backs up the restored tree',
    );
    const create = await bed.run('create-backup');
    const id = FaultBed.succeeded(create);
    const yaml = path.join(bed.h.dataDir, 'homeserver.yaml');
    const backedUpYaml = await fsp.readFile(yaml, 'utf8');
    await fsp.writeFile(yaml, `${backedUpYaml}# changed after the backup\n`);
    // Right after the swap the restore removes the one-time keys and records that in the
    // journal, in one command (removeKeysAndSetPhaseCommand): its request is held before
    // Pebble runs it.
    const hold = bed.pebbleProxy.holdExec(
      (c) => c[0] === 'sh' && (c[2] ?? '').includes(`echo ${KEYS_DONE_MARK}`),
    );
    const restore = await bed.run('restore-backup', { 'backup-id': id }, async () => {
      await within('the swap to finish', hold.reached);
      const pid = await bed.dispatchPid();
      expect(pid).toBeDefined();
      process.kill(pid!, 'SIGKILL');
      observed(`charm (pid ${pid}) sent SIGKILL after the swap of ${id}`);
    });
    hold.release();
    expect(restore.result.exitCode).toBeNull();
    const left = (await fsp.readdir(bed.h.dataDir)).filter((n) => n.startsWith('.')).sort();
    expect(left).toContain('.synapse-swap.journal');
    observed(`left in the data dir: ${left.join(', ')}; synapse: ${await bed.synapseState()}`);

    const next = await bed.run('create-backup');
    expect(next.result.failed).toBe(false);
    const said = next.result.results['swap-recovery'] as string;
    expect(said).toBe(
      `an interrupted restore of backup ${id} (phase moved) was completed: the restored files stay`,
    );
    expect(next.result.logs).toContain(`warning: ${said}`);
    observed(`create-backup: swap-recovery="${said}"`);
    expect((await fsp.readdir(bed.h.dataDir)).filter((n) => n.startsWith('.'))).toEqual([]);
    expect(await fsp.readFile(yaml, 'utf8')).toBe(backedUpYaml);
    expect(inspectSqliteDb(path.join(bed.h.dataDir, 'homeserver.db')).oneTimeKeys).toBe(0);
    expect(await bed.synapseState()).toBe('active');
    observed(
      'data dir = the restored tree, no journal, staging or previous dir; 0 one-time keys; synapse: active',
    );
  });
});
