/**
 * Typed errors. A message says what went wrong; what fixes it is a typed
 * `Remedy`, which each front end words in its own terms (the charm with its
 * config options and action params, src/charm/remedy.ts; the CLI with its
 * flags and subcommands, src/cli/remedy.ts). Messages never contain secrets
 * (passphrases, S3 secret keys).
 */
export type ErrorCode =
  | 'config'
  | 'not-found'
  | 'already-exists'
  | 'empty-selection'
  | 'invalid-config'
  | 'not-included'
  | 'workload'
  | 'workload-command'
  | 'decrypt'
  | 'wrong-passphrase'
  | 'corrupt'
  | 'wrong-backup'
  | 'busy'
  | 'archive-rejected'
  | 'unrestorable-entry'
  | 'manifest-mismatch'
  | 's3'
  | 's3-auth'
  | 's3-bucket'
  | 's3-unreachable'
  /** A write went to another bucket than the configured one (host-style addressing). */
  | 'misrouted'
  | 'cleanup'
  | 'too-large'
  | 'wrong-server'
  | 'no-space'
  /** The data dir a restore goes to does not exist. */
  | 'no-data-dir'
  /** The data dir a restore goes to holds files but none of Synapse's (a mistyped one). */
  | 'foreign-data-dir'
  | 'unfinished-swap'
  | 'interrupted';

/**
 * A setting the operator can change, by its charm config name (config.yaml);
 * the CLI maps each to its flag or environment variable.
 */
export type Setting =
  | 's3-bucket'
  | 's3-region'
  | 's3-endpoint'
  | 's3-path'
  | 's3-uri-style'
  | 's3-credentials'
  | 's3-ca-chain'
  | 'backup-passphrase';

/** An option of one run that changes what the engine allows (restore-backup's params). */
export type RunOption = 'force' | 'allow-no-manifest';

/** An engine operation the operator can run next (charm action, CLI subcommand). */
export type Operation = 'list' | 'prune' | 'delete';

/**
 * What fixes an error, independent of the front end:
 * - `set`: change `setting`; `value` when one value is the fix (s3-uri-style=path),
 *   `how` says what to set it to ("to the CA that signed it");
 * - `run-again`: repeat the same run with `option`, `when` says when that is right;
 * - `run`: run `operation` next, `why` says what it does here; with `staleNowIf`,
 *   when (that condition) a stale age of 0 (the CLI's `--stale-hours 0`) does it now;
 *   `id`, the backup the operation is for (delete's); `sameAs`, a setting that must be
 *   the one the backup was created with (s3-path: a backup under another prefix is
 *   not found under this one);
 * - `grant-exec`: the charm may not exec into its pod (Kubernetes RBAC; Juju: `juju trust`);
 * - `stop-synapse`: Synapse runs on the data dir: stop it, or let the run stop
 *   and start `service` (a Pebble service) around the swap; with `pidFile`, a
 *   live `pid` there that may be another program (the file then goes);
 * - `decrypt`: backup `id` cannot be restored as it is; decrypt it to a plain tar
 *   (with allow-no-manifest) and take its files out by hand, or restore another backup;
 * - `data-dir`: the run looked in a directory that holds no Synapse data: point it
 *   at the one that holds homeserver.yaml;
 * - `restore-dir`: a restore's data dir `dir` holds files but none of Synapse's: point
 *   the restore at the directory that holds homeserver.yaml, or a new or empty one; or,
 *   if Synapse's files really belong there beside those, run again with `force`;
 * - `stop-process`: processes `pids` in the workload (started by a run whose engine
 *   was killed) still work on the data dir: wait for them to end, or kill them, then
 *   run again;
 * - `advice`: anything else, already neutral ("grow the data volume or free space").
 */
