/**
 * The registration shared secret: Synapse's `registration_shared_secret`
 * (homeserver.yaml; synapse/config/registration.py) lets the holder register
 * users through POST /_synapse/admin/v1/register. The charm keeps it in a
 * Juju application secret it creates (leader only, label
 * `synapse-registration`, keys `registration-shared-secret` and
 * `admin-password`, the latter for the charm's own admin user) and merges it
 * into homeserver.yaml, keeping every other key and comment.
 *
 * On first use the secret takes the value the image's generate step already
 * wrote, so a running Synapse needs no restart; when they differ later (a
 * restored backup of another deployment), the file gets the Juju secret's.
 */
import { randomBytes } from 'node:crypto';
import type { Document } from 'yaml';
import type { HookTools } from '../juju/hook-tools';
import { commandFailure, execCollect } from '../workload/command';
import type { Workload } from '../workload/workload';

export const REGISTRATION_LABEL = 'synapse-registration';
export const SHARED_SECRET_KEY = 'registration-shared-secret';
export const ADMIN_PASSWORD_KEY = 'admin-password';

export interface RegistrationSecret {
  sharedSecret: string;
  adminPassword: string;
}

/** A random token: `bytes` random bytes, base64url. */
export function randomToken(bytes = 32): string {
  return randomBytes(bytes).toString('base64url');
}

/** The Juju secret's content, or undefined before the leader created it. */
export async function readRegistrationSecret(
  tools: HookTools,
): Promise<RegistrationSecret | undefined> {
  const content = await tools.secretGetByLabel(REGISTRATION_LABEL);
  if (!content?.[SHARED_SECRET_KEY] || !content[ADMIN_PASSWORD_KEY]) return undefined;
  return { sharedSecret: content[SHARED_SECRET_KEY], adminPassword: content[ADMIN_PASSWORD_KEY] };
}

/** Reads a text file in the workload (cat); throws with the reason when it cannot. */
export async function readWorkloadFile(workload: Workload, path: string): Promise<string> {
  const current = await execCollect(workload, { command: ['cat', path] });
  if (current.exitCode !== 0) {
    throw commandFailure(`reading ${path}`, current.status, current.stderr);
  }
  return current.stdout;
}

/**
 * Replaces `path` (symlinks followed) with `text`, never truncating it: the
 * text goes to a hidden temp file in the same directory (`.<name>.tmp-<pid>`,
 * which no `*.yaml` glob matches), which takes the original's owner and mode,
 * is synced, and is renamed over it. A killed hook or a full disk leaves the
 * original whole (and at worst a temp file, removed by the next write).
 */
const REPLACE_FILE = [
  'f=$1',
  'if [ -e "$f" ]; then f=$(readlink -f -- "$f") || exit 1; fi',
  'd=$(dirname -- "$f") && b=$(basename -- "$f") || exit 1',
  'rm -f -- "$d/.$b.tmp-"*',
  'umask 077',
  't="$d/.$b.tmp-$$"',
  'trap \'rm -f -- "$t"\' EXIT',
  'cat > "$t" || exit 1',
  'if [ -e "$f" ]; then',
  '  chown "$(stat -c %u:%g -- "$f")" -- "$t" && chmod "$(stat -c %a -- "$f")" -- "$t" || exit 1',
  'fi',
  'sync -- "$t" 2>/dev/null || sync',
  'mv -f -- "$t" "$f" || exit 1',
  'sync -- "$d" 2>/dev/null || true',
].join('\n');

/** Writes `text` to `path` in the workload through stdin (atomically: REPLACE_FILE). */
export async function writeWorkloadFile(
  workload: Workload,
  path: string,
  text: string,
): Promise<void> {
  const proc = workload.exec({
    command: ['sh', '-c', REPLACE_FILE, 'synapse-charm', path],
    stdin: true,
  });
  proc.stdout.resume();
  const stderr: Buffer[] = [];
  proc.stderr.on('data', (c: Buffer) => stderr.push(c));
  proc.stdin!.end(text);
  const status = await proc.wait();
  if (status.exitCode !== 0) {
    throw commandFailure(`writing ${path}`, status, Buffer.concat(stderr).toString('utf8'));
  }
}

/**
 * Leader only: makes sure the Juju secret exists and homeserver.yaml's
 * document `doc` carries its shared secret (set in `doc`; the caller writes
 * the file). Returns true when `doc` changed.
 */
export async function applyRegistrationSecret(tools: HookTools, doc: Document): Promise<boolean> {
  const inFile = doc.get('registration_shared_secret');
  if (typeof inFile === 'string') tools.addSecret(inFile);
  let secret = await readRegistrationSecret(tools);
  if (!secret) {
    secret = {
      sharedSecret: typeof inFile === 'string' && inFile.length >= 16 ? inFile : randomToken(),
      adminPassword: randomToken(),
    };
    await tools.secretAdd(REGISTRATION_LABEL, {
      [SHARED_SECRET_KEY]: secret.sharedSecret,
      [ADMIN_PASSWORD_KEY]: secret.adminPassword,
    });
  }
  if (inFile === secret.sharedSecret) return false;
  doc.set('registration_shared_secret', secret.sharedSecret);
  return true;
}
