/**
 * The synapse charm: maps Juju events to the workload and the unit status,
 * and actions to the backup engine.
 */
import { BackupEngine } from '../backup/engine';
import type { Progress } from '../backup/types';
import { BackupError, InterruptedError, errorMessage } from '../errors';
import { describeForCharm } from './remedy';
import type { JujuContext } from '../juju/context';
import {
  ActionResultError,
  type ActionResults,
  type HookTools,
  type StatusName,
} from '../juju/hook-tools';
import { checkBucket } from '../s3/client';
import {
  type WorkloadMode,
  WorkloadModeError,
  loadWorkload,
  parseWorkloadMode,
  quotedList,
} from '../workload/factory';
import type { Workload } from '../workload/workload';
import { ActionFailure, type ActionContext, type ActionHandler } from './actions/context';
import { createBackup } from './actions/create-backup';
import { deleteBackup } from './actions/delete-backup';
import { listBackups } from './actions/list-backups';
import { pruneBackups } from './actions/prune-backups';
import { restoreBackup } from './actions/restore-backup';
import { verifyBackup } from './actions/verify-backup';
import {
  BACKUP_ENDPOINT,
  findBackupRelation,
  notConfiguredMessage,
  requestedBucket,
  resolveBackupSetup,
} from './backup-setup';
import { WORKLOAD_EXEC_MODES, parseCharmConfig, type CharmConfig } from './config';
import { CONTAINER_NAME, type Overrides } from './overrides';
import { reconcileSynapse, type SynapseContainer, type WorkloadState } from './synapse';

export const ACTIONS: Record<string, ActionHandler> = {
  'create-backup': createBackup,
  'list-backups': listBackups,
  'restore-backup': restoreBackup,
  'delete-backup': deleteBackup,
  'verify-backup': verifyBackup,
  'prune-backups': pruneBackups,
};

/** Hooks after which the container may be going away: nothing to reconcile. */
const TEARDOWN_HOOKS = new Set([
  'stop',
  'remove',
  'synapse-storage-detaching',
  'data-storage-detaching',
]);

/** Hooks on which the leader (re)states the bucket it asks s3-integrator for. */
const BUCKET_REQUEST_HOOKS = new Set([
  `${BACKUP_ENDPOINT}-relation-joined`,
  'leader-elected',
  'upgrade-charm',
  'config-changed',
]);

export interface CharmOptions {
  ctx: JujuContext;
  tools: HookTools;
  overrides: Overrides;
  workload: SynapseContainer;
}

type BackupHealth =
  { kind: 'none' } | { kind: 'blocked'; message: string } | { kind: 'ok'; description: string };

export class SynapseCharm {
  private readonly ctx: JujuContext;
  private readonly tools: HookTools;
  private readonly overrides: Overrides;
  private readonly workload: SynapseContainer;

  constructor(options: CharmOptions) {
    this.ctx = options.ctx;
    this.tools = options.tools;
    this.overrides = options.overrides;
    this.workload = options.workload;
  }

