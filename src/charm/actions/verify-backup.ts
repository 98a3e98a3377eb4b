import { counted, formatBytes, formatSeconds, ProgressReporter } from '../format';
import { requireBackupId, type ActionHandler } from './context';

export const verifyBackup: ActionHandler = async (a) => {
  const id = requireBackupId(a);
  const reporter = new ProgressReporter(a.log, 'verify-backup');
  const { engine, setup } = await a.engine(reporter.onProgress);
  await a.log(`verifying backup ${id} in ${setup.description}`);
  reporter.start();
  try {
    const result = await engine.verify(id);
    await a.log(
      `backup ${result.backupId} is intact: ${counted(result.files, 'file')}, ${formatBytes(result.plaintextBytes)}`,
    );
    return {
      'backup-id': result.backupId,
      files: String(result.files),
      'plaintext-bytes': String(result.plaintextBytes),
      sha256: result.sha256,
      'duration-seconds': formatSeconds(result.durationSeconds),
    };
  } finally {
    reporter.stop();
  }
};
