/**
 * Typed errors. Every message is written for the operator: it says what went
 * wrong and, where there is one, what to do next. Messages never contain
 * secrets (passphrases, S3 secret keys).
 */
export type ErrorCode =
  | 'config'
  | 'not-found'
  | 'already-exists'
  | 'empty-selection'
  | 'workload'
  | 'workload-command'
  | 'decrypt'
  | 'wrong-passphrase'
  | 'corrupt'
  | 'archive-rejected'
  | 'manifest-mismatch'
  | 's3'
  | 's3-auth'
  | 's3-bucket'
  | 's3-unreachable'
  | 'cleanup'
  | 'too-large'
  | 'wrong-server'
  | 'no-space';

export class BackupError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'BackupError';
  }
}

export class ConfigError extends BackupError {
  constructor(message: string) {
    super('config', message);
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

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Replaces every occurrence of each secret in `text`. Belt and braces for log lines. */
export function redact(text: string, secrets: readonly (string | undefined)[]): string {
  let out = text;
  for (const secret of secrets) {
    if (secret && secret.length >= 4) out = out.split(secret).join('***');
  }
  return out;
}
