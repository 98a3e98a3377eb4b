/**
 * Items outside the data dir (issue #15): a backup archives them as
 * `@external/<absolute path>` and its manifest (version 2) lists them as
 * `roots`; a restore extracts them into the data dir's staging dir with the
 * rest, stages each beside its target (scripts/external.ts) and swaps it there
 * (scripts/swap.ts), on the target's own filesystem.
 */
import { posix } from 'node:path';
import { BackupError } from '../errors';
import { runCommand } from '../workload/command';
import type { EngineContext } from './context';
import { EXTERNAL_PREFIX, externalPath, memberName } from './items';
import type { Manifest } from './manifest';
import type { RestoreDirs, SwapPlan } from './restore-swap';
import { stageExternalCommand } from './scripts/external';
import { externalCopiesOf } from './scripts/swap';
import { type EntryPolicy, confinedEntryPolicy } from './tar';

/**
 * The manifest's external roots as archive names, checked: each is
 * `@external` + an absolute, normal path without a newline that neither is
 * nor holds the data dir (`dataDir`). Throws `corrupt` naming the bad one.
 */
export function manifestRoots(
  manifest: Manifest | undefined,
  id: string,
  dataDir: string,
): string[] {
  const roots = manifest?.roots ?? [];
  if (!Array.isArray(roots))
    throw new BackupError('corrupt', `backup ${id}'s manifest has unreadable roots`);
  return roots.map((root) => {
    const path = typeof root?.path === 'string' ? root.path : '';
    const ok =
      root?.name === `${EXTERNAL_PREFIX}${path}` &&
      path.startsWith('/') &&
      path !== '/' &&
      posix.normalize(path) === path &&
      !path.endsWith('/') &&
      !path.includes('\n') &&
      path !== dataDir &&
      !dataDir.startsWith(`${path}/`);
    if (!ok) {
      throw new BackupError(
        'corrupt',
        `backup ${id}'s manifest lists a path outside the data dir that cannot be restored (${JSON.stringify(root)}): refused`,
      );
    }
    return root.name;
  });
}

/**
 * Restore's entry policy: confinedEntryPolicy over the manifest's roots
 * (manifestRoots). Without a manifest (allow-no-manifest, meant for the Python
 * charm's backups, which hold the data dir only), the first `@external/...` entry
 * fails the restore with `corrupt`, saying that only the manifest this engine
 * wrote says which outside paths a restore may replace, with a `decrypt` remedy.
 */
export function restoreEntryPolicy(
  manifest: Manifest | undefined,
  id: string,
  dataDir: string,
): EntryPolicy {
  const policy = confinedEntryPolicy({ roots: manifestRoots(manifest, id, dataDir) });
  if (manifest) return policy;
  return (entry) => {
    const path = externalPath(memberName(entry.name));
    if (path !== undefined) {
      throw new BackupError(
        'corrupt',
        `backup ${id} has no manifest and holds a path outside the data dir (${path}): --allow-no-manifest restores a backup of the data dir only (the original charm's), and only the manifest this engine writes says which outside paths a restore may replace; nothing was restored`,
        { remedy: { kind: 'decrypt', id } },
      );
    }
    return policy(entry);
  };
}

/** The plan's items outside the data dir, as absolute paths. */
export function externalTargets(plan: SwapPlan): string[] {
  return plan.items.filter((i) => i.kind === 'root' || i.kind === 'rootdb').map((i) => i.name);
}

/** Where the plan's external items are staged and kept (beside each target; a database's companions too). */
export function externalCopies(
  plan: SwapPlan,
  dirs: RestoreDirs,
): { staged: string[]; previous: string[]; companions: string[] } {
  return externalCopiesOf(plan.items, dirs.staging, dirs.previous);
}

/** Stages the plan's external items beside their targets (nothing without any). */
export async function stageExternal(
  ctx: EngineContext,
  dirs: RestoreDirs,
  plan: SwapPlan,
): Promise<void> {
  const targets = externalTargets(plan);
  if (targets.length === 0) return;
  await runCommand(
    ctx.workload,
    stageExternalCommand(ctx.dataDir, dirs.staging, targets),
    `staging ${targets.join(', ')} beside ${targets.length > 1 ? 'their targets' : 'its target'}`,
  );
}

/**
 * Refuses (`--force` overrides it: restore.ts) a backup with roots outside the data dir restored
 * into another data dir than the one it was taken of (a scratch dir, another
 * installation): its roots would land at this host's paths all the same.
 */
export function refuseRootsElsewhere(
  manifest: Manifest | undefined,
  id: string,
  dataDir: string,
): void {
  const roots = manifest?.roots ?? [];
  if (roots.length === 0 || !manifest?.dataDir || manifest.dataDir === dataDir) return;
  throw new BackupError(
    'wrong-server',
    `backup ${id} was taken of ${manifest.dataDir} and also restores ${roots.map((r) => r.path).join(', ')}, outside it; restoring it into ${dataDir} would replace those paths on this host too`,
    {
      remedy: {
        kind: 'run-again',
        option: 'force',
        when: 'if those paths are the ones to replace',
      },
    },
  );
}

/**
 * A backup taken under a PostgreSQL config holds the media and keys but not the
 * database (manifest `notIncluded`): restoring it over a database that stays as it
 * is now deletes media that database still refers to. Refused (`not-included`);
 * `--force` overrides it (restore.ts), saying the database was restored from its dump of that time.
 */
export function refuseWithoutDatabase(manifest: Manifest | undefined, id: string): void {
  const notIncluded = manifest?.notIncluded ?? [];
  if (notIncluded.length === 0) return;
  throw new BackupError(
    'not-included',
    `backup ${id} does not hold everything Synapse needs (${notIncluded.join('; ')}); restoring it alone over the live database would delete media that database still refers to; nothing was changed`,
    {
      remedy: {
        kind: 'run-again',
        option: 'force',
        when: 'once the database is restored from its dump of the same time',
      },
    },
  );
}
