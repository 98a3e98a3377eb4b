/**
 * The environment a workload command starts with: never the engine's own.
 * The CLI's and the charm's processes hold the backup passphrase and S3
 * secret keys in their environment (SYNAPSE_BACKUP_PASSPHRASE,
 * AWS_SECRET_ACCESS_KEY, Juju's secrets); a child that inherited it would
 * show them to anyone who may read /proc/<pid>/environ of tar, sh or python3.
 */

/** Variables passed through from the engine's environment when set: what tar, sh and python3 need. */
export const PASSED_THROUGH = [
  'PATH',
  'LANG',
  'LC_ALL',
  'LC_CTYPE',
  'HOME',
  'TZ',
  'TMPDIR',
] as const;

/** Used when the engine's environment has no PATH. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * The environment of a command run on this host: the variables of
 * {@link PASSED_THROUGH} that `from` sets (PATH defaulting to {@link DEFAULT_PATH}),
 * then `explicit` (what the caller passes on purpose, e.g. a direct stream's token).
 * Nothing else of `from` (by default process.env) reaches the command.
 */
export function minimalEnvironment(
  explicit: Record<string, string> = {},
  from: NodeJS.ProcessEnv = process.env,
): Record<string, string> {
  const env: Record<string, string> = { PATH: DEFAULT_PATH };
  for (const name of PASSED_THROUGH) {
    const value = from[name];
    if (value !== undefined && value !== '') env[name] = value;
  }
  return { ...env, ...explicit };
}
