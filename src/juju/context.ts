/**
 * What Juju tells a charm process through its environment. This module and
 * hook-tools.ts are the only places that know JUJU_* variables.
 */

export interface JujuContext {
  /** `hooks/<name>` or `actions/<name>`, as given by JUJU_DISPATCH_PATH. */
  readonly dispatchPath: string;
  readonly kind: 'hook' | 'action';
  /** The hook name (`install`, `backup-relation-joined`, ...) when kind is 'hook'. */
  readonly hookName?: string;
  /** The action name (`create-backup`, ...) when kind is 'action'. */
  readonly actionName?: string;
  readonly actionUuid?: string;
  /** `synapse/0` */
  readonly unitName: string;
  /** `synapse`: the application name is the unit name before the slash. */
  readonly appName: string;
  readonly modelName: string;
  readonly modelUuid: string;
  readonly charmDir: string;
  readonly jujuVersion?: string;
  /** Relation events: the endpoint (`backup`). */
  readonly relationName?: string;
  /** Relation events: the number in JUJU_RELATION_ID (`backup:3` gives 3). */
  readonly relationId?: number;
  readonly remoteApp?: string;
  readonly remoteUnit?: string;
  /** Pebble events: the container name (`synapse`). */
  readonly workloadName?: string;
  /** Pebble check events (Juju >= 3.6): the check's name, from JUJU_PEBBLE_CHECK_NAME. */
  readonly pebbleCheckName?: string;
  /** Secret events. */
  readonly secretId?: string;
  readonly secretLabel?: string;
  readonly secretRevision?: number;
}

export class JujuContextError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'JujuContextError';
  }
}

type Env = Record<string, string | undefined>;

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

/** Parses `backup:3` (or a bare `3`) into 3. */
export function parseRelationId(value: string): number {
  const tail = value.includes(':') ? value.slice(value.lastIndexOf(':') + 1) : value;
  if (!/^\d+$/.test(tail)) throw new JujuContextError(`invalid relation id "${value}"`);
  return Number(tail);
}

export function parseJujuContext(env: Env = process.env): JujuContext {
  const unitName = nonEmpty(env.JUJU_UNIT_NAME);
  if (!unitName || !unitName.includes('/')) {
    throw new JujuContextError(
      "JUJU_UNIT_NAME is not set: this program is run by Juju through the charm's dispatch file",
    );
  }
  let dispatchPath = nonEmpty(env.JUJU_DISPATCH_PATH);
  if (!dispatchPath) {
    const action = nonEmpty(env.JUJU_ACTION_NAME);
    const hook = nonEmpty(env.JUJU_HOOK_NAME);
    if (action) dispatchPath = `actions/${action}`;
    else if (hook) dispatchPath = `hooks/${hook}`;
    else throw new JujuContextError('JUJU_DISPATCH_PATH is not set');
  }
  const match = /^(hooks|actions)\/([a-z0-9][a-z0-9-]*)$/.exec(dispatchPath);
  if (!match) throw new JujuContextError(`unrecognised JUJU_DISPATCH_PATH "${dispatchPath}"`);
  const kind = match[1] === 'actions' ? 'action' : 'hook';
  const name = match[2];
  const relationIdRaw = nonEmpty(env.JUJU_RELATION_ID);
  const revision = nonEmpty(env.JUJU_SECRET_REVISION);
  return {
    dispatchPath,
    kind,
    hookName: kind === 'hook' ? name : undefined,
    actionName: kind === 'action' ? name : undefined,
    actionUuid: nonEmpty(env.JUJU_ACTION_UUID),
    unitName,
    appName: unitName.split('/')[0],
    modelName: env.JUJU_MODEL_NAME ?? '',
    modelUuid: env.JUJU_MODEL_UUID ?? '',
    charmDir: nonEmpty(env.JUJU_CHARM_DIR) ?? process.cwd(),
    jujuVersion: nonEmpty(env.JUJU_VERSION),
    relationName: nonEmpty(env.JUJU_RELATION),
    relationId: relationIdRaw === undefined ? undefined : parseRelationId(relationIdRaw),
    remoteApp: nonEmpty(env.JUJU_REMOTE_APP),
    remoteUnit: nonEmpty(env.JUJU_REMOTE_UNIT),
    workloadName: nonEmpty(env.JUJU_WORKLOAD_NAME),
    pebbleCheckName: nonEmpty(env.JUJU_PEBBLE_CHECK_NAME),
    secretId: nonEmpty(env.JUJU_SECRET_ID),
    secretLabel: nonEmpty(env.JUJU_SECRET_LABEL),
    secretRevision: revision && /^\d+$/.test(revision) ? Number(revision) : undefined,
  };
}
