/**
 * Action results as Juju takes them (action-set key=value argv): key rules
 * from juju/juju's worker/uniter/runner/jujuc/action-set.go (lowercase
 * alphanumerics and hyphens per dot-separated segment; stdout, stderr and
 * their -encoding keys reserved), mirrored by ops' ActionEvent.set_results.
 */

/** Raised before calling action-set when a result would be rejected by Juju. */
export class ActionResultError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ActionResultError';
  }
}

/** One segment of an action-set key: lowercase alphanumerics and hyphens, alphanumeric at both ends. */
export const ACTION_KEY_SEGMENT = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;
export const RESERVED_ACTION_KEYS: readonly string[] = [
  'stdout',
  'stdout-encoding',
  'stderr',
  'stderr-encoding',
];
/** Action results travel in argv; stay well under the kernel's per-argument and total limits. */
export const ACTION_RESULTS_BUDGET = 100 * 1024;

export function isValidActionKeySegment(segment: string): boolean {
  return ACTION_KEY_SEGMENT.test(segment);
}

export type ActionResults = { [key: string]: string | number | boolean | ActionResults };

/**
 * Flattens nested results into `a.b=value` pairs, validating every key the
 * way Juju does, so a bad key fails here with a clear message rather than in
 * the middle of an action-set call.
 */
export function flattenActionResults(results: ActionResults): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (obj: ActionResults, prefix: string): void => {
    for (const [key, value] of Object.entries(obj)) {
      if (!isValidActionKeySegment(key)) {
        throw new ActionResultError(
          `invalid action result key "${prefix}${key}": keys are lowercase letters, digits and hyphens, starting and ending with a letter or digit`,
        );
      }
      const full = prefix + key;
      if (!prefix && RESERVED_ACTION_KEYS.includes(key)) {
        throw new ActionResultError(`action result key "${key}" is reserved by Juju`);
      }
      if (value !== null && typeof value === 'object') {
        walk(value, `${full}.`);
      } else {
        if (out.has(full)) throw new ActionResultError(`duplicate action result key "${full}"`);
        out.set(full, String(value));
      }
    }
  };
  walk(results, '');
  return out;
}
