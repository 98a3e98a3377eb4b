#!/usr/bin/env node
/**
 * `synapse-backup`: the backup engine without Juju (recovery, or a host's own
 * cron). Usage and options: args.ts; the subcommands: commands.ts. Failure
 * prints one line, `synapse-backup: error: <reason>; <remedy in this CLI's
 * terms>`, and exits 2 for bad input (BAD_INPUT_CODES: usage and configuration
 * errors, a wrong passphrase, an unknown id, a missing bucket, another server's
 * backup, data a backup cannot hold, a restore's data dir that holds none of
 * Synapse's files), 1 otherwise.
 *
 * SIGTERM and SIGINT interrupt the running operation (its AbortSignal): the
 * upload is aborted, the staging dir or snapshot removed (a restore's swap
 * that began is finished first), and it exits with `synapse-backup: error:
 * interrupted by SIGTERM: <what was cleaned up>` and the shell's status for
 * that signal, 128 + its number: 143 for SIGTERM, 130 for SIGINT. A second
 * signal exits at once with that status (a swap it cuts short is journaled:
 * the next run completes or rolls it back).
 */
import { BackupEngine } from '../backup/engine';
import type { EngineOptions } from '../backup/types';
import { BackupError, ConfigError, InterruptedError, redact } from '../errors';
import { parseS3Settings } from '../s3/settings';
import { createWorkload } from '../workload/factory';
import {
  USAGE,
  type Values,
  dataDirFor,
  parseCommandLine,
  readCaFile,
  readPassphrase,
  secrets,
} from './args';
import { wholeNumber } from './numbers';
import { COMMAND_HANDLERS } from './commands';
import { endProgressLine, printer, showProgress } from './output';
import { describeForCli } from './remedy';

/**
 * Errors of what the operator gave (flags, settings, the data dir's content, an
 * id): exit 2. `wrong-passphrase` is the wrapped data key failing to open, which
 * a damaged object only gives if the damage is in the header's few bytes that
 * key authenticates (its encryption context, the wrapped key): damage anywhere
 * else is `corrupt` (exit 1). `not-found` is an unknown id; `s3-bucket` a bucket
 * that does not exist or is in another region; `wrong-server` a backup of
 * another server_name (or none) over this one; `foreign-data-dir` a restore's
 * --data-dir that holds files but none of Synapse's; `not-included` a backup
 * without the database (a PostgreSQL server's) over a live one, unless --force.
 * `busy` (another run holds the
 * data dir or the id) is no bad input: exit 1, as are S3, workload and data
 * faults.
 */
const BAD_INPUT_CODES = new Set([
  'config',
  'invalid-config',
  'empty-selection',
  'unrestorable-entry',
  'no-data-dir',
  'foreign-data-dir',
  'wrong-passphrase',
  'not-found',
  's3-bucket',
  'wrong-server',
  'not-included',
]);

/** Exit statuses for the signals that interrupt a run: 128 + the signal's number. */
const SIGNAL_STATUS: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

/** A second signal this long after the first exits at once, without the cleanup. */
const INSIST_AFTER_MS = 1000;

/**
 * Aborted by the first SIGTERM or SIGINT (its name the reason); a second one at
 * least a second later exits at once. Sooner, it is the same interruption sent
 * twice: `timeout` signals the command and then its process group, and a
 * terminal's Ctrl-C reaches every process of the group.
 */
function interruptOnSignals(): AbortSignal {
  const controller = new AbortController();
  let firstAt = 0;
  for (const name of Object.keys(SIGNAL_STATUS)) {
    process.on(name, () => {
      if (!controller.signal.aborted) {
        firstAt = Date.now();
        controller.abort(name);
      } else if (Date.now() - firstAt >= INSIST_AFTER_MS) {
        process.exit(SIGNAL_STATUS[name]);
      }
    });
  }
  return controller.signal;
}

function engineFor(
  command: string,
  values: Values,
  json: boolean,
  dataDir: string | undefined,
  signal: AbortSignal,
): BackupEngine {
  const s3 = parseS3Settings({
    bucket: values.bucket,
    prefix: values.prefix,
    endpoint: values.endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL,
    region: values.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION,
    uriStyle: values['uri-style'],
    accessKeyId: process.env.AWS_ACCESS_KEY_ID,
    secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
    caChain: values['ca-file'] ? readCaFile(values['ca-file']) : undefined,
    checksumMode: values.checksum,
  });
  const direct = values.direct || values['direct-output'];
  if (direct && !values['pebble-socket']) {
    throw new ConfigError('--direct is for Pebble: give --pebble-socket too');
  }
  if (values['workload-dir'] && !direct) {
    throw new ConfigError(
      '--workload-dir goes with --direct; pass --direct too, or leave --workload-dir out',
    );
  }
  const pebbleMode = direct ? 'pebble' : 'pebble-relay';
  const workload = createWorkload(values['pebble-socket'] ? pebbleMode : 'local', {
    pebbleSocket: values['pebble-socket'],
    workloadSharedDir: values['workload-dir'],
    onDirectStreamUnavailable: (reason) =>
      process.stderr.write(
        `synapse-backup: warning: the archive comes through Pebble's websocket instead: ${reason}\n`,
      ),
  });
  const partMiB = wholeNumber(values['part-size'], 'part-size');
  const needsPassphrase = !['list', 'delete', 'prune'].includes(command);
  const options: EngineOptions = {
    s3,
    // list, delete and prune never decrypt.
    passphrase: needsPassphrase ? readPassphrase(values) : undefined,
    workload,
    dataDir,
    configRoot: values['config-root'],
    frameLength: wholeNumber(values['frame-length'], 'frame-length'),
    partSize: partMiB === undefined ? undefined : partMiB * 1024 * 1024,
    queueSize: wholeNumber(values['queue-size'], 'queue-size'),
    onProgress: json || !process.stderr.isTTY ? undefined : showProgress,
    onNotice: (message) => process.stderr.write(`synapse-backup: ${message}\n`),
    signal,
  };
  return new BackupEngine(options);
}

async function run(argv: string[]): Promise<void> {
  // The SDK nags about Node 20 on every run; the charm itself ships Node 24.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const parsed = parseCommandLine(argv);
  if (parsed.kind === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (parsed.kind === 'usage') {
    process.stderr.write(`${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const { command, values } = parsed;
  const json = Boolean(values.json);
  const dataDir = dataDirFor(command, values);
  const engine = engineFor(command, values, json, dataDir, interruptOnSignals());
  try {
    await COMMAND_HANDLERS[command]({ engine, values, dataDir, print: printer(json) });
  } finally {
    engine.close();
  }
}

run(process.argv.slice(2)).catch((err: unknown) => {
  endProgressLine();
  const message = redact(describeForCli(err), secrets);
  process.stderr.write(`synapse-backup: error: ${message.split('\n')[0]}\n`);
  process.exitCode =
    err instanceof InterruptedError
      ? (SIGNAL_STATUS[err.signalName] ?? 1)
      : err instanceof BackupError && BAD_INPUT_CODES.has(err.code)
        ? 2
        : 1;
});
