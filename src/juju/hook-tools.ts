/**
 * Juju's hook tools, called with the argv that ops (canonical/operator,
 * ops/hookcmds) uses. Every call to Juju from the charm goes through here.
 *
 * Secrets: callers register secret values with `addSecret`; every argument
 * and stdin sent to a tool, and every error message built here, has them
 * replaced by `***` (belt and braces: the charm never passes them on purpose).
 * secret-get's output (the secret content) is returned, never logged.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { redact } from '../errors';
import {
  ACTION_RESULTS_BUDGET,
  ActionResultError,
  flattenActionResults,
  type ActionResults,
} from './action-results';
import { spawnRunner } from './spawn-runner';

export { spawnRunner } from './spawn-runner';

export {
  ACTION_KEY_SEGMENT,
  ACTION_RESULTS_BUDGET,
  ActionResultError,
  RESERVED_ACTION_KEYS,
  flattenActionResults,
  isValidActionKeySegment,
  type ActionResults,
} from './action-results';

export type StatusName = 'active' | 'blocked' | 'maintenance' | 'waiting';
export type LogLevel = 'TRACE' | 'DEBUG' | 'INFO' | 'WARNING' | 'ERROR';

export interface ToolResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** Runs one tool; the default spawns it from PATH. Injected in unit tests. */
export type ToolRunner = (tool: string, args: string[], input?: string) => Promise<ToolResult>;

export class HookToolError extends Error {
  readonly tool: string;
  readonly exitCode: number;
  readonly stderr: string;

