/**
 * The synapse charm: maps Juju events to the workload and the unit status,
 * and actions to the backup engine.
 */
import type { BackupEngine } from '../backup/engine';
import { BackupError, errorMessage } from '../errors';
import type { JujuContext } from '../juju/context';
import { type ActionResults, type HookTools } from '../juju/hook-tools';
import { syncIngress, type IngressRequest } from '../juju/ingress';
import type { S3Settings } from '../s3/settings';
import {
  ActionFailure,
  actionFailureMessage,
  type ActionContext,
  type ActionHandler,
} from './actions/context';
import { createBackup } from './actions/create-backup';
import { deleteBackup } from './actions/delete-backup';
import { listBackups } from './actions/list-backups';
import { pruneBackups } from './actions/prune-backups';
import { restoreBackup } from './actions/restore-backup';
import { verifyBackup } from './actions/verify-backup';
import { promoteUserAdmin, registerUser } from './actions/users';
import { BACKUP_ENDPOINT, findBackupRelation, requestedBucket } from './backup-setup';
import { backupHealth, isS3Failure, recordCheck } from './backup-status';
import { parseCharmConfig, type CharmConfig } from './config';
import { makeEngine } from './engine-setup';
import { synapseVersion } from './health';
import { listenForInterrupt } from './interrupt';
import { leaderState } from './leader-state';
import { SYNAPSE_PORT, type Overrides } from './overrides';
import { composeStatus, failedCheck, publishStatus, singleUnitMessage } from './status';
import { stopSynapse, type SynapseContainer } from './synapse';

export const ACTIONS: Record<string, ActionHandler> = {
  'create-backup': createBackup,
  'list-backups': listBackups,
  'restore-backup': restoreBackup,
  'delete-backup': deleteBackup,
  'verify-backup': verifyBackup,
  'prune-backups': pruneBackups,
  'register-user': registerUser,
  'promote-user-admin': promoteUserAdmin,
};

/** Hooks after which the container may be going away: nothing to reconcile. */
const TEARDOWN_HOOKS = new Set([
  'stop',
  'remove',
  'synapse-storage-detaching',
  'data-storage-detaching',
]);

/** Hooks that only observe: they probe /health once instead of waiting for it. */
const QUICK_HOOKS = /^(update-status|.+-pebble-check-(failed|recovered))$/;

/** Hooks on which the leader (re)states the bucket it asks s3-integrator for. */
const BUCKET_REQUEST_HOOKS = new Set([
  `${BACKUP_ENDPOINT}-relation-joined`,
  'leader-elected',
  'upgrade-charm',
  'config-changed',
]);

/**
 * What the charm asks the ingress provider for: Synapse's port, and the path
 * prefix stripped (with path routing Synapse must still see /_matrix at its root).
 */
const INGRESS_REQUEST: IngressRequest = { port: SYNAPSE_PORT, stripPrefix: true };

/** Actions during which the unit status says what runs (and that Synapse may be stopped). */
const STATUS_ACTIONS = new Set(['create-backup', 'restore-backup']);

