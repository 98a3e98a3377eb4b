/**
 * Edits Synapse's configuration files in the workload: homeserver.yaml (the
 * registration shared secret, registration.ts, and the settings the charm
 * owns, settings.ts) and the log config homeserver.yaml's `log_config` names
 * (its root level). Everything is read and checked first; a file is written
 * only when its content changes, so Synapse restarts only then. Every other
 * key and comment stays (the `yaml` package's Document API).
 */
import { dirname, isAbsolute, join } from 'node:path';
import { type Document, parseDocument } from 'yaml';
import { errorMessage, yamlErrorSummary } from '../errors';
import type { HookTools } from '../juju/hook-tools';
import type { Workload } from '../workload/workload';
import { applyRegistrationSecret, readWorkloadFile, writeWorkloadFile } from './registration';
import { SettingsError, applyLogLevel, applyToHomeserver, type SynapseSettings } from './settings';

/** Unit state key: the ingress URL the charm last wrote as public_baseurl (removed when ingress goes). */
export const INGRESS_BASEURL_STATE = 'ingress-baseurl';

export interface ConfigureOptions {
  tools: HookTools;
  workload: Workload;
  /** homeserver.yaml's path in the workload. */
  configPath: string;
  settings: SynapseSettings;
  /** Check only: read and validate, write nothing, leave the registration secret alone. */
  dryRun?: boolean;
}

function parse(text: string, path: string, option: string): Document {
  const doc = parseDocument(text);
  if (doc.errors.length) {
    throw new SettingsError(
      option,
      `${path} is not valid YAML: ${yamlErrorSummary(doc.errors[0])}`,
    );
  }
  return doc;
}

/** Same document text after a parse and print (ignores formatting the yaml printer normalises). */
function sameText(a: string, b: Document): boolean {
  return parseDocument(a).toString() === b.toString();
}

/** The log config file homeserver.yaml names, resolved against its directory. */
function logConfigPath(doc: Document, configPath: string): string {
  const named: unknown = doc.get('log_config');
  if (typeof named !== 'string' || !named) {
    throw new SettingsError(
      'log-level',
      `log-level needs the log config file that homeserver.yaml's log_config names, and ${configPath} names none; add log_config to it, or unset log-level`,
    );
  }
  return isAbsolute(named) ? named : join(dirname(configPath), named);
}

/**
 * Brings the files in line with `settings` (and the registration secret).
 * Returns what changed (homeserver.yaml keys, `log_config root.level`): empty
 * when nothing was written. Throws SettingsError (the option, the reason and
 * the fix) before writing anything when a file cannot take the settings.
 */
export async function configureHomeserver(options: ConfigureOptions): Promise<string[]> {
  const { tools, workload, configPath, settings } = options;
  const original = await readWorkloadFile(workload, configPath);
  const doc = parse(original, configPath, 'server-name');
  const changed: string[] = [];
  if (!options.dryRun && (await applyRegistrationSecret(tools, doc))) {
    changed.push('registration_shared_secret');
  }
  const previous = (await tools.stateGet())[INGRESS_BASEURL_STATE];
  changed.push(...applyToHomeserver(doc, settings, previous ? { public_baseurl: previous } : {}));
  let logWrite: { path: string; text: string } | undefined;
  if (settings.logLevel) {
    const path = logConfigPath(doc, configPath);
    let text: string;
    try {
      text = await readWorkloadFile(workload, path);
    } catch (err) {
      throw new SettingsError('log-level', `log-level: cannot read ${path}: ${errorMessage(err)}`);
    }
    const logDoc = parse(text, path, 'log-level');
    if (applyLogLevel(logDoc, settings.logLevel)) {
      logWrite = { path, text: logDoc.toString() };
      changed.push('log_config root.level');
    }
  }
  if (options.dryRun) return changed;
  if (logWrite) await writeWorkloadFile(workload, logWrite.path, logWrite.text);
  if (!sameText(original, doc)) await writeWorkloadFile(workload, configPath, doc.toString());
  const ingressUrl = settings.baseurl?.source === 'ingress' ? settings.baseurl.url : '';
  if ((previous ?? '') !== ingressUrl) {
    await tools.stateSet({ [INGRESS_BASEURL_STATE]: ingressUrl });
  }
  return changed;
}
