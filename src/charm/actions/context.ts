/** What every action handler gets, and how it fails. */
import type { BackupEngine } from '../../backup/engine';
import type { Progress } from '../../backup/types';
import type { JujuContext } from '../../juju/context';
import type { ActionResults, HookTools } from '../../juju/hook-tools';
import type { BackupSetup } from '../backup-setup';
import type { CharmConfig } from '../config';
import type { Overrides } from '../overrides';
import type { SynapseContainer } from '../synapse';

export interface ActionContext {
  ctx: JujuContext;
  tools: HookTools;
  overrides: Overrides;
  params: Record<string, unknown>;
  config: CharmConfig;
  workload: SynapseContainer;
  /** Resolves the backup settings and builds an engine; fails the action with what to configure. */
  engine(onProgress?: (p: Progress) => void): Promise<{
    engine: BackupEngine;
    setup: Extract<BackupSetup, { state: 'ready' }>;
  }>;
  /** action-log */
  log(message: string): Promise<void>;
}

export type ActionHandler = (a: ActionContext) => Promise<ActionResults>;

/** A failure whose message is already written for the operator. */
export class ActionFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ActionFailure';
  }
}

export function requireBackupId(a: ActionContext): string {
  const raw = a.params['backup-id'];
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
