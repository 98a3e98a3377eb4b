/**
 * The restore's swap, with Synapse stopped: the backup's items (items.ts) go
 * in by renames, the live copies of exactly those items go aside (with a
 * database's -wal, -shm and -journal), everything else in the data dir stays.
 * Journaled (scripts/swap.ts, swap-journal.ts): a process killed mid-swap
 * leaves a journal that the next operation resolves.
 */
import { errorMessage } from '../errors';
import { fileExists, runCommand } from '../workload/command';
import type { EngineContext } from './context';
import { JOURNAL_NAME, removeTreeCommand } from './scripts';
import {
  type SwapItem,
  externalCopiesOf,
  itemRollbackCommand,
  itemSwapCommand,
} from './scripts/swap';
import { removeKeysAndRecordPhase } from './swap-journal';

/** The hidden directories of one restore, as names in the data dir. */
export interface RestoreDirs {
  staging: string;
  previous: string;
  /** The backup restored and whether the previous files are kept: for the journal. */
  backupId: string;
  keepPrevious: boolean;
  /** The archive had a `./` entry: its owner, group and mode are the data dir's at backup time. */
  rootFromArchive?: boolean;
}

/** What to swap: the archive's items and the directories above them it holds. */
export interface SwapPlan {
  items: SwapItem[];
  parents: string[];
}

/** The SQLite database among `items` (an absolute path), if there is one. */
export function restoredDatabase(dataDir: string, items: readonly SwapItem[]): string | undefined {
  const db = items.find((i) => i.kind === 'db' || i.kind === 'rootdb');
  if (!db) return undefined;
  return db.kind === 'db' ? `${dataDir}/${db.name}` : db.name;
}

/**
 * With `services` stopped: moves the items' live copies aside and the staged
 * ones in, removes the one-time keys, and starts the services again. A
 * failure after the swap moves the previous files back; any failure removes
 * the staging directory and starts the services, unless the swap was left
 * unfinished (its journal is there: Synapse then stays stopped). Returns the
 * one-time keys removed. `stopped`, once the services are stopped and before
 * anything moves (running.ts refuseOpenDatabases): when it throws, the staged
 * copies go, the services start again and its error is thrown.
 */
export async function swapIn(
  ctx: EngineContext,
  services: string[],
  dirs: RestoreDirs,
  plan: SwapPlan,
  stopped?: () => Promise<void>,
): Promise<number | undefined> {
  const { workload, dataDir } = ctx;
  await workload.stopServices(services);
  if (stopped) await beforeTheSwap(ctx, services, dirs, plan, stopped);
  try {
    await runCommand(
      workload,
      itemSwapCommand(dataDir, dirs.staging, dirs.previous, {
        items: plan.items,
        parents: plan.parents,
        rootFromArchive: dirs.rootFromArchive,
        backupId: dirs.backupId,
        keepPrevious: dirs.keepPrevious,
      }),
      `moving the restored files into ${dataDir}`,
    );
    try {
      const removed = await removeKeysAndRecordPhase(ctx, restoredDatabase(dataDir, plan.items));
      await workload.startServices(services);
      return removed;
    } catch (err) {
      await workload.stopServices(services).catch(() => undefined);
      await runCommand(
        workload,
        itemRollbackCommand(dataDir, dirs.staging, dirs.previous, 'moved'),
        'moving the previous files back',
      );
      throw err;
    }
  } catch (err) {
    // A journal still there means the swap was cut off (the transport lost, the
    // rollback failed): its staging dir may hold restored files, and the next
    // operation resolves it (swap-journal.ts).
    if (await fileExists(workload, `${dataDir}/${JOURNAL_NAME}`).catch(() => true)) {
      // Synapse stays stopped: started on a half-swapped data dir it could make a new,
      // empty database where the swapped-out one should be.
      if (err instanceof Error) {
        const stopped = services.length ? `, so ${services.join(', ')} stays stopped` : '';
        err.message += `; the swap is unfinished${stopped}: the next create, restore or prune completes or rolls it back`;
      }
    } else {
      await removeTree(ctx, [`${dataDir}/${dirs.staging}`], err);
      await workload.startServices(services).catch(() => undefined);
    }
    throw err;
  }
}

/** Runs `check` with the services stopped; on its failure cleans up and starts them again. */
async function beforeTheSwap(
  ctx: EngineContext,
  services: string[],
  dirs: RestoreDirs,
  plan: SwapPlan,
  check: () => Promise<void>,
): Promise<void> {
  try {
    await check();
  } catch (err) {
    const { staged } = externalCopiesOf(plan.items, dirs.staging, dirs.previous);
    await removeTree(ctx, [`${ctx.dataDir}/${dirs.staging}`, ...staged], err);
    const started = await ctx.workload.startServices(services).then(
      () => `${services.join(', ')} started again`,
      (e: unknown) => `${services.join(', ')} could not be started again: ${errorMessage(e)}`,
    );
    if (err instanceof Error) err.message += `; ${started}`;
    throw err;
  }
}

/** Removes trees the engine made; a failure is added to `cause`'s story rather than hiding it. */
export async function removeTree(
  ctx: EngineContext,
  paths: string[],
  cause?: unknown,
): Promise<void> {
  try {
    await runCommand(ctx.workload, removeTreeCommand(...paths), `removing ${paths.join(', ')}`);
  } catch (err) {
    if (cause instanceof Error)
      cause.message += `; also could not remove ${paths.join(', ')}: ${errorMessage(err)}`;
    else throw err;
  }
}
