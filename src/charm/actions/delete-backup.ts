import { requireBackupId, type ActionHandler } from './context';

export const deleteBackup: ActionHandler = async (a) => {
  const id = requireBackupId(a);
  const { engine, setup } = await a.engine();
  await a.log(`deleting backup ${id} from ${setup.description}`);
  const result = await engine.delete(id);
  if (result.interruptedRunSince) {
    await a.log(
      `backup ${id} was an interrupted create's (pending marker from ${result.interruptedRunSince}): its marker and any upload it left were removed`,
    );
  }
  return {
    'backup-id': result.backupId,
    'deleted-objects': String(result.deletedKeys.length),
    'deleted-keys': result.deletedKeys.join('\n'),
    ...(result.interruptedRunSince ? { 'interrupted-run-since': result.interruptedRunSince } : {}),
  };
};
