import { dirname } from 'node:path';
import { describeRetention } from '../../backup/retention';
import { removeLeftoversCommand } from '../../backup/scripts';
import { errorMessage } from '../../errors';
import { runCommand } from '../../workload/command';
import { removeStaleSockets } from '../../workload/pebble/direct-stream';
import { ActionFailure, booleanParam, type ActionHandler } from './context';

export const pruneBackups: ActionHandler = async (a) => {
  const dryRun = booleanParam(a, 'dry-run');
  const raw = a.params['stale-hours'] ?? 24;
  const staleHours = Number(raw);
  if (!Number.isFinite(staleHours) || staleHours < 0) {
    throw new ActionFailure(
      `stale-hours must be a number of hours >= 0, not ${JSON.stringify(raw)}`,
    );
  }
  const { engine, setup } = await a.engine();
  await a.log(
    `${dryRun ? 'dry run: ' : ''}pruning ${setup.description}: ${describeRetention(setup.retention)}; ` +
      `incomplete backups and unfinished uploads older than ${staleHours} h go`,
  );
  const result = await engine.prune(setup.retention, {
    dryRun,
    staleAfterSeconds: staleHours * 3600,
  });
  if (!dryRun) {
    // A charm killed mid-create or mid-restore leaves its database snapshot or staging
    // directory in the data dir. Juju runs one action at a time: none is in use now.
    const dataDir = a.overrides.dataDir;
    await runCommand(a.workload, removeLeftoversCommand(dataDir), 'removing leftovers').then(
      () => a.log(`removed what interrupted runs left in ${dataDir}, if anything`),
      (err: unknown) =>
        a.log(`could not remove what interrupted runs left in ${dataDir}: ${errorMessage(err)}`),
    );
    // ... and a charm killed mid-create, its direct-output socket beside Pebble's.
    const sockets = await removeStaleSockets(dirname(a.overrides.pebbleSocket));
    if (sockets.length > 0) await a.log(`removed stale sockets: ${sockets.join(', ')}`);
  }
  const list = (items: string[]) => (items.length ? items.join(', ') : 'none');
  return {
    'dry-run': String(result.dryRun),
    forgotten: list(result.forgotten),
    'incomplete-removed': list(result.incompleteRemoved),
    'uploads-aborted': list(result.uploadsAborted),
    kept: String(result.kept),
  };
};
