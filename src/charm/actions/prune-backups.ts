import { serviceState } from '../synapse';
import { SERVICE_NAME } from '../overrides';
import { describeSwapRecovery } from '../../backup/swap-journal';
import { describeByServer, describeRetention } from '../../backup/retention';
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
  // Synapse, when in the plan, stops while an interrupted restore's swap is resolved.
  const services = await serviceState(a.workload).then(
    (state) => (state ? [SERVICE_NAME] : []),
    () => [],
  );
  const result = await engine.prune(setup.retention, {
    dryRun,
    staleAfterSeconds: staleHours * 3600,
    services,
  });
  if (!dryRun) {
    // The engine's prune removed what a charm killed mid-create or mid-restore left in the
    // data dir (its database snapshot, staging directories), holding the data dir's lock: no
    // other run was using them.
    const dataDir = a.overrides.dataDir;
    if (result.swapRecovery) await a.log(`warning: ${describeSwapRecovery(result.swapRecovery)}`);
    await a.log(
      result.leftoversRemoved
        ? `removed what interrupted runs left in ${dataDir}, if anything`
        : `could not remove what interrupted runs left in ${dataDir}: ${result.leftoversError}`,
    );
    // ... and a charm killed mid-create, its direct-output socket beside Pebble's
    // (Workload.removeStale, which the engine's prune calls).
    const sockets = result.staleRemoved;
    if (sockets.length > 0) await a.log(`removed stale sockets: ${sockets.join(', ')}`);
    if (result.staleError) await a.log(`could not remove stale sockets: ${result.staleError}`);
  }
  const list = (items: string[]) => (items.length ? items.join(', ') : 'none');
  return {
    'dry-run': String(result.dryRun),
    forgotten: list(result.forgotten),
    'incomplete-removed': list(result.incompleteRemoved),
    'uploads-aborted': list(result.uploadsAborted),
    'pending-removed': list(result.pendingRemoved),
    kept: String(result.kept),
    // Backups of several servers share the prefix: the policy applied to each server's own.
    ...(result.servers
      ? {
          'forgotten-by-server': describeByServer(result.servers, 'forgotten'),
          'kept-by-server': describeByServer(result.servers, 'kept'),
        }
      : {}),
    ...(result.swapRecovery ? { 'swap-recovery': describeSwapRecovery(result.swapRecovery) } : {}),
  };
};