  constructor(tool: string, exitCode: number, stderr: string) {
    const detail = stderr.trim().split('\n').filter(Boolean).slice(-2).join('; ');
    super(`${tool} failed (exit ${exitCode})${detail ? `: ${detail}` : ''}`);
    this.name = 'HookToolError';
    this.tool = tool;
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

/** ops splits juju-log messages longer than this. */
export const MAX_LOG_LINE = 131071;

export interface HookToolsOptions {
  runner?: ToolRunner;
}

export class HookTools {
  private readonly runner: ToolRunner;
  private readonly secrets = new Set<string>();
  /** Calls go out one at a time, in order (action-log from a timer must not overtake action-set). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(options: HookToolsOptions = {}) {
    this.runner = options.runner ?? spawnRunner;
  }

  /** Registers a secret value: it is redacted from everything sent to Juju from now on. */
  addSecret(value: string | undefined): void {
    if (value && value.length >= 4) this.secrets.add(value);
  }

  /** Replaces registered secrets in `text`. */
  redact(text: string): string {
    return redact(text, [...this.secrets]);
  }

  private run(
    tool: string,
    args: string[],
    input?: string,
    reveal: readonly string[] = [],
  ): Promise<string> {
    const task = this.queue.then(async () => {
      const shown = new Set(reveal);
      const hidden = [...this.secrets].filter((s) => !shown.has(s));
      const safeArgs = args.map((a) => redact(a, hidden));
      const safeInput = input === undefined ? undefined : this.redact(input);
      const result = await this.runner(tool, safeArgs, safeInput);
      if (result.exitCode !== 0) {
        throw new HookToolError(tool, result.exitCode, this.redact(result.stderr));
      }
      return result.stdout;
    });
    this.queue = task.catch(() => undefined);
    return task;
  }

  private async runJson<T>(tool: string, args: string[]): Promise<T> {
    const stdout = await this.run(tool, args);
    try {
      return JSON.parse(stdout) as T;
    } catch {
      throw new HookToolError(tool, 0, 'output is not JSON');
    }
  }

  // --- actions ---

  async actionGet(): Promise<Record<string, unknown>> {
    const params = await this.runJson<Record<string, unknown> | null>('action-get', [
      '--format=json',
    ]);
    return params ?? {};
  }

  /**
   * action-set. `reveal` lists registered secrets that this call may carry in
   * argv (Juju takes results only there): a generated password the operator
   * asked for. They stay redacted everywhere else.
   */
  async actionSet(results: ActionResults, reveal: readonly string[] = []): Promise<void> {
    const flat = flattenActionResults(results);
    if (flat.size === 0) return;
    const args = [...flat].map(([k, v]) => `${k}=${v}`);
    const total = args.reduce((n, a) => n + Buffer.byteLength(a) + 1, 0);
    if (total > ACTION_RESULTS_BUDGET) {
      throw new ActionResultError(
        `action results are too large (${total} bytes; the budget is ${ACTION_RESULTS_BUDGET})`,
      );
    }
    await this.run('action-set', args, undefined, reveal);
  }

  async actionLog(message: string): Promise<void> {
    await this.run('action-log', ['--', message]);
  }

  async actionFail(message: string): Promise<void> {
    await this.run('action-fail', ['--', message]);
  }

  // --- config, status, logging, leadership ---

  /** Options that are set or have a default; unset options are absent. Secret options are URIs. */
  async configGet(): Promise<Record<string, string | number | boolean>> {
    return (
      (await this.runJson<Record<string, string | number | boolean> | null>('config-get', [
        '--format=json',
      ])) ?? {}
    );
  }

  async statusSet(
    status: StatusName,
    message: string,
    options: { app?: boolean } = {},
  ): Promise<void> {
    const args = options.app ? ['--application', status] : [status];
    await this.run('status-set', [...args, '--', message]);
  }

  async jujuLog(level: LogLevel, message: string): Promise<void> {
    let text = message;
    if (text.length > MAX_LOG_LINE) {
      await this.run('juju-log', [
        '--log-level',
        level,
        '--',
        `Log string greater than ${MAX_LOG_LINE}. Splitting into multiple chunks: `,
      ]);
    }
    do {
      await this.run('juju-log', ['--log-level', level, '--', text.slice(0, MAX_LOG_LINE)]);
      text = text.slice(MAX_LOG_LINE);
    } while (text);
  }

  async isLeader(): Promise<boolean> {
    return (await this.runJson<boolean>('is-leader', ['--format=json'])) === true;
  }

  async applicationVersionSet(version: string): Promise<void> {
    await this.run('application-version-set', ['--', version]);
  }

  /** open-port `8008/tcp` (Juju: `<port>[/<protocol>]`, a range `<from>-<to>/<protocol>`, or `icmp`). */
  async openPort(port: string): Promise<void> {
    await this.run('open-port', [port]);
  }

  /** network-get's bind address for an endpoint (e.g. `10.1.2.3`); undefined when Juju gives none. */
  async bindAddress(endpoint: string): Promise<string | undefined> {
    const args = [endpoint, '--bind-address', '--format=json'];
    const address = await this.runJson<string | null>('network-get', args);
    return typeof address === 'string' && address ? address : undefined;
  }

  // --- unit state (Juju >= 2.8: state-get, state-set; kept by the controller) ---

  /** The unit's server-side state: string keys and values. */
  async stateGet(): Promise<Record<string, string>> {
    return (
      (await this.runJson<Record<string, string> | null>('state-get', ['--format=json'])) ?? {}
    );
  }

  /** Sets keys in the unit's state; '' deletes a key. Values go in argv: never put secrets here. */
  async stateSet(data: Record<string, string>): Promise<void> {
    const pairs = Object.entries(data).map(([k, v]) => `${k}=${v}`);
    if (pairs.length) await this.run('state-set', pairs);
  }

  // --- relations ---

  /** Relation ids on an endpoint, e.g. ['backup:3']. */
  async relationIds(endpoint: string): Promise<string[]> {
    return (await this.runJson<string[] | null>('relation-ids', [endpoint, '--format=json'])) ?? [];
  }

  /** Remote units of a relation. */
  async relationList(relationId: number): Promise<string[]> {
    return (
      (await this.runJson<string[] | null>('relation-list', [
        '--format=json',
        '-r',
        String(relationId),
      ])) ?? []
    );
  }

  /** The remote application of a relation. */
  async relationRemoteApp(relationId: number): Promise<string | undefined> {
    const app = await this.runJson<string | null>('relation-list', [
      '--format=json',
      '--app',
      '-r',
      String(relationId),
    ]);
    return app || undefined;
  }

  /** All keys of a unit's (or, with app, an application's) databag. */
  async relationGet(
    relationId: number,
    member: string,
    options: { app?: boolean } = {},
  ): Promise<Record<string, string>> {
    const args = ['--format=json', '-r', String(relationId)];
    if (options.app) args.push('--app');
    args.push('-', member);
    return (await this.runJson<Record<string, string> | null>('relation-get', args)) ?? {};
  }

  /** Updates keys in our unit's (or, with app and leadership, our application's) databag; '' deletes. */
  async relationSet(
    relationId: number,
    data: Record<string, string>,
    options: { app?: boolean } = {},
  ): Promise<void> {
    const args = ['-r', String(relationId)];
    if (options.app) args.push('--app');
    args.push('--file', '-');
    await this.run('relation-set', args, JSON.stringify(data));
  }

  // --- secrets ---

  /** Content of a secret as key/value pairs. With refresh, tracks the latest revision. */
  async secretGet(
    uri: string,
    options: { refresh?: boolean; peek?: boolean } = {},
  ): Promise<Record<string, string>> {
    const args = ['--format=json', uri];
    if (options.refresh) args.push('--refresh');
    else if (options.peek) args.push('--peek');
    const content = (await this.runJson<Record<string, string> | null>('secret-get', args)) ?? {};
    for (const value of Object.values(content)) this.addSecret(value);
    return content;
  }

  /** Content of a secret this application owns, by label; undefined when none has it. */
  async secretGetByLabel(label: string): Promise<Record<string, string> | undefined> {
    try {
      const content =
        (await this.runJson<Record<string, string> | null>('secret-get', [
          '--format=json',
          '--label',
          label,
        ])) ?? {};
      for (const value of Object.values(content)) this.addSecret(value);
      return content;
    } catch (err) {
      if (err instanceof HookToolError && /not found/.test(err.stderr)) return undefined;
      throw err;
    }
  }

  /**
   * secret-add, owned by the application (leader only), with a label. The
   * content goes through a 0600 file (`--file`), never argv. Returns the URI.
   */
  async secretAdd(label: string, content: Record<string, string>): Promise<string> {
    for (const value of Object.values(content)) this.addSecret(value);
    const dir = await mkdtemp(join(tmpdir(), 'synapse-charm-secret-'));
    const file = join(dir, 'content.json');
    try {
      await writeFile(file, JSON.stringify(content), { mode: 0o600 });
      const out = await this.run('secret-add', [
        '--owner',
        'application',
        '--label',
        label,
        '--file',
        file,
      ]);
      return out.trim();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
}
