import { SERVICE_NAME } from '../overrides';
import { serviceState } from '../synapse';
import { describeSwapRecovery } from '../../backup/swap-journal';
import { counted, formatBytes, formatSeconds, ProgressReporter } from '../format';
import { formatFirst } from '../../format';
import { describeByServer, describeRetention } from '../../backup/retention';
import { summarizeNotes } from '../../backup/notes';
import type { ActionResults } from '../../juju/hook-tools';
import { describeForCharm } from '../remedy';
import type { ActionContext, ActionHandler } from './context';

export const createBackup: ActionHandler = async (a) => {
  const reporter = new ProgressReporter(a.log, 'create-backup');
  const { engine, setup } = await a.engine(reporter.onProgress);
  await a.log(`creating a backup of ${a.overrides.dataDir} in ${setup.description}`);
  reporter.start();
  try {
    // Synapse, when in the plan: an interrupted restore may have left it stopped.
    const services = await serviceState(a.workload).then(
      (state) => (state ? [SERVICE_NAME] : []),
      () => [],
    );
    const result = await engine.create({ services });
    await a.log(
      `backup ${result.backupId} complete: ${counted(result.files, 'file')}, ${formatBytes(result.plaintextBytes)} archived, ${formatBytes(result.size)} stored, ${formatSeconds(result.durationSeconds)} s`,
    );
    const results: ActionResults = {
      'backup-id': result.backupId,
      size: String(result.size),
      files: String(result.files),
      sha256: result.sha256,
      'duration-seconds': formatSeconds(result.durationSeconds),
    };
    if (result.skippedCount > 0) {
      // Bounded (20 listed): a million FIFOs must not blow action-set's argv.
      const said = summarizeNotes(result.skipped, result.skippedCount);
      const what =
        result.skippedCount === 1
          ? '1 entry (a restore refuses it; it holds no data)'
          : `${result.skippedCount} entries (a restore refuses them; they hold no data)`;
      await a.log(`left out ${what}: ${said}`);
      results.skipped = String(result.skippedCount);
      results['skipped-paths'] = said;
    }
    if (result.warningsCount > 0) {
      const said = summarizeNotes(result.warnings, result.warningsCount);
      await a.log(`warning: media changed or removed while being read (Synapse was live): ${said}`);
      results.warnings = String(result.warningsCount);
      results['warning-paths'] = said;
    }
    // What homeserver.yaml names that this backup does not hold (issue #15).
    for (const [key, lines] of [
      ['not-included', result.notIncluded],
      ['missing', result.missing],
    ] as const) {
      if (!lines?.length) continue;
      for (const line of lines) await a.log(`warning: ${line}`);
      results[key] = lines.join('; ');
    }
    if (result.noHomeserverYaml) {
      // The charm's data dir is fixed: its homeserver.yaml comes with server-name.
      const said = `${result.noHomeserverYaml}; the charm generates ${a.overrides.dataDir}/homeserver.yaml once server-name is set`;
      await a.log(`warning: ${said}`);
      results['no-homeserver-yaml'] = said;
    }
    if (result.archivedOutside) {
      const said = formatFirst(result.archivedOutside);
      await a.log(`also archived, outside the data dir (homeserver.yaml names them): ${said}`);
      results['archived-outside'] = said;
    }
    if (result.swapRecovery) {
      const said = describeSwapRecovery(result.swapRecovery);
      await a.log(`warning: ${said}`);
      results['swap-recovery'] = said;
    }
    if (setup.retention.keepLast !== undefined || setup.retention.keepDays !== undefined) {
      await applyRetention(a, engine, setup, result.backupId, results);
    }
    return results;
  } finally {
    reporter.stop();
  }
};

type Engine = Awaited<ReturnType<ActionContext['engine']>>['engine'];
type Setup = Awaited<ReturnType<ActionContext['engine']>>['setup'];

/**
 * backup-retention after a complete backup `backupId`, into `results` (`pruned`, and
 * `pruned-by-server` when several servers share the prefix). The backup is good
 * whatever happens here: a failed prune is reported (`prune-error`), not fatal.
 */
async function applyRetention(
  a: ActionContext,
  engine: Engine,
  setup: Setup,
  backupId: string,
  results: ActionResults,
): Promise<void> {
  try {
    // Retention only: create itself has just removed the data dir's leftovers.
    const pruned = await engine.prune(setup.retention, { workloadLeftovers: false });
    const removed = [...pruned.forgotten, ...pruned.incompleteRemoved];
    // Backups of several servers share the prefix: the policy applied to each server's own.
    const byServer = pruned.servers && describeByServer(pruned.servers, 'forgotten');
    const each = byServer ? ' of each server' : '';
    await a.log(
      `backup-retention (${describeRetention(setup.retention)}${each}): removed ${removed.length ? removed.join(', ') : 'nothing'}${byServer ? ` (by the policy, by server: ${byServer})` : ''}`,
    );
    results.pruned = removed.join(', ');
    if (byServer) results['pruned-by-server'] = byServer;
  } catch (err) {
    const message = `backup ${backupId} is complete, but applying backup-retention failed: ${describeForCharm(err, setup.settingsSource)}; run prune-backups to retry`;
    await a.log(message);
    results['prune-error'] = message;
  }
}