  /** Runs the hook or action Juju asked for; returns the process exit code. */
  async dispatch(): Promise<number> {
    await this.tools.jujuLog(
      'DEBUG',
      `dispatching ${this.ctx.dispatchPath} on node ${process.version} (${process.execPath})`,
    );
    if (this.ctx.kind === 'action') return this.runAction(this.ctx.actionName!);
    try {
      await this.runHook(this.ctx.hookName!);
      return 0;
    } catch (err) {
      await this.tools.jujuLog(
        'ERROR',
        this.tools.redact(
          `hook ${this.ctx.hookName} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
        ),
      );
      return 1;
    }
  }

  private async loadConfig(): Promise<CharmConfig> {
    return parseCharmConfig(await this.tools.configGet());
  }

  // --- hooks ---

  async runHook(name: string): Promise<void> {
    if (TEARDOWN_HOOKS.has(name)) return;
    const config = await this.loadConfig();
    if (BUCKET_REQUEST_HOOKS.has(name)) await this.requestBucket(config);

    let workload: WorkloadState;
    if (!config.serverName) {
      workload = {
        kind: 'blocked',
        message: `server-name is not set: juju config ${this.ctx.appName} server-name=<matrix domain> (it cannot be changed later)`,
      };
    } else {
      workload = await reconcileSynapse(this.workload, this.overrides, config.serverName, {
        progress: (message) => this.tools.statusSet('maintenance', message),
        log: (message) => this.tools.jujuLog('INFO', message),
      });
      if ('detail' in workload && workload.detail) {
        await this.tools.jujuLog('WARNING', `${workload.message}: ${workload.detail}`);
      }
    }

    const backup = await this.backupHealth(config);

    let status: StatusName;
    let message: string;
    if (workload.kind === 'blocked') {
      [status, message] = ['blocked', workload.message];
    } else if (backup.kind === 'blocked') {
      [status, message] = ['blocked', backup.message];
    } else if (workload.kind === 'unreachable' || workload.kind === 'starting') {
      [status, message] = ['waiting', workload.message];
    } else {
      status = 'active';
      message = backup.kind === 'ok' ? `backups: ${backup.description}` : 'backups not configured';
    }
    if (workload.kind === 'blocked' && backup.kind === 'blocked') {
      await this.tools.jujuLog('WARNING', `also: ${backup.message}`);
    }
    await this.tools.statusSet(status, message);
  }

  /** The leader asks the provider for a bucket in our application databag. */
  private async requestBucket(config: CharmConfig): Promise<void> {
    const relation = await findBackupRelation(this.ctx, this.tools);
    if (!relation) return;
    if (!(await this.tools.isLeader())) return;
    await this.tools.relationSet(
      relation.id,
      { bucket: requestedBucket(config, relation.id) },
      { app: true },
    );
  }

  private async backupHealth(config: CharmConfig): Promise<BackupHealth> {
    const setup = await resolveBackupSetup(this.ctx, this.tools, config);
    if (setup.state === 'none') return { kind: 'none' };
    if (setup.state === 'invalid') return { kind: 'blocked', message: setup.message };
    try {
      await checkBucket(setup.s3);
    } catch (err) {
      const message =
        err instanceof BackupError
          ? describeForCharm(err, setup.settingsSource)
          : `cannot check the S3 bucket "${setup.s3.bucket}": ${errorMessage(err)}`;
      return { kind: 'blocked', message: this.tools.redact(message) };
    }
    return { kind: 'ok', description: setup.description };
  }

  // --- actions ---

  /**
   * Runs action `name`. SIGTERM and SIGINT (Juju's `juju cancel-task` and
   * timeouts) interrupt its engine operation (an AbortSignal): it cleans up and
   * the action fails with `<name> was interrupted (SIGTERM): <what was cleaned up>`.
   */
  async runAction(name: string): Promise<number> {
    const handler = ACTIONS[name];
    const engines: BackupEngine[] = [];
    const interrupt = new AbortController();
    const onSignal = (signal: NodeJS.Signals) => interrupt.abort(signal);
    for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, onSignal);
    try {
      if (!handler) throw new ActionFailure(`unknown action "${name}"`);
      const params = await this.tools.actionGet();
      const config = await this.loadConfig();
      const context: ActionContext = {
        ctx: this.ctx,
        tools: this.tools,
        overrides: this.overrides,
        params,
        config,
        workload: this.workload,
        engine: async (onProgress) => {
          const made = await this.makeEngine(config, interrupt.signal, onProgress);
          engines.push(made.engine);
          return made;
        },
        log: (message) => this.tools.actionLog(message),
      };
      const results: ActionResults = await handler(context);
      await this.tools.actionSet(results);
      return 0;
    } catch (err) {
      const message = this.tools.redact(this.failureMessage(name, err));
      if (!(err instanceof ActionFailure || err instanceof BackupError)) {
        await this.tools
          .jujuLog(
            'ERROR',
            this.tools.redact(
              `action ${name} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
            ),
          )
          .catch(() => undefined);
      }
      await this.tools.actionFail(message);
      return 0;
    } finally {
      for (const signal of ['SIGTERM', 'SIGINT'] as const) process.off(signal, onSignal);
      for (const engine of engines) engine.close();
    }
  }

  private failureMessage(name: string, err: unknown): string {
    if (err instanceof ActionFailure) return err.message;
    if (err instanceof InterruptedError) {
      return `${name} was interrupted (${err.signalName})${err.cleanedUp ? `: ${err.cleanedUp}` : ''}`;
    }
    if (err instanceof BackupError) {
      if (err.code === 'not-found' && !err.remedy && !/list-backups/.test(err.message)) {
        return `${err.message}; run list-backups to see the backups that exist`;
      }
      return describeForCharm(err);
    }
    if (err instanceof ActionResultError)
      return `${name} produced results Juju cannot take: ${err.message}`;
    return `${name} failed unexpectedly: ${errorMessage(err)}; see juju debug-log`;
  }

  private async makeEngine(
    config: CharmConfig,
    signal: AbortSignal,
    onProgress?: (p: Progress) => void,
  ) {
    const setup = await resolveBackupSetup(this.ctx, this.tools, config);
    if (setup.state === 'none') throw new ActionFailure(notConfiguredMessage(this.ctx.appName));
    if (setup.state === 'invalid') {
      throw new ActionFailure(`backups are not usable: ${setup.message}`);
    }
    this.tools.addSecret(setup.passphrase);
    this.tools.addSecret(setup.s3.secretAccessKey);
    const engine = new BackupEngine({
      s3: setup.s3,
      passphrase: setup.passphrase,
      workload: await this.backupWorkload(config),
      dataDir: this.overrides.dataDir,
      onProgress,
      onNotice: (message: string) => void this.tools.actionLog(message).catch(() => undefined),
      progressIntervalMs: 2000,
      signal,
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
  private async backupWorkload(config: CharmConfig): Promise<Workload> {
    let mode: WorkloadMode;
    try {
      mode = parseWorkloadMode(config.workloadExec, WORKLOAD_EXEC_MODES);
    } catch (err) {
      if (!(err instanceof WorkloadModeError)) throw err;
      throw new ActionFailure(
        `workload-exec "${err.mode}" is not valid: use ${quotedList(err.allowed)} (juju config ${this.ctx.appName} workload-exec=pebble)`,
      );
    }
    return loadWorkload(mode, {
      pebbleSocket: this.overrides.pebbleSocket,
      workloadSharedDir: this.overrides.workloadSharedDir,
      onDirectStreamUnavailable: (reason) => this.directStreamUnavailable(reason),
      kubernetes: {
        appName: this.ctx.appName,
        unitNumber: Number(this.ctx.unitName.split('/')[1]),
        container: CONTAINER_NAME,
        modelName: this.ctx.modelName,
      },
    });
  }

  private directStreamUnavailable(reason: string): void {
    const message = `the archive comes through Pebble's websocket, which is slower, because the direct socket could not be used: ${reason}; set workload-exec=pebble-relay to skip the attempt`;
    this.tools.actionLog(message).catch(() => undefined);
    this.tools.jujuLog('WARNING', message).catch(() => undefined);
  }
}
