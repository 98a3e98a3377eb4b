import { requireBackupId, type ActionHandler } from './context';

export const deleteBackup: ActionHandler = async (a) => {
  const id = requireBackupId(a);
  const { engine, setup } = await a.engine();
  await a.log(`deleting backup ${id} from ${setup.description}`);
  const result = await engine.delete(id);
  return {
    'backup-id': result.backupId,
    'deleted-objects': String(result.deletedKeys.length),
    'deleted-keys': result.deletedKeys.join('\n'),
  };
};
