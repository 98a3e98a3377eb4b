/**
 * The unit status from Synapse's state and the backups' health.
 *
 * Rules (Juju's status names: https://documentation.ubuntu.com/juju/3.6/reference/status/):
 * - blocked: the operator must act (server-name unset or changed, a failed
 *   generate step, a second unit);
 * - waiting: Pebble or Synapse is not there yet, or Synapse does not answer
 *   /health (after a Pebble check failure, saying Pebble restarts it);
 * - active: Synapse answers /health; the message says how backups are
 *   ("backups: s3://... (from config)", "backups: <problem>", or
 *   "backups not configured"). Backups never make the unit blocked.
 */
import type { HookTools, StatusName } from '../juju/hook-tools';
import type { BackupHealth } from './backup-status';
import type { WorkloadState } from './synapse';

export interface UnitStatus {
  status: StatusName;
  message: string;
}

export function serverNameUnset(app: string): string {
  return `server-name is not set: juju config ${app} server-name=<matrix domain> (it cannot be changed later)`;
}

/** One homeserver per application: what a non-leader unit says. */
export function singleUnitMessage(app: string): string {
  return `Synapse runs as a single unit: scale back to 1 (juju scale-application ${app} 1)`;
}

/** A `<container>-pebble-check-failed` hook's check name, when this hook is one. */
export function failedCheck(hookName: string, checkName: string | undefined): string | undefined {
  return /-pebble-check-failed$/.test(hookName) ? (checkName ?? 'health') : undefined;
}

export function backupMessage(backup: BackupHealth): string {
  if (backup.kind === 'ok') return `backups: ${backup.description}`;
  if (backup.kind === 'problem') return `backups: ${backup.message}`;
  return 'backups not configured';
}

/**
 * The status for a leader unit. `checkFailed` names the Pebble check whose
 * failure this hook reports, if any.
 */
export function composeStatus(
  workload: WorkloadState,
  backup: BackupHealth,
  checkFailed?: string,
  notes: string[] = [],
): UnitStatus {
  if (workload.kind === 'blocked') return { status: 'blocked', message: workload.message };
  if (workload.kind !== 'up') {
    const message = checkFailed
      ? `Synapse failed its Pebble check ${checkFailed} and Pebble restarts it: ${workload.message}`
      : workload.message;
    return { status: 'waiting', message };
  }
  return { status: 'active', message: [...notes, backupMessage(backup)].join('; ') };
}

/** The peer relation (metadata.yaml): its other units are units that must not run Synapse. */
export const PEER_ENDPOINT = 'synapse-peers';

/** How many other units the application has (from the peer relation); 0 when unknown. */
export async function otherUnits(tools: HookTools): Promise<number> {
  try {
    const [id] = await tools.relationIds(PEER_ENDPOINT);
    if (!id) return 0;
    return (await tools.relationList(Number(id.slice(id.lastIndexOf(':') + 1)))).length;
  } catch {
    return 0;
  }
}

/**
 * The application status the leader sets beside its unit status: the unit's
 * own, unless other units exist (then blocked: one homeserver per application).
 */
export function applicationStatus(unit: UnitStatus, others: number, app: string): UnitStatus {
  if (others === 0) return unit;
  return { status: 'blocked', message: `${others + 1} units: ${singleUnitMessage(app)}` };
}

/**
 * Sets the unit status and, on the leader, the application status
 * (applicationStatus); `others` is otherUnits() when already known.
 */
export async function publishStatus(
  tools: HookTools,
  app: string,
  unit: UnitStatus,
  leader: boolean,
  others?: number,
): Promise<void> {
  await tools.statusSet(unit.status, unit.message);
  if (!leader) return;
  const appStatus = applicationStatus(unit, others ?? (await otherUnits(tools)), app);
  await tools.statusSet(appStatus.status, appStatus.message, { app: true });
}
