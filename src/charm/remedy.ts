/**
 * Remedies (src/errors.ts) in the charm's terms: config options by their
 * config.yaml names, restore-backup's params, the actions by their
 * actions.yaml names, and `juju trust` for the exec permission.
 */
import { type Operation, type Remedy, describeError } from '../errors';

const ACTION: Record<Operation, string> = {
  list: 'list-backups',
  prune: 'prune-backups',
  delete: 'delete-backup',
};

/** One remedy as the charm says it, e.g. "set s3-uri-style=path", "run list-backups to see the ids". */
export function charmRemedy(remedy: Remedy): string {
  switch (remedy.kind) {
    case 'set':
      return [`set ${remedy.setting}${remedy.value ? `=${remedy.value}` : ''}`, remedy.how]
        .filter(Boolean)
        .join(' ');
    case 'run-again':
      return `${remedy.when ? `${remedy.when}, ` : ''}run again with ${remedy.option}=true`;
    case 'run':
      return [`run ${ACTION[remedy.operation]}`, remedy.why].filter(Boolean).join(' ');
    case 'grant-exec':
      return `run \`juju trust ${remedy.app} --scope=cluster\``;
    case 'advice':
      return remedy.text;
  }
}

/** The operator's line for an error in the charm: message, then the remedy in charm terms. */
export function describeForCharm(err: unknown): string {
  return describeError(err, charmRemedy);
}