export type Remedy =
  | { kind: 'set'; setting: Setting; value?: string; how?: string }
  | { kind: 'run-again'; option: RunOption; when?: string }
  | {
      kind: 'run';
      operation: Operation;
      why?: string;
      staleNowIf?: string;
      id?: string;
      sameAs?: Setting;
    }
  | { kind: 'grant-exec'; app: string }
  | { kind: 'stop-synapse'; service?: string; pidFile?: string; pid?: number }
  | { kind: 'decrypt'; id: string }
  | { kind: 'data-dir' }
  | { kind: 'restore-dir'; dir: string }
  | { kind: 'stop-process'; pids: number[] }
  | { kind: 'advice'; text: string };

export interface BackupErrorOptions {
  cause?: unknown;
  remedy?: Remedy;
}

export class BackupError extends Error {
  readonly code: ErrorCode;
  /** What fixes it, when something the operator can do does. */
  readonly remedy: Remedy | undefined;

  constructor(code: ErrorCode, message: string, options?: BackupErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.remedy = options?.remedy;
    this.name = 'BackupError';
  }
}

export class ConfigError extends BackupError {
  constructor(message: string, remedy?: Remedy) {
    super('config', message, { remedy });
    this.name = 'ConfigError';
  }
}

/** A command in the workload exited non-zero, was killed, or could not start. */
export class WorkloadCommandError extends BackupError {
  readonly exitCode: number | null;
  readonly stderr: string;

  constructor(message: string, exitCode: number | null, stderr: string) {
    super('workload-command', message);
    this.exitCode = exitCode;
    this.stderr = stderr;
    this.name = 'WorkloadCommandError';
  }
}

/**
 * The operation was stopped by a signal (SIGTERM, SIGINT) through its
 * AbortSignal. `signalName` is the abort reason ("SIGTERM"); `cleanedUp` says
 * what was cleaned up and what state the data is in. Message:
 * `interrupted by <signal>: <cleanedUp>`.
 */
export class InterruptedError extends BackupError {
  constructor(
    readonly signalName: string,
    readonly cleanedUp: string,
  ) {
    super('interrupted', `interrupted by ${signalName}${cleanedUp ? `: ${cleanedUp}` : ''}`);
    this.name = 'InterruptedError';
  }
}

/** The message alone (no remedy): for logs and for nesting one error's text in another's. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** The remedy of `err`, if it is a BackupError that has one. */
export function remedyOf(err: unknown): Remedy | undefined {
  return err instanceof BackupError ? err.remedy : undefined;
}

/**
 * The operator's line for `err`: its message, then `; ` and the remedy as
 * `word` says it in the front end's terms.
 */
export function describeError(err: unknown, word: (remedy: Remedy) => string): string {
  const remedy = remedyOf(err);
  const message = errorMessage(err);
  return remedy ? `${message}; ${word(remedy)}` : message;
}

/** Replaces every occurrence of each secret in `text`. Belt and braces for log lines. */
export function redact(text: string, secrets: readonly (string | undefined)[]): string {
  let out = text;
  for (const secret of secrets) {
    if (secret && secret.length >= 4) out = out.split(secret).join('***');
  }
  return out;
}

/**
 * A YAML parse error as one line that quotes no source text. The `yaml`
 * package's message carries a code frame (the offending line, which can hold
 * a secret such as registration_shared_secret) after its first line, and some
 * first lines quote a token; keep the first line only when it quotes nothing,
 * else fall back to the error code, plus the line and column.
 */
export function yamlErrorSummary(err: unknown): string {
  const { code, linePos } = (err ?? {}) as {
    code?: unknown;
    linePos?: readonly { line: number; col: number }[];
  };
  const first = errorMessage(err).split('\n')[0].replace(/:\s*$/, '');
  const head = first.replace(/ at line \d+, column \d+$/, '');
  const described =
    typeof code === 'string' ? code.toLowerCase().replace(/_/g, ' ') : 'syntax error';
  const text = /["'`]/.test(head) || head.length > 120 ? described : head;
  const pos = linePos?.[0];
  return pos ? `${text} at line ${pos.line}, column ${pos.col}` : text;
}
