/**
 * Interrupted swaps. The restore's swap (scripts/swap.ts itemSwapCommand) keeps
 * a journal in the data dir, `.synapse-swap.journal`: the staging and previous
 * dirs' names, the backup id, whether the previous files are to be kept, the
 * phase reached and (format 2) the backup's items, inside the data dir or
 * outside it, written and flushed before the first rename and removed after
 * the last step. A process killed mid-swap (SIGKILL, a node that died) leaves
 * it behind; every operation on the data dir (create, restore, prune's
 * leftover removal) first resolves it here: it completes the swap when every
 * staged item was moved in, and rolls it back (the previous items return)
 * otherwise, so the data dir and the paths outside it are wholly the previous
 * or wholly the restored state. A format-1 journal (an earlier engine's swap,
 * which moved everything in the data dir) is rolled back as that engine did.
 */
import { BackupError, errorMessage } from '../errors';
import { commandFailure, execCollect, runCommand } from '../workload/command';
import { formatFirst } from '../format';
import type { EngineContext } from './context';
import { type SwapItem, externalCopiesOf, itemRollbackCommand } from './scripts/swap';
import {
  JOURNAL_NAME,
  KEYS_DONE_MARK,
  PREVIOUS_PREFIX,
  STAGING_PREFIX,
  type SwapPhase,
  readJournalCommand,
  removeJournalCommand,
  removeKeysAndSetPhaseCommand,
  removeTreeCommand,
  rollbackCommand,
} from './scripts';

/** What resolving an interrupted swap did (a result field of create, restore and prune). */
export interface SwapRecovery {
  /** `completed`: the restored files stay; `rolled-back`: the previous files are back. */
  outcome: 'completed' | 'rolled-back';
  /** The backup the interrupted restore was restoring ('' when the journal did not say). */
  backupId: string;
  /** The phase the journal recorded. */
  phase: SwapPhase;
  /** Completed with the previous files kept: where they are (an absolute path). */
  previousPath?: string;
  /** Completed with the previous files kept: those of items outside the data dir. */
  externalPreviousPaths?: string[];
  /** Completed: the paths outside the data dir it replaced (absent when none). */
  replacedOutside?: string[];
  /** Completed: one-time keys deleted now (undefined: none to delete, or done before). */
  oneTimeKeysRemoved?: number;
}

interface Journal {
  staging: string;
  previous: string;
  backup: string;
  keep: boolean;
  phase: SwapPhase;
  /** Items (entries, format 1) still staged; -1 when the staging dir is missing. */
  staged: number;
  /** 2: the swap moved only `items` (scripts/swap.ts); 1: everything in the data dir. */
  format: 1 | 2;
  items: SwapItem[];
}

const PHASES: readonly SwapPhase[] = [
  'moving-out',
  'moving-in',
  'moved',
  'keys-removed',
  'rolling-back',
];

/**
 * Completes or rolls back the swap an interrupted restore left in the data
 * dir (see above), with `services` stopped meanwhile and started after.
 * Returns undefined when there was none. Throws `unfinished-swap` when the
 * journal cannot be read or its swap cannot be resolved: the data dir is then
 * half-swapped, and create must not back it up.
 */
export async function resolveInterruptedSwap(
  ctx: EngineContext,
  services: string[] = [],
): Promise<SwapRecovery | undefined> {
  const text = await runCommand(
    ctx.workload,
    readJournalCommand(ctx.dataDir),
    'reading the swap journal',
  );
  if (!text.trim()) return undefined;
  const journal = parseJournal(ctx, text);
  // moving-in with a missing staging dir: someone removed it, and what it held is
  // lost; rolling back still yields the whole previous state.
  const complete =
    journal.phase === 'moved' ||
    journal.phase === 'keys-removed' ||
    (journal.phase === 'moving-in' && journal.staged === 0);
  await ctx.workload.stopServices(services);
  try {
    const recovery = complete ? await completeSwap(ctx, journal) : await rollBack(ctx, journal);
    await ctx.workload.startServices(services);
    return recovery;
  } catch (err) {
    throw new BackupError(
      'unfinished-swap',
      `${ctx.dataDir} holds an interrupted restore of backup ${journal.backup || '(unknown)'} (phase ${journal.phase}) that could not be ${complete ? 'completed' : 'rolled back'}: ${errorMessage(err)}`,
      {
        cause: err,
        remedy: {
          kind: 'advice',
          text: complete
            ? `the restored files are in place: finish by hand (remove ${journal.previous} once the data dir is right), then remove ${JOURNAL_NAME}`
            : `move the files of ${journal.previous} back into the data dir by hand, then remove ${JOURNAL_NAME}`,
        },
      },
    );
  }
}

