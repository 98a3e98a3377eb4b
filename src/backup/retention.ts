import { ConfigError } from '../errors';
import type { BackupInfo } from './types';

/**
 * Which complete backups to keep, in restic's terms: `keep-last=N` keeps the
 * N newest, `keep-days=D` keeps every backup younger than D days. A backup is
 * kept when any rule keeps it; the newest complete backup is always kept.
 * Written `keep-last=7,keep-days=30`; empty keeps everything.
 */
export interface RetentionPolicy {
  keepLast?: number;
  keepDays?: number;
}

export function parseRetention(text: string | undefined): RetentionPolicy {
  const policy: RetentionPolicy = {};
  const trimmed = text?.trim() ?? '';
  if (!trimmed) return policy;
  for (const part of trimmed.split(',')) {
    const match = /^\s*(keep-last|keep-days)\s*=\s*(\d+)\s*$/.exec(part);
    if (!match) {
      throw new ConfigError(
        `backup-retention "${trimmed}" is not valid: use keep-last=N and/or keep-days=N separated by a comma, e.g. keep-last=7,keep-days=30`,
      );
    }
    const value = Number(match[2]);
    if (value < 1) throw new ConfigError(`backup-retention: ${match[1]} must be at least 1`);
    if (match[1] === 'keep-last') policy.keepLast = value;
    else policy.keepDays = value;
  }
  return policy;
}

export function describeRetention(policy: RetentionPolicy): string {
  const parts = [
    policy.keepLast !== undefined ? `the ${policy.keepLast} newest` : undefined,
    policy.keepDays !== undefined ? `those younger than ${policy.keepDays} days` : undefined,
  ].filter(Boolean);
  return parts.length ? `keep ${parts.join(' and ')}` : 'keep all backups';
}

/** The complete backups the policy lets go, oldest first. */
export function backupsToForget(
  backups: BackupInfo[],
  policy: RetentionPolicy,
  now: Date,
): BackupInfo[] {
  if (policy.keepLast === undefined && policy.keepDays === undefined) return [];
  const complete = backups
    .filter((b) => b.status === 'complete')
    .sort((a, b) => b.created.localeCompare(a.created) || b.backupId.localeCompare(a.backupId));
  const cutoff = policy.keepDays !== undefined ? now.getTime() - policy.keepDays * 86_400_000 : 0;
  const forget = complete.filter((backup, index) => {
    if (index === 0) return false;
    if (policy.keepLast !== undefined && index < policy.keepLast) return false;
    if (policy.keepDays !== undefined && Date.parse(backup.created) >= cutoff) return false;
    return true;
  });
  return forget.reverse();
}
