/**
 * The CLI's flags whose value is a number: what each takes, and reading it. Every
 * problem is a ConfigError (exit 2, one line) that says what the flag takes.
 */
import { ConfigError } from '../errors';

/**
 * The flags that take a whole number, and the least each takes. --keep-last 0
 * would read as "keep none", but prune always keeps the newest complete backup
 * (retention.ts; the charm's backup-retention refuses keep-last=0 and
 * keep-days=0 too, and so does the CLI).
 */
const WHOLE_NUMBER_LEAST: Record<string, number> = {
  'keep-last': 1,
  'keep-days': 1,
  // The engine's own limits (src/s3/settings.ts, src/crypto): S3's 5 MiB least part,
  // 1-16 parts in flight, the ESDK's 128-byte least frame.
  'frame-length': 128,
  'part-size': 5,
  'queue-size': 1,
};

/** The most a whole-number flag takes, where there is a limit. */
const WHOLE_NUMBER_MOST: Record<string, number> = {
  'queue-size': 16,
  'frame-length': 2147483647,
};

/**
 * --stale-hours takes what the charm's prune-backups `stale-hours` takes (a
 * number >= 0, fractions too: 0.5 is half an hour), written as a decimal.
 */
const HOURS_FLAGS = new Set(['stale-hours']);
const DECIMAL = /^(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** Every flag whose value is a number (without the dashes). */
export const NUMBER_FLAGS: readonly string[] = [...Object.keys(WHOLE_NUMBER_LEAST), ...HOURS_FLAGS];

/** What `--flag` takes, as the error text says it: "a whole number of at least 1". */
function takes(flag: string): string {
  if (HOURS_FLAGS.has(flag)) return 'a number of hours >= 0 (0.5 is half an hour)';
  const least = WHOLE_NUMBER_LEAST[flag] ?? 0;
  const most = WHOLE_NUMBER_MOST[flag];
  const unit = flag === 'part-size' ? ' (MiB)' : '';
  if (most !== undefined) return `a whole number from ${least} to ${most}${unit}`;
  return least > 0 ? `a whole number of at least ${least}${unit}` : `a whole number${unit}`;
}

/** The ConfigError for `--flag` given no value (the next argument a flag, or none). */
export function needsNumber(flag: string): ConfigError {
  const what = HOURS_FLAGS.has(flag) ? takes(flag) : `a number (${takes(flag)})`;
  return new ConfigError(`--${flag} needs ${what}`);
}

/**
 * `value` of `--flag` as a number; undefined when not given. ConfigError (exit 2,
 * one line) for anything but a whole number at or above the flag's least.
 */
export function wholeNumber(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const least = WHOLE_NUMBER_LEAST[flag] ?? 0;
  const most = WHOLE_NUMBER_MOST[flag] ?? Infinity;
  if (!/^\d+$/.test(value) || Number(value) < least || Number(value) > most) {
    const zero = /^0+$/.test(value);
    const why =
      flag === 'keep-last' && zero
        ? ': prune always keeps the newest complete backup, so --keep-last 1 keeps only that one; synapse-backup delete --id ID deletes it too'
        : flag === 'keep-days' && zero
          ? ': --keep-days 1 keeps the backups younger than a day (prune always keeps the newest complete backup)'
          : '';
    throw new ConfigError(`--${flag} takes ${takes(flag)}, not "${value}"${why}`);
  }
  return Number(value);
}

/**
 * `value` of `--flag` (--stale-hours) as hours, fractions too; undefined when
 * not given. ConfigError for anything but a finite decimal number >= 0, the
 * rule of the charm's prune-backups `stale-hours`.
 */
export function hours(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!DECIMAL.test(value) || !Number.isFinite(n)) {
    throw new ConfigError(`--${flag} takes ${takes(flag)}, not "${value}"`);
  }
  return n;
}

/** Checks every number flag given in `values` (ConfigError for the first bad one). */
export function checkNumbers(values: Readonly<Record<string, unknown>>): void {
  for (const flag of NUMBER_FLAGS) {
    const value = values[flag] as string | undefined;
    if (HOURS_FLAGS.has(flag)) hours(value, flag);
    else wholeNumber(value, flag);
  }
}
