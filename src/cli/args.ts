/**
 * The CLI's command line: usage, options, and reading what they name (the
 * passphrase, the CA file, the data directory). Every problem is a ConfigError
 * (exit 2, one line).
 */
import { readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, errorMessage } from '../errors';
import { NUMBER_FLAGS, checkNumbers, needsNumber } from './numbers';

export const USAGE = `usage:
  synapse-backup create  --data-dir DIR [--id ID] [--frame-length BYTES] [--part-size MIB]
                         [--queue-size N]
  synapse-backup list
  synapse-backup restore --id ID --data-dir DIR [--allow-no-manifest] [--keep-previous] [--force]
                         [--service NAME]   with --pebble-socket: stop this Pebble service for
                                 the swap and start it after (without it, restore refuses
                                 while Synapse runs on DIR)
  synapse-backup delete  --id ID [--stale-hours H]
  synapse-backup verify  --id ID
  synapse-backup decrypt --id ID [--allow-no-manifest]   # plain tar on stdout
  synapse-backup prune   [--keep-last N] [--keep-days N] [--stale-hours H] [--dry-run]
                         [--data-dir DIR]   also remove what interrupted runs left in DIR
  H: hours >= 0, fractions too (0.5 is half an hour), as the charm's stale-hours; default 24
common: --bucket B [--prefix P] [--endpoint URL] [--region R] [--uri-style host|path] [--json]
        [--passphrase-file F] [--ca-file PEM] [--checksum when_required|when_supported]
create, restore, prune:
        [--pebble-socket PATH]   run tar through Pebble instead of on this host
        [--direct [--workload-dir PATH]]   with --pebble-socket: the archive (create's output,
                                 restore's input) goes over a unix socket in the socket's
                                 directory, not through Pebble's websocket (PATH: that
                                 directory as the workload sees it; default the same path,
                                 as when Pebble runs on this host)
create, restore:
        [--config-root ROOT]   homeserver.yaml's absolute paths under ROOT are under DIR:
                                 a volume written for ROOT, mounted at DIR (the official
                                 image's /data at /mnt/synapse: --config-root /data)
credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS SDK's default chain)
passphrase:  SYNAPSE_BACKUP_PASSPHRASE or --passphrase-file (never a flag value)`;

