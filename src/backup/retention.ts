import { ConfigError } from '../errors';
import type { BackupInfo, ServerRetention } from './types';

/**
 * Which complete backups to keep, in restic's terms: `keep-last=N` keeps the
 * N newest, `keep-days=D` keeps every backup younger than D days, of each
 * server_name on its own (backups naming no server are one more server). A
 * backup is kept when any rule keeps it; each server's newest complete backup
 * is always kept.
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

/**
 * One server's share of a prune: the complete backups whose manifest names
 * `serverName` (undefined: those that name none, a group of their own), the
 * ones the policy keeps and the ones it lets go, each newest first.
 */
export interface RetentionGroup {
  serverName: string | undefined;
  kept: BackupInfo[];
  forgotten: BackupInfo[];
}

/** Newest first: by creation time, then by id. */
function newestFirst(a: BackupInfo, b: BackupInfo): number {
  return b.created.localeCompare(a.created) || b.backupId.localeCompare(a.backupId);
}

/**
 * The policy applied to each server's complete backups on its own (servers
 * sharing a bucket and prefix never count against each other; each keeps at
 * least its newest). Groups by server name, the one naming no server last.
 */
export function retentionGroups(
  backups: BackupInfo[],
  policy: RetentionPolicy,
  now: Date,
): RetentionGroup[] {
  const byServer = new Map<string | undefined, BackupInfo[]>();
  for (const b of backups) {
    if (b.status !== 'complete') continue;
    const name = b.serverName || undefined;
    byServer.set(name, [...(byServer.get(name) ?? []), b]);
  }
  const names = [...byServer.keys()].sort((a, b) =>
    a === undefined ? 1 : b === undefined ? -1 : a.localeCompare(b),
  );
  const cutoff = policy.keepDays !== undefined ? now.getTime() - policy.keepDays * 86_400_000 : 0;
  const noRule = policy.keepLast === undefined && policy.keepDays === undefined;
  const keeps = (backup: BackupInfo, index: number) =>
    noRule ||
    index === 0 ||
    (policy.keepLast !== undefined && index < policy.keepLast) ||
    (policy.keepDays !== undefined && Date.parse(backup.created) >= cutoff);
  return names.map((serverName) => {
    const complete = [...byServer.get(serverName)!].sort(newestFirst);
    return {
      serverName,
      kept: complete.filter((b, i) => keeps(b, i)),
      forgotten: complete.filter((b, i) => !keeps(b, i)),
    };
  });
}

/** The complete backups the policy lets go (of every server, each on its own), oldest first. */
export function backupsToForget(
  backups: BackupInfo[],
  policy: RetentionPolicy,
  now: Date,
): BackupInfo[] {
  return retentionGroups(backups, policy, now)
    .flatMap((g) => g.forgotten)
    .sort(newestFirst)
    .reverse();
}

/** A group's server as the operator reads it: its name, or "(no server name)". */
export function serverLabel(serverName: string | undefined): string {
  return serverName ?? '(no server name)';
}

/**
 * `field` of each server's share, e.g. "example.org: a, b; other.org: none"
 * (forgotten) or "example.org: c; other.org: d, e" (kept).
 */
export function describeByServer(
  servers: readonly ServerRetention[],
  field: 'kept' | 'forgotten',
): string {
  return servers
    .map((s) => {
      const ids = s[field];
      return `${serverLabel(s.serverName ?? undefined)}: ${ids.length ? ids.join(', ') : 'none'}`;
    })
    .join('; ');
}