async function completeSwap(ctx: EngineContext, journal: Journal): Promise<SwapRecovery> {
  const { workload, dataDir } = ctx;
  let oneTimeKeysRemoved: number | undefined;
  if (journal.phase !== 'keys-removed') {
    oneTimeKeysRemoved = await removeKeysAndRecordPhase(ctx, databaseOf(ctx, journal));
  }
  const previousPath = `${dataDir}/${journal.previous}`;
  const external = externalCopiesOf(journal.items, journal.staging, journal.previous);
  await runCommand(
    workload,
    removeTreeCommand(`${dataDir}/${journal.staging}`, ...external.staged),
    'removing the staging dir',
  );
  if (!journal.keep) {
    await runCommand(
      workload,
      // An earlier engine's journal: its copies have the names without the `~`.
      removeTreeCommand(
        previousPath,
        ...external.previous,
        ...external.companions,
        ...external.legacy,
      ),
      'removing the previous files',
    );
  }
  await runCommand(workload, removeJournalCommand(dataDir), 'removing the swap journal');
  const outside = journal.items.filter((i) => i.kind === 'root' || i.kind === 'rootdb');
  return {
    outcome: 'completed',
    backupId: journal.backup,
    phase: journal.phase,
    ...(outside.length ? { replacedOutside: outside.map((i) => i.name) } : {}),
    previousPath: journal.keep ? previousPath : undefined,
    ...(journal.keep && external.previous.length
      ? { externalPreviousPaths: external.previous }
      : {}),
    oneTimeKeysRemoved,
  };
}

async function rollBack(ctx: EngineContext, journal: Journal): Promise<SwapRecovery> {
  await runCommand(
    ctx.workload,
    journal.format === 2
      ? itemRollbackCommand(ctx.dataDir, journal.staging, journal.previous, journal.phase)
      : rollbackCommand(ctx.dataDir, journal.staging, journal.previous, journal.phase),
    'moving the previous files back',
  );
  return { outcome: 'rolled-back', backupId: journal.backup, phase: journal.phase };
}

/** A name the swap writes: `prefix` and more, a plain name in the data dir. */
function plainName(name: string, prefix: string): boolean {
  return name.startsWith(prefix) && !name.includes('/') && name.length > prefix.length;
}

/** The journal's lines; `unfinished-swap` when a name or the phase is not one the swap writes. */
function parseJournal(ctx: EngineContext, text: string): Journal {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) fields.set(line.slice(0, eq), line.slice(eq + 1));
  }
  const staging = fields.get('staging') ?? '';
  const previous = fields.get('previous') ?? '';
  const phase = fields.get('phase') as SwapPhase;
  if (
    !plainName(staging, STAGING_PREFIX) ||
    !plainName(previous, PREVIOUS_PREFIX) ||
    !PHASES.includes(phase)
  ) {
    throw unreadableJournal(ctx, text, fields);
  }
  return {
    staging,
    previous,
    backup: fields.get('backup') ?? '',
    keep: fields.get('keep') === '1',
    phase,
    staged: Number(fields.get('staged') ?? '-1'),
    format: fields.get('format') === '2' ? 2 : 1,
    items: journalItems(ctx, text),
  };
}

/**
 * `unfinished-swap` for a journal whose names or phase are not the swap's: says
 * in words what is wrong, what the journal still tells (backup, previous dir,
 * whether the staging dir is there: the read command's `staged=N`, -1 when
 * gone, is never quoted), and what to check by hand.
 */
function unreadableJournal(
  ctx: EngineContext,
  text: string,
  fields: ReadonlyMap<string, string>,
): BackupError {
  const quote = (value: string) => JSON.stringify(value.slice(0, 100));
  const staging = fields.get('staging') ?? '';
  const previous = fields.get('previous') ?? '';
  const phase = fields.get('phase') ?? '';
  const wrong: string[] = [];
  const known: string[] = [];
  const empty = !text.replace(/^staged=-?\d+$/m, '').trim();
  if (empty) {
    wrong.push('it is empty');
  } else {
    if (!staging) wrong.push('it names no staging dir');
    else if (!plainName(staging, STAGING_PREFIX))
      wrong.push(`its staging dir ${quote(staging)} is not a ${STAGING_PREFIX}<time> name`);
    if (!previous) wrong.push('it names no previous dir');
    else if (!plainName(previous, PREVIOUS_PREFIX))
      wrong.push(`its previous dir ${quote(previous)} is not a ${PREVIOUS_PREFIX}<time> name`);
    if (!phase) wrong.push('it records no phase');
    else if (!PHASES.includes(phase as SwapPhase))
      wrong.push(`its phase ${quote(phase)} is not one the swap writes`);
    const backup = fields.get('backup');
    if (backup) known.push(`backup ${/^[\w.-]{1,100}$/.test(backup) ? backup : quote(backup)}`);
    if (plainName(previous, PREVIOUS_PREFIX)) known.push(`its previous files in ${previous}`);
    const outside =
      text.match(/^root(db)?=\/.*$/gm)?.map((l) => l.replace(/^root(db)?=/, '')) ?? [];
    if (outside.length) known.push(`its paths outside the data dir ${formatFirst(outside)}`);
    const staged = Number(fields.get('staged') ?? '-1');
    if (plainName(staging, STAGING_PREFIX)) {
      const what =
        fields.get('format') === '2'
          ? `${staged} of its items`
          : `${staged} ${staged === 1 ? 'entry' : 'entries'}`;
      known.push(`its staging dir ${staging} ${staged < 0 ? 'is gone' : `still holds ${what}`}`);
    }
  }
  const told = known.length
    ? `; it records ${known.length > 1 ? `${known.slice(0, -1).join(', ')}, and ${known[known.length - 1]}` : known[0]}`
    : '';
  return new BackupError(
    'unfinished-swap',
    `${ctx.dataDir}/${JOURNAL_NAME} records an interrupted restore but cannot be read: ${wrong.join('; ')}${told}`,
    {
      remedy: {
        kind: 'advice',
        text: `${empty ? 'it records no step, so nothing says how far a swap got' : 'the swap it records may be half done'}: compare the data dir with its ${PREVIOUS_PREFIX}* dirs (the files the swap moved aside) and any ${STAGING_PREFIX}* dir (restored files not yet moved in), and each path outside the data dir with its ${PREVIOUS_PREFIX}<time>-<name>~ and ${STAGING_PREFIX}<time>-<name> beside it; put back by hand what belongs, then remove ${JOURNAL_NAME} and run again`,
      },
    },
  );
}