export const OPTIONS = {
  bucket: { type: 'string' },
  prefix: { type: 'string' },
  endpoint: { type: 'string' },
  region: { type: 'string' },
  'uri-style': { type: 'string' },
  json: { type: 'boolean' },
  'passphrase-file': { type: 'string' },
  'ca-file': { type: 'string' },
  checksum: { type: 'string' },
  'frame-length': { type: 'string' },
  'part-size': { type: 'string' },
  'queue-size': { type: 'string' },
  'pebble-socket': { type: 'string' },
  direct: { type: 'boolean' },
  /** The name of --direct when it was for create only. */
  'direct-output': { type: 'boolean' },
  'workload-dir': { type: 'string' },
  'data-dir': { type: 'string' },
  'config-root': { type: 'string' },
  id: { type: 'string' },
  'allow-no-manifest': { type: 'boolean' },
  'keep-previous': { type: 'boolean' },
  force: { type: 'boolean' },
  service: { type: 'string', multiple: true },
  'keep-last': { type: 'string' },
  'keep-days': { type: 'string' },
  'stale-hours': { type: 'string' },
  'dry-run': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

export type Values = ReturnType<
  typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>
>['values'];

export const COMMANDS = ['create', 'list', 'restore', 'delete', 'verify', 'decrypt', 'prune'];

type Flag = keyof typeof OPTIONS;

/** Flags every subcommand takes. */
const COMMON_FLAGS: readonly Flag[] = [
  'bucket',
  'prefix',
  'endpoint',
  'region',
  'uri-style',
  'json',
  'passphrase-file',
  'ca-file',
  'checksum',
  'help',
];

/** How a subcommand reaches the workload: the transport's flags. */
const WORKLOAD_FLAGS: readonly Flag[] = [
  'pebble-socket',
  'direct',
  'direct-output',
  'workload-dir',
  'data-dir',
];

/** The flags of each subcommand besides the common ones (USAGE says the same). */
const COMMAND_FLAGS: Record<string, readonly Flag[]> = {
  create: [...WORKLOAD_FLAGS, 'config-root', 'id', 'frame-length', 'part-size', 'queue-size'],
  list: [],
  restore: [
    ...WORKLOAD_FLAGS,
    'config-root',
    'id',
    'allow-no-manifest',
    'keep-previous',
    'force',
    'service',
  ],
  delete: ['id', 'stale-hours'],
  verify: ['id'],
  decrypt: ['id', 'allow-no-manifest'],
  prune: [...WORKLOAD_FLAGS, 'keep-last', 'keep-days', 'stale-hours', 'dry-run'],
};

/** ConfigError naming the first flag given that `command` does not take. */
function refuseForeignFlags(command: string, values: Values): void {
  const allowed = new Set<string>([...COMMON_FLAGS, ...(COMMAND_FLAGS[command] ?? [])]);
  const foreign = Object.keys(values).find((flag) => !allowed.has(flag));
  if (foreign) {
    throw new ConfigError(
      `--${foreign} does not apply to ${command}; see synapse-backup --help for what ${command} takes`,
    );
  }
}

/** Secrets this run knows, for the redaction of error messages. */
export const secrets: (string | undefined)[] = [
  process.env.SYNAPSE_BACKUP_PASSPHRASE,
  process.env.AWS_SECRET_ACCESS_KEY,
];

export function readPassphrase(values: Values): string {
  if (values['passphrase-file']) {
    let fromFile: string;
    try {
      fromFile = readFileSync(values['passphrase-file'], 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw new ConfigError(
        `cannot read the passphrase file: ${errorMessage(err)}; pass --passphrase-file a file this user can read that holds the passphrase, or set SYNAPSE_BACKUP_PASSPHRASE instead`,
      );
    }
    if (!fromFile) {
      throw new ConfigError(
        `the passphrase file ${values['passphrase-file']} is empty; write the passphrase into it (one line), or set SYNAPSE_BACKUP_PASSPHRASE instead`,
      );
    }
    secrets.push(fromFile);
    return fromFile;
  }
  const fromEnv = process.env.SYNAPSE_BACKUP_PASSPHRASE;
  if (!fromEnv) {
    throw new ConfigError('no passphrase: set SYNAPSE_BACKUP_PASSPHRASE or pass --passphrase-file');
  }
  return fromEnv;
}

/** What create's and restore's missing or wrong --data-dir should be. */
const DATA_DIR_HINT = "pass --data-dir the directory that holds Synapse's homeserver.yaml";
/** The remedy for a missing required flag (`required`). */
const REQUIRED_FLAG_HINT: Record<string, string> = {
  id: 'pass --id ID (synapse-backup list shows the ids)',
  'data-dir': DATA_DIR_HINT,
};

export function required(value: string | undefined, flag: string, command: string): string {
  const hint = REQUIRED_FLAG_HINT[flag] ?? 'see synapse-backup --help';
  if (!value) throw new ConfigError(`${command} needs --${flag}; ${hint}`);
  return value;
}

export function readCaFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(
      `cannot read the CA file: ${errorMessage(err)}; pass --ca-file a PEM file this user can read`,
    );
  }
}

/**
 * The data directory as the engine wants it: absolute. On this host a relative path is
 * taken from the current directory, and create needs it to be a directory. Through Pebble
 * the path is the workload container's, so it is passed on as given.
 */
export function dataDirFor(command: string, values: Values): string | undefined {
  const given = values['data-dir'];
  if (!given || values['pebble-socket']) return given;
  const dir = path.resolve(given);
  if (command !== 'create' && command !== 'restore') return dir;
  let isDir: boolean | undefined;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new ConfigError(
        `cannot use the data directory ${dir}: ${errorMessage(err)}; run as a user who may read it (Synapse's, or root), or pass another --data-dir`,
      );
    }
  }
  if (isDir === false) {
    throw new ConfigError(`the data directory ${dir} is not a directory; ${DATA_DIR_HINT}`);
  }
  if (isDir === undefined && command === 'create') {
    throw new ConfigError(`the data directory ${dir} does not exist; ${DATA_DIR_HINT}`);
  }
  return dir;
}

/**
 * argv as parseArgs should read it, and the flags given no value. parseArgs takes
 * the argument after a flag that takes a value as that value even when it is the
 * next flag (`--keep-last --endpoint URL`), and calls a value that starts with a
 * dash ambiguous (`--keep-last -1`). Here a flag followed by another flag (or by
 * nothing) gets an empty value and is listed in `missing` (another flag's dash
 * value too, with it: `--id -x`), and a number flag's dash value is joined to it
 * (`--keep-last=-1`) for its number check to refuse; both are reported after the
 * flags that do not apply to the command.
 */
