/**
 * What the unit status says about backups. Backups never block Synapse: any
 * problem is the tail of the active status ("backups: <reason>").
 *
 * The bucket is checked (HeadBucket) only when the S3 settings change, never
 * in update-status: a hash of the settings and the check's result are kept in
 * the unit's state on the controller (Juju >= 2.8 `state-get`/`state-set`,
 * key `s3-check`, a JSON string `{hash, ok, message, at}`). Backup actions
 * refresh it: one that reached the bucket records ok, one that failed on S3
 * (codes s3, s3-auth, s3-bucket, s3-unreachable) records why.
 */
import { createHash } from 'node:crypto';
import { BackupError, errorMessage } from '../errors';
import type { JujuContext } from '../juju/context';
import type { HookTools } from '../juju/hook-tools';
import { checkBucket, createS3Client } from '../s3/client';
import type { S3Settings } from '../s3/settings';
import { resolveBackupSetup } from './backup-setup';
import type { CharmConfig } from './config';
import { describeForCharm } from './remedy';

export type BackupHealth =
  { kind: 'none' } | { kind: 'problem'; message: string } | { kind: 'ok'; description: string };

export const S3_CHECK_KEY = 's3-check';
/** HeadBucket's budget in a hook (the client retries inside it), in milliseconds. */
export const CHECK_TIMEOUT_MS = 20_000;
const S3_ERROR_CODES = new Set(['s3', 's3-auth', 's3-bucket', 's3-unreachable', 'misrouted']);

interface StoredCheck {
  hash: string;
  ok: boolean;
  message: string;
  /** ISO 8601 time of the check, UTC. */
  at: string;
}

/** sha256 over the settings HeadBucket depends on (the secret key only as part of the digest). */
export function settingsHash(s3: S3Settings): string {
  const { bucket, prefix, endpoint, region, uriStyle, accessKeyId, secretAccessKey, caChain } = s3;
  const material = [
    bucket,
    prefix,
    endpoint,
    region,
    uriStyle,
    accessKeyId,
    secretAccessKey,
    caChain,
  ];
  return createHash('sha256').update(JSON.stringify(material)).digest('hex');
}

async function readCheck(tools: HookTools): Promise<StoredCheck | undefined> {
  const raw = (await tools.stateGet())[S3_CHECK_KEY];
  if (!raw) return undefined;
  try {
    const parsed = JSON.parse(raw) as StoredCheck;
    return typeof parsed.hash === 'string' ? parsed : undefined;
  } catch {
    return undefined;
  }
}

/** Stores the outcome of reaching the bucket with `s3` (the message is already redacted). */
export async function recordCheck(
  tools: HookTools,
  s3: S3Settings,
  outcome: { ok: true } | { ok: false; message: string },
): Promise<void> {
  const stored: StoredCheck = {
    hash: settingsHash(s3),
    ok: outcome.ok,
    message: outcome.ok ? '' : outcome.message,
    at: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
  };
  await tools.stateSet({ [S3_CHECK_KEY]: JSON.stringify(stored) });
}

/** Is this failure about S3 itself (worth showing in the status until it is fixed)? */
export function isS3Failure(err: unknown): boolean {
  return err instanceof BackupError && S3_ERROR_CODES.has(err.code);
}

/** HeadBucket within CHECK_TIMEOUT_MS; returns the operator's reason on failure. */
async function headBucket(
  tools: HookTools,
  s3: S3Settings,
  settingsSource: Parameters<typeof describeForCharm>[1],
): Promise<{ ok: true } | { ok: false; message: string }> {
  const client = createS3Client(s3);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`no answer within ${CHECK_TIMEOUT_MS / 1000} s`)),
      CHECK_TIMEOUT_MS,
    );
  });
  try {
    await Promise.race([checkBucket(s3, client), timeout]);
    return { ok: true };
  } catch (err) {
    const message =
      err instanceof BackupError
        ? describeForCharm(err, settingsSource)
        : `cannot check the S3 bucket "${s3.bucket}": ${errorMessage(err)}`;
    return { ok: false, message: tools.redact(message) };
  } finally {
    clearTimeout(timer);
    client.destroy();
  }
}

/**
 * The backup part of the status. `mayCheck` false (update-status) never
 * reaches S3: settings not checked yet are reported as such.
 */
export async function backupHealth(
  ctx: JujuContext,
  tools: HookTools,
  config: CharmConfig,
  mayCheck: boolean,
): Promise<BackupHealth> {
  const setup = await resolveBackupSetup(ctx, tools, config);
  if (setup.state === 'none') return { kind: 'none' };
  if (setup.state === 'invalid') return { kind: 'problem', message: setup.message };
  const stored = await readCheck(tools);
  if (stored?.hash !== settingsHash(setup.s3)) {
    if (!mayCheck) return { kind: 'ok', description: `${setup.description}, not checked yet` };
    const outcome = await headBucket(tools, setup.s3, setup.settingsSource);
    await recordCheck(tools, setup.s3, outcome);
    if (outcome.ok) return { kind: 'ok', description: setup.description };
    return { kind: 'problem', message: outcome.message };
  }
  if (stored.ok) return { kind: 'ok', description: setup.description };
  return {
    kind: 'problem',
    message: `${stored.message} (checked ${stored.at}; list-backups checks again)`,
  };
}
