import { describeRetention } from '../../backup/retention';
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
  const list = (items: string[]) => (items.length ? items.join(', ') : 'none');
  return {
    'dry-run': String(result.dryRun),
    forgotten: list(result.forgotten),
    'incomplete-removed': list(result.incompleteRemoved),
    'uploads-aborted': list(result.uploadsAborted),
    kept: String(result.kept),
  };
};