function prepareArgv(argv: readonly string[]): { args: string[]; missing: Missing[] } {
  const args: string[] = [];
  const missing: Missing[] = [];
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--') {
      args.push(...argv.slice(i));
      break;
    }
    const name = arg.slice(2);
    const takesValue =
      arg.startsWith('--') &&
      Object.hasOwn(OPTIONS, name) &&
      OPTIONS[name as Flag].type === 'string';
    const next = argv[i + 1];
    if (!takesValue) {
      args.push(arg);
    } else if (next === undefined || next.startsWith('--') || next === '-h') {
      missing.push({ flag: name });
      args.push(`${arg}=`);
    } else if (next.startsWith('-') && NUMBER_FLAGS.includes(name)) {
      args.push(`${arg}=${next}`);
      i += 1;
    } else if (next.startsWith('-') && next.length > 1) {
      missing.push({ flag: name, dashValue: next });
      args.push(`${arg}=`);
      i += 1;
    } else {
      args.push(arg, next);
      i += 1;
    }
  }
  return { args, missing };
}

/** A flag given no value, and the dash argument after it not taken as one. */
type Missing = { flag: string; dashValue?: string };

/** ConfigError for a flag given no value: `--keep-last needs a number (...)`. */
function refuseMissing(missing: readonly Missing[]): void {
  if (missing.length === 0) return;
  const { flag, dashValue } = missing[0];
  if (NUMBER_FLAGS.includes(flag)) throw needsNumber(flag);
  if (dashValue !== undefined) {
    throw new ConfigError(
      `--${flag} needs a value: "${dashValue}" starts with a dash, so it is not taken as one; write --${flag}=${dashValue} if it is the value`,
    );
  }
  throw new ConfigError(`--${flag} needs a value; see synapse-backup --help`);
}

type Token = { kind: string; name?: string; value?: string };

/** ConfigError for the first flag given twice (not --service): parseArgs keeps the last. */
function refuseRepeats(tokens: readonly Token[]): void {
  const given = new Map<string, (string | undefined)[]>();
  for (const token of tokens) {
    if (token.kind !== 'option' || !token.name || token.name === 'service') continue;
    given.set(token.name, [...(given.get(token.name) ?? []), token.value]);
  }
  for (const [name, values] of given) {
    if (values.length < 2) continue;
    const times = values.length === 2 ? 'twice' : `${values.length} times`;
    // An endpoint URL may carry user:password: never echoed.
    const shown =
      values.every((v) => v === undefined) || name === 'endpoint'
        ? ''
        : ` (${values.map((v) => JSON.stringify(v ?? '')).join(', then ')})`;
    throw new ConfigError(`--${name} is given ${times}${shown}; give it once`);
  }
}

/**
 * Parses argv: `help` for --help, `usage` with no command, else the command and its
 * values, with the options each command needs checked before anything is read: first
 * the flags the command does not take, then repeated flags, flags given no value,
 * number values, and the options the command needs.
 */
export function parseCommandLine(
  argv: string[],
): { kind: 'help' } | { kind: 'usage' } | { kind: 'run'; command: string; values: Values } {
  let parsed: { values: Values; positionals: string[]; tokens: Token[] };
  // Its value is not repeated: it is the passphrase.
  if (argv.some((a) => a === '--passphrase' || a.startsWith('--passphrase='))) {
    throw new ConfigError(
      'the passphrase is never a flag (the process list would show it): set SYNAPSE_BACKUP_PASSPHRASE or pass --passphrase-file',
    );
  }
  const { args, missing } = prepareArgv(argv);
  try {
    parsed = parseArgs({ args, options: OPTIONS, allowPositionals: true, tokens: true });
  } catch (err) {
    // Unknown option, missing option value, ...: a usage error like an unknown command.
    throw new ConfigError(`${errorMessage(err).split('. ')[0]}; see synapse-backup --help`);
  }
  const { values, positionals, tokens } = parsed;
  const command = positionals[0];
  if (values.help) return { kind: 'help' };
  if (!command) return { kind: 'usage' };
  if (!COMMANDS.includes(command)) {
    throw new ConfigError(`unknown command "${command}"; see synapse-backup --help`);
  }
  const extra = positionals[1];
  if (extra !== undefined)
    throw new ConfigError(`unexpected argument "${extra}"; see synapse-backup --help`);
  refuseForeignFlags(command, values);
  refuseRepeats(tokens);
  refuseMissing(missing);
  checkNumbers(values);
  if (values.service && !values['pebble-socket']) {
    throw new ConfigError(
      '--service needs --pebble-socket: on this host the CLI manages no services; stop Synapse yourself',
    );
  }
  // Missing options first: before the passphrase, the S3 settings or any directory is touched.
  if (command === 'create' || command === 'restore')
    required(values['data-dir'], 'data-dir', command);
  if (!['create', 'list', 'prune'].includes(command)) required(values.id, 'id', command);
  return { kind: 'run', command, values };
}
