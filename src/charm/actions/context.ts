/** What every action handler gets, and how it fails. */
import type { BackupEngine } from '../../backup/engine';
import type { Progress } from '../../backup/types';
import type { JujuContext } from '../../juju/context';
import { BackupError, errorMessage, InterruptedError } from '../../errors';
import { ActionResultError, type ActionResults, type HookTools } from '../../juju/hook-tools';
import { describeForCharm } from '../remedy';
import type { BackupSetup } from '../backup-setup';
import type { CharmConfig } from '../config';
import type { Overrides } from '../overrides';
import type { SynapseContainer } from '../synapse';
import type { Workload } from '../../workload/workload';

/** Called when the backup engine stops the services it was given (restore's swap). */
export interface ServiceHooks {
  stopped?(names: string[]): Promise<void>;
}

/** The workload with `hooks.stopped` called after its services stop. */
export function withServiceHooks(workload: Workload, hooks?: ServiceHooks): Workload {
  if (!hooks?.stopped) return workload;
  const stopped = hooks.stopped;
  return {
    description: workload.description,
    exec: (options) => workload.exec(options),
    stopServices: async (names) => {
      await workload.stopServices(names);
      if (names.length) await stopped(names);
    },
    startServices: (names) => workload.startServices(names),
    serviceStatus: (names) => workload.serviceStatus(names),
    ...(workload.removeStale ? { removeStale: () => workload.removeStale!() } : {}),
  };
}

export interface ActionContext {
  ctx: JujuContext;
  tools: HookTools;
  overrides: Overrides;
  params: Record<string, unknown>;
  config: CharmConfig;
  workload: SynapseContainer;
  /** Resolves the backup settings and builds an engine; fails the action with what to configure. */
  engine(
    onProgress?: (p: Progress) => void,
    hooks?: ServiceHooks,
  ): Promise<{
    engine: BackupEngine;
    setup: Extract<BackupSetup, { state: 'ready' }>;
  }>;
  /** action-log */
  log(message: string): Promise<void>;
  /** Sets the unit's status (maintenance) while the action runs; the charm restores it after. */
  unitStatus(message: string): Promise<void>;
  /** Registers a generated secret that only the action results may carry (redacted elsewhere). */
  revealInResults(value: string): void;
}

export type ActionHandler = (a: ActionContext) => Promise<ActionResults>;

/** A failure whose message is already written for the operator. */
export class ActionFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ActionFailure';
  }
}

/** The action-fail text for `err` (not yet redacted); `unit` (e.g. "synapse/0") for `juju ssh` remedies. */
export function actionFailureMessage(name: string, err: unknown, unit?: string): string {
  if (err instanceof ActionFailure) return err.message;
  if (err instanceof InterruptedError) {
    return `${name} was interrupted (${err.signalName})${err.cleanedUp ? `: ${err.cleanedUp}` : ''}`;
  }
  if (err instanceof BackupError) {
    if (err.code === 'not-found' && !err.remedy && !/list-backups/.test(err.message)) {
      return `${err.message}; run list-backups to see the backups that exist`;
    }
    return describeForCharm(err, undefined, unit);
  }
  if (err instanceof ActionResultError)
    return `${name} produced results Juju cannot take: ${err.message}`;
  return `${name} failed unexpectedly: ${errorMessage(err)}; see juju debug-log`;
}

/**
 * The backup-id param as a string. `juju run ... backup-id=20261126070000` reads the
 * value as YAML (juju/juju#1566), so an all-digit id arrives as an integer, which
 * actions.yaml accepts (type [string, integer]) and this turns back into its digits.
 * A number that does not round-trip (beyond 2^53, a float) fails with how to quote it.
 */
export function requireBackupId(a: ActionContext): string {
  const raw = a.params['backup-id'];
  if (typeof raw === 'number' && !Number.isSafeInteger(raw)) {
    throw new ActionFailure(
      `backup-id ${String(raw)} was read as a number (juju run reads key=value as YAML): quote it, e.g. juju run ${a.ctx.unitName} ${a.ctx.actionName} backup-id="'<id>'", or pass --string-args`,
    );
  }
  const id = typeof raw === 'string' ? raw.trim() : raw === undefined ? '' : String(raw).trim();
  if (!id) {
    throw new ActionFailure(
      `backup-id is required: juju run ${a.ctx.unitName} ${a.ctx.actionName} backup-id=<id> (list-backups shows the ids)`,
    );
  }
  return id;
}

/** A boolean action param: Juju passes JSON booleans; accept "true"/"false" too. */
export function booleanParam(a: ActionContext, name: string): boolean {
  const raw = a.params[name];
  if (raw === undefined || raw === null || raw === false || raw === 'false') return false;
  if (raw === true || raw === 'true') return true;
  throw new ActionFailure(`${name} must be true or false, not ${JSON.stringify(raw)}`);
}
