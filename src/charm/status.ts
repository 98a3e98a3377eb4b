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
import type { StatusName } from '../juju/hook-tools';
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
): UnitStatus {
  if (workload.kind === 'blocked') return { status: 'blocked', message: workload.message };
  if (workload.kind !== 'up') {
    const message = checkFailed
      ? `Synapse failed its Pebble check ${checkFailed} and Pebble restarts it: ${workload.message}`
      : workload.message;
    return { status: 'waiting', message };
  }
  return { status: 'active', message: backupMessage(backup) };
}
