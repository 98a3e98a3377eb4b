/**
 * Remedies (src/errors.ts) in the charm's terms: config options by their
 * config.yaml names, restore-backup's params, the actions by their
 * actions.yaml names, and `juju trust` for the exec permission. When the S3
 * settings come from the backup relation, a `set` remedy names the
 * s3-integrator's own config key instead (its config.yaml: endpoint, bucket,
 * region, path, s3-uri-style, tls-ca-chain as base64 PEM; credentials from its
 * sync-s3-credentials action).
 */
import { type Operation, type Remedy, type Setting, describeError } from '../errors';

const ACTION: Record<Operation, string> = {
  list: 'list-backups',
  prune: 'prune-backups',
  delete: 'delete-backup',
};

/**
 * Where the S3 settings an error is about come from: the charm's s3-* options
 * (`config`), or the s3-integrator application `provider` at the other end of
 * the backup relation (`relation`).
 */
export type SettingsSource = { kind: 'config' } | { kind: 'relation'; provider: string };

const CONFIG: SettingsSource = { kind: 'config' };

/** The s3-integrator's config key for each S3 setting, with a placeholder for its value. */
const PROVIDER_KEY: Partial<Record<Setting, { key: string; placeholder: string }>> = {
  's3-bucket': { key: 'bucket', placeholder: '<name>' },
  's3-region': { key: 'region', placeholder: '<region>' },
  's3-endpoint': { key: 'endpoint', placeholder: '<url>' },
  's3-path': { key: 'path', placeholder: '<folder>' },
  's3-uri-style': { key: 's3-uri-style', placeholder: '<host|path>' },
  's3-ca-chain': { key: 'tls-ca-chain', placeholder: '<base64 PEM>' },
};

/**
 * A `set` remedy for settings from the relation, e.g. "set tls-ca-chain on
 * s3-integrator to the CA that signed it: juju config s3-integrator
 * tls-ca-chain=<base64 PEM>"; undefined for a setting the relation does not
 * carry (backup-passphrase is always the charm's own).
 */
function providerRemedy(
  remedy: Extract<Remedy, { kind: 'set' }>,
  provider: string,
): string | undefined {
  if (remedy.setting === 's3-credentials') {
    return `run juju run ${provider}/leader sync-s3-credentials access-key=<key> secret-key=<secret>`;
  }
  const target = PROVIDER_KEY[remedy.setting];
  if (!target) return undefined;
  const { key, placeholder } = target;
  const what = `set ${key}${remedy.value ? `=${remedy.value}` : ''} on ${provider}`;
  const command = `juju config ${provider} ${key}=${remedy.value ?? placeholder}`;
  return `${[what, remedy.how].filter(Boolean).join(' ')}: ${command}`;
}

/**
 * One remedy as the charm says it, e.g. "set s3-uri-style=path", "run
 * list-backups to see the ids"; with `source` a relation, a `set` remedy names
 * the provider's key and the `juju config` command that sets it.
 */
export function charmRemedy(
  remedy: Remedy,
  source: SettingsSource = CONFIG,
  unit = '<unit>',
): string {
  switch (remedy.kind) {
    case 'set': {
      const fromRelation =
        source.kind === 'relation' ? providerRemedy(remedy, source.provider) : undefined;
      if (fromRelation) return fromRelation;
      return [`set ${remedy.setting}${remedy.value ? `=${remedy.value}` : ''}`, remedy.how]
        .filter(Boolean)
        .join(' ');
    }
    case 'run-again':
      return `${remedy.when ? `${remedy.when}, ` : ''}run again with ${remedy.option}=true`;
    case 'run': {
      const said = [`run ${ACTION[remedy.operation]}`, remedy.why].filter(Boolean).join(' ');
      if (!remedy.sameAs) return said;
      // Action failures are worded without their settings' source: name both places.
      const key = PROVIDER_KEY[remedy.sameAs]?.key;
      const setting =
        source.kind === 'relation' && key
          ? `${key} on ${source.provider}`
          : `${remedy.sameAs}${key ? ` (or ${key} on the s3-integrator)` : ''}`;
      return `${said}; ${setting} must be the one the backup was created with`;
    }
    case 'grant-exec':
      return `run \`juju trust ${remedy.app} --scope=cluster\``;
    case 'stop-synapse': {
      const stale = remedy.pidFile
        ? `; if Synapse is not running, process ${remedy.pid ?? '?'} is another program: remove ${remedy.pidFile} in the workload`
        : '';
      return `stop ${remedy.service ? `the ${remedy.service} service` : 'Synapse'} first${stale}`;
    }
    case 'decrypt':
      return `restore another backup (list-backups), or take this one's files out by hand with the synapse-backup CLI: synapse-backup decrypt --id ${remedy.id} --allow-no-manifest > ${remedy.id}.tar`;
    case 'data-dir':
      return 'the charm writes homeserver.yaml once server-name is set and the synapse container is up (see the unit status); to bring a server back from a backup, run restore-backup';
    case 'restore-dir':
      return `see what they are with \`juju ssh --container synapse ${unit} ls -la ${remedy.dir}\` and move them off the data volume; if Synapse's files really belong there beside them, run again with force=true`;
    case 'stop-process': {
      const them = remedy.pids.length === 1 ? 'it' : 'them';
      return `wait for ${them} to finish, or stop ${them} with \`juju ssh --container synapse ${unit} kill ${remedy.pids.join(' ')}\`, then run the action again`;
    }
    case 'advice':
      return remedy.text;
  }
}

/**
 * The operator's line for an error in the charm: message, then the remedy in
 * charm terms (for S3 settings from `source`, by default the s3-* options;
 * `unit`, e.g. "synapse/0", where a remedy names a `juju ssh` command).
 */
export function describeForCharm(
  err: unknown,
  source: SettingsSource = CONFIG,
  unit?: string,
): string {
  return describeError(err, (remedy) => charmRemedy(remedy, source, unit));
}
