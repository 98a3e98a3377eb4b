import { describeStaleConfigPaths, staleKeysOf } from '../../backup/stale-paths';
import { describeSwapRecovery } from '../../backup/swap-journal';
import type { ActionResults } from '../../juju/hook-tools';
import { SERVICE_NAME } from '../overrides';
import { counted, formatBytes, formatSeconds, ProgressReporter } from '../format';
import { formatFirst } from '../../format';
import { serviceState } from '../synapse';
import { booleanParam, requireBackupId, type ActionHandler } from './context';

export const restoreBackup: ActionHandler = async (a) => {
  const id = requireBackupId(a);
  const reporter = new ProgressReporter(a.log, 'restore-backup');
  const { engine, setup } = await a.engine(reporter.onProgress, {
    stopped: () => a.unitStatus(`restoring backup ${id}: Synapse stopped`),
  });
  // Stop Synapse while its files are replaced, when it is in the plan at all
  // (a fresh unit without server-name has no service yet).
  let services: string[] = [];
  try {
    services = (await serviceState(a.workload)) ? [SERVICE_NAME] : [];
  } catch {
    services = [];
  }
  await a.unitStatus(
    services.length
      ? `restoring backup ${id}: staging it (Synapse still serves)`
      : `restoring backup ${id} ...`,
  );
  await a.log(
    `restoring backup ${id} from ${setup.description} into ${a.overrides.dataDir}` +
      (services.length ? ' (Synapse stops only while the files are swapped in)' : ''),
  );
  reporter.start();
  try {
    const result = await engine.restore({
      id,
      services,
      force: booleanParam(a, 'force'),
      keepPrevious: booleanParam(a, 'keep-previous'),
      expectedServerName: a.config.serverName,
    });
    const outside = result.replacedOutside ?? [];
    await a.log(
      `restored backup ${result.backupId}: ${counted(result.files, 'file')}, ${formatBytes(result.plaintextBytes)}` +
        (outside.length ? `; also restored ${outside.join(', ')}` : ''),
    );
    const results: ActionResults = {
      'backup-id': result.backupId,
      files: String(result.files),
      'plaintext-bytes': String(result.plaintextBytes),
      'duration-seconds': formatSeconds(result.durationSeconds),
    };
    if (result.oneTimeKeysRemoved !== undefined) {
      results['one-time-keys-removed'] = String(result.oneTimeKeysRemoved);
    }
    if (outside.length) {
      results['replaced-outside'] = formatFirst(outside);
      results['replaced-outside-count'] = String(outside.length);
    }
    if (result.previousPath) results['previous-path'] = result.previousPath;
    if (result.externalPreviousPaths?.length) {
      results['previous-external'] = formatFirst(result.externalPreviousPaths);
      results['previous-external-count'] = String(result.externalPreviousPaths.length);
    }
    if (result.notIncluded?.length) {
      for (const line of result.notIncluded) await a.log(`warning: ${line}`);
      results['not-included'] = result.notIncluded.join('; ');
    }
    if (result.staleConfigPaths) {
      // Only a backup made elsewhere (the CLI's of another dir) can hit this: the
      // charm always restores into its own data dir.
      const s = result.staleConfigPaths;
      const keys = staleKeysOf(s);
      const said = `${describeStaleConfigPaths(s, result.backupId)}: edit ${keys} in ${s.dataDir}/homeserver.yaml (in the synapse container) to name ${s.dataDir} instead of ${s.oldDataDir}, then restart Synapse`;
      await a.log(`warning: ${said}`);
      results['stale-config-paths'] = said;
      results['stale-config-keys'] = keys;
    }
    if (result.swapRecovery) {
      const said = describeSwapRecovery(result.swapRecovery);
      await a.log(`warning: ${said}`);
      results['swap-recovery'] = said;
    }
    return results;
  } finally {
    reporter.stop();
  }
};
