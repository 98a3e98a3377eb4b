import { formatBytes, formatSeconds, ProgressReporter } from '../format';
import type { ActionHandler } from './context';

export const createBackup: ActionHandler = async (a) => {
  const reporter = new ProgressReporter(a.log, 'create-backup');
  const { engine, setup } = await a.engine(reporter.onProgress);
  await a.log(`creating a backup of ${a.overrides.dataDir} in ${setup.description}`);
  reporter.start();
  try {
    const result = await engine.create({});
    await a.log(
      `backup ${result.backupId} complete: ${result.files} files, ${formatBytes(result.plaintextBytes)} archived, ${formatBytes(result.size)} stored, ${formatSeconds(result.durationSeconds)} s`,
    );
    return {
      'backup-id': result.backupId,
      size: String(result.size),
      files: String(result.files),
      sha256: result.sha256,
      'duration-seconds': formatSeconds(result.durationSeconds),
    };
  } finally {
    reporter.stop();
  }
};
