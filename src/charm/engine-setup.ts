/**
 * The backup engine an action runs: its S3 settings and passphrase
 * (backup-setup.ts) and the transport to the workload container
 * (`workload-exec`, workload/factory.ts).
 */
import { BackupEngine } from '../backup/engine';
import type { Progress } from '../backup/types';
import type { JujuContext } from '../juju/context';
import type { HookTools } from '../juju/hook-tools';
import {
  type WorkloadMode,
  WorkloadModeError,
  loadWorkload,
  parseWorkloadMode,
  quotedList,
} from '../workload/factory';
import type { Workload } from '../workload/workload';
import { ActionFailure, withServiceHooks, type ServiceHooks } from './actions/context';
import { notConfiguredMessage, resolveBackupSetup } from './backup-setup';
import { WORKLOAD_EXEC_MODES, type CharmConfig } from './config';
import { CONTAINER_NAME, type Overrides } from './overrides';

export interface EngineSetupOptions {
  ctx: JujuContext;
  tools: HookTools;
  overrides: Overrides;
  config: CharmConfig;
  /** Aborts the engine's operation (SIGTERM or SIGINT to the action). */
  signal: AbortSignal;
  onProgress?: (p: Progress) => void;
  hooks?: ServiceHooks;
}

/**
 * Resolves the backup settings and builds an engine on them. Throws
 * ActionFailure with what to configure when backups are not configured or
 * their settings are invalid.
 */
export async function makeEngine(options: EngineSetupOptions) {
  const { ctx, tools, overrides, config } = options;
  const setup = await resolveBackupSetup(ctx, tools, config);
  if (setup.state === 'none') throw new ActionFailure(notConfiguredMessage(ctx.appName));
  if (setup.state === 'invalid') {
    throw new ActionFailure(`backups are not usable: ${setup.message}`);
  }
  tools.addSecret(setup.passphrase);
  tools.addSecret(setup.s3.secretAccessKey);
  const engine = new BackupEngine({
    s3: setup.s3,
    passphrase: setup.passphrase,
    workload: withServiceHooks(await backupWorkload(options), options.hooks),
    dataDir: overrides.dataDir,
    onProgress: options.onProgress,
    onNotice: (message: string) => void tools.actionLog(message).catch(() => undefined),
    progressIntervalMs: 2000,
    signal: options.signal,
  });
  return { engine, setup };
}

/**
 * Backups reach the container through Pebble unless workload-exec=kubernetes
 * asks for the Kubernetes exec API (which needs `juju trust`; its client is
 * loaded only then). With Pebble, the archive (create's and restore's) goes
 * over a unix socket in the directory Juju mounts in both containers, and
 * through Pebble's websocket when that socket cannot be set up (said in the
 * action's log) or when workload-exec=pebble-relay. See workload/factory.ts.
 */
async function backupWorkload(options: EngineSetupOptions): Promise<Workload> {
  const { ctx, tools, overrides, config } = options;
  let mode: WorkloadMode;
  try {
    mode = parseWorkloadMode(config.workloadExec, WORKLOAD_EXEC_MODES);
  } catch (err) {
    if (!(err instanceof WorkloadModeError)) throw err;
    throw new ActionFailure(
      `workload-exec "${err.mode}" is not valid: use ${quotedList(err.allowed)} (juju config ${ctx.appName} workload-exec=pebble)`,
    );
  }
  return loadWorkload(mode, {
    pebbleSocket: overrides.pebbleSocket,
    workloadSharedDir: overrides.workloadSharedDir,
    onDirectStreamUnavailable: (reason) => directStreamUnavailable(tools, reason),
    kubernetes: {
      appName: ctx.appName,
      unitNumber: Number(ctx.unitName.split('/')[1]),
      container: CONTAINER_NAME,
      modelName: ctx.modelName,
    },
  });
}

function directStreamUnavailable(tools: HookTools, reason: string): void {
  const message = `the archive comes through Pebble's websocket, which is slower, because the direct socket could not be used: ${reason}; set workload-exec=pebble-relay to skip the attempt`;
  tools.actionLog(message).catch(() => undefined);
  tools.jujuLog('WARNING', message).catch(() => undefined);
}
