/**
 * The charm's entry point: `dispatch` runs this file (bundled as build/charm.js)
 * for every hook and action; JUJU_DISPATCH_PATH says which.
 */
import { errorMessage } from '../errors';
import { parseJujuContext } from '../juju/context';
import { HookTools } from '../juju/hook-tools';
import { createWorkload } from '../workload/factory';
import { SynapseCharm } from './charm';
import { loadOverrides } from './overrides';

/** Set once a crash is being reported: the process then ends with status 1, after the report. */
interface CrashState {
  report?: Promise<void>;
}

async function main(crash: CrashState): Promise<number> {
  const tools = new HookTools();
  try {
    const ctx = parseJujuContext();
    process.once('uncaughtException', (err) => {
      crash.report = reportCrash(tools, ctx.actionName, err);
    });
    const overrides = loadOverrides();
    const workload = createWorkload('pebble-relay', { pebbleSocket: overrides.pebbleSocket });
    return await new SynapseCharm({ ctx, tools, overrides, workload }).dispatch();
  } catch (err) {
    // Juju keeps a hook's stderr in the unit log.
    process.stderr.write(`synapse charm: ${tools.redact(errorMessage(err))}\n`);
    return 1;
  }
}

/**
 * A bug that escapes every handler (an 'error' event nobody listens to) ends the
 * process; an action still says why, instead of failing without a message.
 */
function reportCrash(tools: HookTools, action: string | undefined, err: unknown): Promise<void> {
  const detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
  process.stderr.write(`synapse charm: crashed: ${tools.redact(detail)}\n`);
  const failed = action
    ? tools.actionFail(
        tools.redact(`${action} failed unexpectedly: ${errorMessage(err)}; see juju debug-log`),
      )
    : Promise.resolve();
  return failed.catch(() => undefined).finally(() => process.exit(1));
}

const crash: CrashState = {};
main(crash).then(
  // Exit explicitly: keep-alive sockets (S3, Pebble) must not hold the hook open.
  (code) => (crash.report ? undefined : process.exit(code)),
  () => (crash.report ? undefined : process.exit(1)),
);
