/**
 * Remedies (src/errors.ts) in the CLI's terms: its flags and environment
 * variables, and `synapse-backup <subcommand>`.
 */
import { type Remedy, type RunOption, type Setting, describeError } from '../errors';

const FLAG: Record<Setting, string> = {
  's3-bucket': '--bucket',
  's3-region': '--region',
  's3-endpoint': '--endpoint',
  's3-path': '--prefix',
  's3-uri-style': '--uri-style',
  's3-credentials': 'AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY',
  's3-ca-chain': '--ca-file',
  'backup-passphrase': 'SYNAPSE_BACKUP_PASSPHRASE or --passphrase-file',
};

const RUN_FLAG: Record<RunOption, string> = {
  force: '--force',
  'allow-no-manifest': '--allow-no-manifest',
};

/** One remedy as the CLI says it, e.g. "pass --uri-style path", "run synapse-backup list to see the ids". */
export function cliRemedy(remedy: Remedy): string {
  switch (remedy.kind) {
    case 'set': {
      const flag = FLAG[remedy.setting];
      const verb = flag.startsWith('--') ? 'pass' : 'set';
      return [`${verb} ${flag}${remedy.value ? ` ${remedy.value}` : ''}`, remedy.how]
        .filter(Boolean)
        .join(' ');
    }
    case 'run-again':
      return `${remedy.when ? `${remedy.when}, ` : ''}run again with ${RUN_FLAG[remedy.option]}`;
    case 'run': {
      const run = `run synapse-backup ${remedy.operation}${remedy.id ? ` --id ${remedy.id}` : ''}`;
      const said = [
        remedy.staleNowIf && `${remedy.staleNowIf}, ${run} --stale-hours 0 now; otherwise`,
        run,
        remedy.why,
      ]
        .filter(Boolean)
        .join(' ');
      return remedy.sameAs ? `${said}; ${sameAs(remedy.sameAs)}` : said;
    }
    case 'grant-exec':
      return `give this identity the Kubernetes permission to create pods/exec in the pod's namespace (Juju: \`juju trust ${remedy.app} --scope=cluster\`)`;
    case 'stop-synapse':
      return stopSynapse(remedy);
    case 'decrypt':
      return `synapse-backup decrypt --id ${remedy.id} --allow-no-manifest > ${remedy.id}.tar writes its plain tar (outside paths as @external/<absolute path>) to put back by hand; or restore another backup (synapse-backup list)`;
    case 'data-dir':
      return "pass --data-dir the directory that holds Synapse's homeserver.yaml";
    case 'restore-dir':
      return "pass --data-dir the directory that holds Synapse's homeserver.yaml, or a new or empty directory; if Synapse's files really belong there beside those, run again with --force";
    case 'stop-process': {
      const them = remedy.pids.length === 1 ? 'it' : 'them';
      return `wait for ${them} to finish, or stop ${them} with \`kill ${remedy.pids.join(' ')}\` where the workload runs (this host; with --pebble-socket, the container Pebble runs in), then run again`;
    }
    case 'advice':
      return remedy.text;
  }
}

/** "--prefix must be the one the backup was created with (...)": a setting a backup is found by. */
function sameAs(setting: Setting): string {
  const none = setting === 's3-path' ? ' (none if it was created without one)' : '';
  return `${FLAG[setting]} must be the one the backup was created with${none}`;
}

function stopSynapse(remedy: Extract<Remedy, { kind: 'stop-synapse' }>): string {
  const how = remedy.service
    ? `pass --service ${remedy.service} to stop it for the swap and start it after, or stop it first`
    : 'stop Synapse first (when Pebble runs it, --pebble-socket with --service NAME stops it for the swap and starts it after)';
  const stale = remedy.pidFile
    ? `; if Synapse is not running, process ${remedy.pid ?? '?'} is another program: remove ${remedy.pidFile}`
    : '';
  return `${how}${stale}`;
}

/** The operator's line for an error in the CLI: message, then the remedy in CLI terms. */
export function describeForCli(err: unknown): string {
  return describeError(err, cliRemedy);
}
