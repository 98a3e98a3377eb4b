/**
 * The leader's view of Synapse for the unit status: its settings
 * (settings.ts, with public_baseurl from the public-baseurl option or else
 * the ingress URL), the workload's state (synapse.ts), and the notes the
 * active message carries (where public_baseurl comes from, ingress progress).
 */
import { errorMessage } from '../errors';
import type { JujuContext } from '../juju/context';
import type { HookTools } from '../juju/hook-tools';
import { type IngressState } from '../juju/ingress';
import type { CharmConfig } from './config';
import { configureHomeserver } from './homeserver-config';
import type { Overrides } from './overrides';
import { SettingsError, resolveSettings, type SynapseSettings } from './settings';
import { serverNameUnset } from './status';
import {
  observeSynapse,
  reconcileSynapse,
  serverNameConflict,
  type SynapseContainer,
  type WorkloadState,
} from './synapse';

export interface LeaderStateOptions {
  ctx: JujuContext;
  tools: HookTools;
  overrides: Overrides;
  workload: SynapseContainer;
  config: CharmConfig;
  ingress: IngressState;
  /** Milliseconds to wait for /health (0: probe once). */
  healthWaitMs: number;
  /** Bring the container and files in line (hooks); false only observes (after an action). */
  reconcile: boolean;
}

export interface LeaderState {
  workload: WorkloadState;
  /** Leading parts of the active status message. */
  notes: string[];
}

/** The status notes for public_baseurl and the ingress relation. */
export function settingsNotes(
  settings: SynapseSettings | undefined,
  ingress: IngressState,
): string[] {
  const notes: string[] = [];
  if (settings?.baseurl) {
    notes.push(`public_baseurl ${settings.baseurl.url} (from ${settings.baseurl.source})`);
  }
  if (ingress.kind === 'waiting') notes.push(`ingress: waiting for a URL from ${ingress.app}`);
  if (ingress.kind === 'invalid') {
    notes.push(`ingress: ${ingress.app}'s data is not usable (${ingress.reason})`);
  }
  return notes;
}

/** Brings Synapse in line with the config (or only looks, with reconcile false) and says how it is. */
export async function leaderState(options: LeaderStateOptions): Promise<LeaderState> {
  const { ctx, tools, overrides, workload, config, ingress } = options;
  if (!config.serverName) {
    return { workload: { kind: 'blocked', message: serverNameUnset(ctx.appName) }, notes: [] };
  }
  let settings: SynapseSettings;
  try {
    settings = resolveSettings(
      config,
      ctx.appName,
      ingress.kind === 'ready' ? ingress.url : undefined,
    );
  } catch (err) {
    if (!(err instanceof SettingsError)) throw err;
    return { workload: { kind: 'blocked', message: err.message }, notes: [] };
  }
  const notes = settingsNotes(settings, ingress);
  const configure = (dryRun: boolean) =>
    configureHomeserver({ tools, workload, configPath: overrides.configPath, settings, dryRun });
  if (options.reconcile) {
    const state = await reconcileSynapse(workload, overrides, config.serverName, {
      progress: (message) => tools.statusSet('maintenance', message),
      log: (message) => tools.jujuLog('INFO', message),
      healthWaitMs: options.healthWaitMs,
      prepare: async () => {
        const changed = await configure(false);
        if (changed.length) await tools.jujuLog('INFO', `settings changed: ${changed.join(', ')}`);
        return changed.length > 0;
      },
    });
    return { workload: state, notes };
  }
  const conflict = await serverNameConflict(workload, overrides, config.serverName);
  if (conflict) return { workload: { kind: 'blocked', message: conflict }, notes };
  try {
    await configure(true);
  } catch (err) {
    if (err instanceof SettingsError) {
      return { workload: { kind: 'blocked', message: err.message }, notes };
    }
    await tools.jujuLog('WARNING', `cannot check the settings: ${errorMessage(err)}`);
  }
  const state = await observeSynapse(workload, overrides.synapseUrl, options.healthWaitMs);
  return { workload: state, notes };
}