/** A format-2 journal's items; `unfinished-swap` for a name that could leave its place. */
function journalItems(ctx: EngineContext, text: string): SwapItem[] {
  const items: SwapItem[] = [];
  for (const line of text.split('\n')) {
    const m = /^(item|db|root|rootdb)=(.*)$/.exec(line);
    if (!m) continue;
    const kind = m[1] as SwapItem['kind'];
    const name = m[2];
    const parts = name.split('/');
    const absolute = kind === 'root' || kind === 'rootdb';
    const steps = absolute ? parts.slice(1) : parts;
    if ((parts[0] === '') !== absolute || steps.some((p) => p === '' || p === '.' || p === '..')) {
      throw new BackupError(
        'unfinished-swap',
        `${ctx.dataDir}/${JOURNAL_NAME} names an item that is not a plain path (${JSON.stringify(line)})`,
        {
          remedy: {
            kind: 'advice',
            text: `check the data dir by hand, then remove ${JOURNAL_NAME}`,
          },
        },
      );
    }
    items.push({ kind, name });
  }
  return items;
}

/** The restored SQLite database's path: the journal's (format 2), else homeserver.db. */
function databaseOf(ctx: EngineContext, journal: Journal): string | undefined {
  if (journal.format === 1) return `${ctx.dataDir}/homeserver.db`;
  const db = journal.items.find((i) => i.kind === 'db' || i.kind === 'rootdb');
  if (!db) return undefined;
  return db.kind === 'db' ? `${ctx.dataDir}/${db.name}` : db.name;
}

/**
 * Deletes the restored one-time keys from the SQLite database at `db` (none: no
 * database restored), then sets the journal's phase `keys-removed`, in one workload
 * command (scripts/restore.ts removeKeysAndSetPhaseCommand). Returns the keys
 * removed (undefined without a database at `db`). Throws WorkloadCommandError
 * as the two steps did: "removing one-time keys from the restored database
 * exited with status N: ..." or "recording the swap journal phase exited ...".
 */
export async function removeKeysAndRecordPhase(
  ctx: EngineContext,
  db: string | undefined,
): Promise<number | undefined> {
  const result = await execCollect(ctx.workload, {
    command: removeKeysAndSetPhaseCommand(ctx.dataDir, db, 'keys-removed'),
  });
  const lines = result.stdout.split('\n');
  if (result.exitCode !== 0) {
    const what = lines.includes(KEYS_DONE_MARK)
      ? 'recording the swap journal phase'
      : 'removing one-time keys from the restored database';
    throw commandFailure(what, result.status, result.stderr);
  }
  const keys = lines.find((line) => line.startsWith('keys='));
  if (keys === undefined) return undefined;
  const count = keys.slice('keys='.length).trim();
  return count ? Number(count) : 0;
}

/** One line for logs and action output: what resolving the interrupted swap did. */
export function describeSwapRecovery(recovery: SwapRecovery): string {
  const what = `an interrupted restore of backup ${recovery.backupId || '(unknown)'} (phase ${recovery.phase})`;
  if (recovery.outcome === 'rolled-back')
    return `${what} was rolled back: the previous files are back`;
  const kept = recovery.previousPath
    ? `; the previous files are kept in ${[recovery.previousPath, ...(recovery.externalPreviousPaths ?? [])].join(', ')}`
    : '';
  const outside = recovery.replacedOutside?.length
    ? `, also at ${formatFirst(recovery.replacedOutside)}`
    : '';
  return `${what} was completed: the restored files stay${outside}${kept}`;
}