export interface CharmOptions {
  ctx: JujuContext;
  tools: HookTools;
  overrides: Overrides;
  workload: SynapseContainer;
}

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
    const leader = await this.tools.isLeader();
    if (BUCKET_REQUEST_HOOKS.has(name) && leader) await this.requestBucket(config);
    if (!leader) {
      if (await stopSynapse(this.workload)) {
        await this.tools.jujuLog('WARNING', 'stopped Synapse: this unit is not the leader');
      }
      await syncIngress(this.ctx, this.tools, INGRESS_REQUEST, { leader, serving: false });
      await this.tools.statusSet('blocked', singleUnitMessage(this.ctx.appName));
      return;
    }
    await this.tools.openPort(`${SYNAPSE_PORT}/tcp`);
    const quick = QUICK_HOOKS.test(name);
    const { workload, notes } = await leaderState({
      ...this.parts(config),
      ingress: await syncIngress(this.ctx, this.tools, INGRESS_REQUEST, { leader, serving: true }),
      healthWaitMs: quick ? 0 : this.overrides.healthWaitMs,
      reconcile: true,
    });
    if ('detail' in workload && workload.detail) {
      await this.tools.jujuLog('WARNING', `${workload.message}: ${workload.detail}`);
    }
    const backup = await backupHealth(this.ctx, this.tools, config, name !== 'update-status');
    if (workload.kind === 'blocked' && backup.kind === 'problem') {
      await this.tools.jujuLog('WARNING', `also: backups: ${backup.message}`);
    }
    const checkFailed = failedCheck(name, this.ctx.pebbleCheckName);
    const status = composeStatus(workload, backup, checkFailed, notes);
    await publishStatus(this.tools, this.ctx.appName, status, true);
    if (workload.kind === 'up') await this.setWorkloadVersion();
  }

  private parts(config: CharmConfig) {
    const { ctx, tools, overrides, workload } = this;
    return { ctx, tools, overrides, workload, config };
  }

  /**
   * The unit status again after an action, without touching S3. After a
   * restore (`reconcile`) the restored homeserver.yaml gets the current
   * settings and registration secret again (Synapse restarts if that changed it).
   */
  private async refreshStatus(healthWaitMs: number, reconcile = false): Promise<void> {
    try {
      if (!(await this.tools.isLeader())) return;
      const config = await this.loadConfig();
      const { workload, notes } = await leaderState({
        ...this.parts(config),
        ingress: await syncIngress(this.ctx, this.tools, INGRESS_REQUEST, {
          leader: true,
          serving: true,
        }),
        healthWaitMs,
        reconcile,
      });
      const backup = await backupHealth(this.ctx, this.tools, config, false);
      await publishStatus(
        this.tools,
        this.ctx.appName,
        composeStatus(workload, backup, undefined, notes),
        true,
      );
    } catch (err) {
      await this.tools
        .jujuLog(
          'WARNING',
          this.tools.redact(`cannot update the unit status: ${errorMessage(err)}`),
        )
        .catch(() => undefined);
    }
  }

  /** application-version-set from Synapse's federation version API, when it answers. */
  private async setWorkloadVersion(): Promise<void> {
    const version = await synapseVersion(this.overrides.synapseUrl);
    if (version) await this.tools.applicationVersionSet(version);
  }

  /** The leader asks the provider for a bucket in our application databag. */
  private async requestBucket(config: CharmConfig): Promise<void> {
    const relation = await findBackupRelation(this.ctx, this.tools);
    if (!relation) return;
    await this.tools.relationSet(
      relation.id,
      { bucket: requestedBucket(config, relation.id) },
      { app: true },
    );
  }

  // --- actions ---

  /** Runs action `name`; SIGTERM or SIGINT interrupts its engine operation (interrupt.ts). */
  async runAction(name: string): Promise<number> {
    const handler = ACTIONS[name];
    const engines: BackupEngine[] = [];
    const interrupt = listenForInterrupt();
    let s3: S3Settings | undefined;
    let statusTouched = false;
    const reveal: string[] = [];
    let succeeded = false;
    try {
      if (!handler) throw new ActionFailure(`unknown action "${name}"`);
      if (!(await this.tools.isLeader())) {
        throw new ActionFailure(singleUnitMessage(this.ctx.appName));
      }
      const params = await this.tools.actionGet();
      const config = await this.loadConfig();
      const unitStatus = async (message: string) => {
        statusTouched = true;
        const status = { status: 'maintenance' as const, message };
        await publishStatus(this.tools, this.ctx.appName, status, true);
      };
      const context: ActionContext = {
        ctx: this.ctx,
        tools: this.tools,
        overrides: this.overrides,
        params,
        config,
        workload: this.workload,
        engine: async (onProgress, hooks) => {
          const made = await makeEngine({
            ...this.parts(config),
            signal: interrupt.signal,
            onProgress,
            hooks,
          });
          engines.push(made.engine);
          s3 = made.setup.s3;
          return made;
        },
        log: (message) => this.tools.actionLog(message),
        unitStatus,
        revealInResults: (value) => {
          this.tools.addSecret(value);
          reveal.push(value);
        },
      };
      if (name === 'create-backup') await unitStatus('creating backup ...');
      const results: ActionResults = await handler(context);
      if (s3) await recordCheck(this.tools, s3, { ok: true });
      await this.tools.actionSet(results, reveal);
      succeeded = true;
      return 0;
    } catch (err) {
      const message = this.tools.redact(actionFailureMessage(name, err, this.ctx.unitName));
      if (s3 && isS3Failure(err)) await recordCheck(this.tools, s3, { ok: false, message });
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
      interrupt.release();
      for (const engine of engines) engine.close();
      if (statusTouched || STATUS_ACTIONS.has(name) || s3) {
        // After a restore Synapse starts again: wait for it to answer before saying active;
        // a restored homeserver.yaml gets the current settings (a failed one left the files as they were).
        const restore = name === 'restore-backup';
        await this.refreshStatus(restore ? this.overrides.healthWaitMs : 0, restore && succeeded);
      }
    }
  }
}
