import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseJujuContext, parseRelationId } from '../../src/juju/context';
import {
  ActionResultError,
  flattenActionResults,
  HookToolError,
  HookTools,
  type ToolResult,
  type ToolRunner,
} from '../../src/juju/hook-tools';
import { FAKE_TOOL, HOOK_TOOLS, type ToolCall } from '../support/juju-harness';
import { tmpDir } from '../support/peers';

function recorder(stdout = '{}'): {
  runner: ToolRunner;
  calls: { tool: string; args: string[]; input?: string }[];
} {
  const calls: { tool: string; args: string[]; input?: string }[] = [];
  return {
    calls,
    runner: async (tool, args, input) => {
      calls.push({ tool, args, input });
      return { stdout, stderr: '', exitCode: 0 };
    },
  };
}

describe('HookTools argv (as ops runs the tools)', () => {
  it('uses the argv of ops for every tool', async () => {
    const r = recorder('null');
    const tools = new HookTools({ runner: r.runner });
    await tools.actionGet();
    await tools.actionSet({
      'backup-id': '20261126070000',
      backups: { '20261126070000': { size: 5 } },
    });
    await tools.actionLog('-starts with a hyphen');
    await tools.actionFail('it broke');
    await tools.configGet();
    await tools.statusSet('blocked', 'needs a bucket');
    await tools.statusSet('active', '', { app: true });
    await tools.jujuLog('WARNING', 'careful');
    await tools.isLeader();
    await tools.relationIds('backup');
    await tools.relationList(3);
    await tools.relationRemoteApp(3);
    await tools.relationGet(3, 's3-integrator', { app: true });
    await tools.relationGet(3, 's3-integrator/0');
    await tools.relationSet(3, { bucket: 'b' }, { app: true });
    await tools.secretGet('secret:abc', { refresh: true });
    await tools.secretGet('secret:abc', { peek: true });
    await tools.applicationVersionSet('1.120.0');
    await tools.openPort('8008/tcp');
    await tools.bindAddress('ingress');
    await tools.stateGet();
    await tools.stateSet({ 's3-check': '{"ok":true}', gone: '' });
    await tools.secretGetByLabel('synapse-registration');
    expect(r.calls.map((c) => [c.tool, ...c.args])).toEqual([
      ['action-get', '--format=json'],
      ['action-set', 'backup-id=20261126070000', 'backups.20261126070000.size=5'],
      ['action-log', '--', '-starts with a hyphen'],
      ['action-fail', '--', 'it broke'],
      ['config-get', '--format=json'],
      ['status-set', 'blocked', '--', 'needs a bucket'],
      ['status-set', '--application', 'active', '--', ''],
      ['juju-log', '--log-level', 'WARNING', '--', 'careful'],
      ['is-leader', '--format=json'],
      ['relation-ids', 'backup', '--format=json'],
      ['relation-list', '--format=json', '-r', '3'],
      ['relation-list', '--format=json', '--app', '-r', '3'],
      ['relation-get', '--format=json', '-r', '3', '--app', '-', 's3-integrator'],
      ['relation-get', '--format=json', '-r', '3', '-', 's3-integrator/0'],
      ['relation-set', '-r', '3', '--app', '--file', '-'],
      ['secret-get', '--format=json', 'secret:abc', '--refresh'],
      ['secret-get', '--format=json', 'secret:abc', '--peek'],
      ['application-version-set', '--', '1.120.0'],
      ['open-port', '8008/tcp'],
      ['network-get', 'ingress', '--bind-address', '--format=json'],
      ['state-get', '--format=json'],
      ['state-set', 's3-check={"ok":true}', 'gone='],
      ['secret-get', '--format=json', '--label', 'synapse-registration'],
    ]);
    expect(r.calls.find((c) => c.tool === 'relation-set')?.input).toBe('{"bucket":"b"}');
  });

  it.each([
    ['Upper', { Upper: 'x' }],
    ['under_score', { under_score: 'x' }],
    ['-leading', { '-leading': 'x' }],
    ['trailing-', { 'trailing-': 'x' }],
    ['nested bad', { backups: { Weekly_1: { size: '1' } } }],
    ['dotted key', { 'a.b': 'x' }],
    ['stdout', { stdout: 'x' }],
    ['stderr', { stderr: 'x' }],
    ['stdout-encoding', { 'stdout-encoding': 'x' }],
    ['stderr-encoding', { 'stderr-encoding': 'x' }],
  ])('rejects the action-set key %s before calling Juju', async (_name, results) => {
    const r = recorder();
    const tools = new HookTools({ runner: r.runner });
    await expect(tools.actionSet(results)).rejects.toThrow(ActionResultError);
    expect(r.calls).toHaveLength(0);
  });

  it('allows reserved words below the top level and digits-only keys', () => {
    expect(
      Object.fromEntries(
        flattenActionResults({ a: { stdout: 'x' }, '20261126070000': { status: 'ok' } }),
      ),
    ).toEqual({ 'a.stdout': 'x', '20261126070000.status': 'ok' });
  });

  it('refuses results larger than the argv budget', async () => {
    const r = recorder();
    const tools = new HookTools({ runner: r.runner });
    await expect(tools.actionSet({ formatted: 'x'.repeat(200 * 1024) })).rejects.toThrow(
      /too large/,
    );
    expect(r.calls).toHaveLength(0);
  });

  it('redacts registered secrets from argv, stdin and errors', async () => {
    const calls: { args: string[]; input?: string }[] = [];
    const runner: ToolRunner = async (tool, args, input) => {
      calls.push({ args, input });
      if (tool === 'status-set')
        return { stdout: '', stderr: `ERROR bad ${args.join(' ')}`, exitCode: 1 };
      if (tool === 'secret-get')
        return { stdout: '{"passphrase":"hunter2-secret"}', stderr: '', exitCode: 0 };
      return { stdout: '', stderr: '', exitCode: 0 };
    };
    const tools = new HookTools({ runner });
    await tools.secretGet('secret:x');
    await tools.jujuLog('INFO', 'the passphrase is hunter2-secret');
    await tools.relationSet(1, { note: 'hunter2-secret' });
    const err = await tools.statusSet('blocked', 'hunter2-secret').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HookToolError);
    expect((err as Error).message).not.toContain('hunter2-secret');
    const sent = JSON.stringify(calls.slice(1));
    expect(sent).not.toContain('hunter2-secret');
    expect(sent).toContain('***');
  });

  it('secret-add passes the content in a 0600 file; action-set reveals only what it is told', async () => {
    let seen: { args: string[]; content: string; mode: number } | undefined;
    const calls: string[][] = [];
    const tools = new HookTools({
      runner: async (tool, args) => {
        calls.push([tool, ...args]);
        if (tool === 'secret-add') {
          const file = args[args.indexOf('--file') + 1];
          seen = { args, content: fs.readFileSync(file, 'utf8'), mode: fs.statSync(file).mode };
          return { stdout: 'secret:abc\n', stderr: '', exitCode: 0 };
        }
        return { stdout: '', stderr: '', exitCode: 0 };
      },
    });
    const uri = await tools.secretAdd('synapse-registration', { 'shared-key': 's3kr1t-value' });
    expect(uri).toBe('secret:abc');
    expect(seen?.content).toBe('{"shared-key":"s3kr1t-value"}');
    expect(seen!.mode & 0o777).toBe(0o600);
    expect(fs.existsSync(seen!.args.at(-1)!)).toBe(false);
    tools.addSecret('generated-password');
    await tools.actionSet({ password: 'generated-password', other: 's3kr1t-value' }, [
      'generated-password',
    ]);
    await tools.actionLog('password generated-password');
    expect(calls.slice(1)).toEqual([
      ['action-set', 'password=generated-password', 'other=***'],
      ['action-log', '--', 'password ***'],
    ]);
    expect(JSON.stringify(calls)).not.toContain('s3kr1t-value');
  });

  it('splits juju-log messages the way ops does', async () => {
    const r = recorder();
    const tools = new HookTools({ runner: r.runner });
    await tools.jujuLog('DEBUG', 'y'.repeat(131071 + 10));
    expect(r.calls.map((c) => c.args[3].length)).toEqual([expect.any(Number), 131071, 10]);
  });

  it('calls tools one at a time, in order', async () => {
    const order: string[] = [];
    const runner: ToolRunner = async (tool, args): Promise<ToolResult> => {
      order.push(`start ${args.at(-1)}`);
      await new Promise((r) => setTimeout(r, tool === 'action-log' ? 30 : 1));
      order.push(`end ${args.at(-1)}`);
      return { stdout: '', stderr: '', exitCode: 0 };
    };
    const tools = new HookTools({ runner });
    await Promise.all([tools.actionLog('a'), tools.actionSet({ k: 'b' })]);
    expect(order).toEqual(['start a', 'end a', 'start k=b', 'end k=b']);
  });
});

describe('JujuContext', () => {
  const base = { JUJU_UNIT_NAME: 'synapse/0', JUJU_MODEL_NAME: 'm', JUJU_CHARM_DIR: '/charm' };

  it('parses a relation hook', () => {
    const ctx = parseJujuContext({
      ...base,
      JUJU_DISPATCH_PATH: 'hooks/backup-relation-joined',
      JUJU_RELATION: 'backup',
      JUJU_RELATION_ID: 'backup:3',
      JUJU_REMOTE_APP: 's3-integrator',
      JUJU_REMOTE_UNIT: 's3-integrator/0',
    });
    expect(ctx).toMatchObject({
      kind: 'hook',
      hookName: 'backup-relation-joined',
      appName: 'synapse',
      relationName: 'backup',
      relationId: 3,
      remoteApp: 's3-integrator',
    });
  });

  it('parses an action and a pebble-ready hook', () => {
    expect(
      parseJujuContext({
        ...base,
        JUJU_DISPATCH_PATH: 'actions/create-backup',
        JUJU_ACTION_NAME: 'create-backup',
      }),
    ).toMatchObject({ kind: 'action', actionName: 'create-backup' });
    expect(
      parseJujuContext({
        ...base,
        JUJU_DISPATCH_PATH: 'hooks/synapse-pebble-ready',
        JUJU_WORKLOAD_NAME: 'synapse',
      }),
    ).toMatchObject({ kind: 'hook', hookName: 'synapse-pebble-ready', workloadName: 'synapse' });
  });

  it('refuses to run outside Juju', () => {
    expect(() => parseJujuContext({})).toThrow(/JUJU_UNIT_NAME/);
    expect(() => parseJujuContext({ ...base, JUJU_DISPATCH_PATH: 'elsewhere' })).toThrow(
      /JUJU_DISPATCH_PATH/,
    );
    expect(parseRelationId('7')).toBe(7);
    expect(() => parseRelationId('backup:x')).toThrow();
  });
});

describe('fake hook tools behave like Juju', () => {
  let dir: string;
  let statePath: string;
  let logPath: string;

  beforeAll(async () => {
    dir = (await tmpDir('fake-tools')).path;
    fs.mkdirSync(path.join(dir, 'bin'));
    for (const t of HOOK_TOOLS) fs.symlinkSync(FAKE_TOOL, path.join(dir, 'bin', t));
    statePath = path.join(dir, 'state.json');
    logPath = path.join(dir, 'log.jsonl');
  });

  beforeEach(() => {
    fs.writeFileSync(
      statePath,
      JSON.stringify({
        leader: false,
        config: { 'server-name': 'example.com', 's3-uri-style': 'host' },
        secrets: { 'secret:aaa': { content: { passphrase: 'p4ss' }, granted: false } },
        relations: [
          {
            id: 3,
            endpoint: 'backup',
            remoteApp: 's3-integrator',
            remoteUnits: ['s3-integrator/0'],
            data: {},
          },
        ],
        action: { params: { 'backup-id': 'x' }, results: {}, logs: [] },
      }),
    );
    fs.writeFileSync(logPath, '');
  });

  const run = (tool: string, args: string[], options: { action?: boolean; input?: string } = {}) =>
    new Promise<ToolResult>((resolve) => {
      const child = spawn(path.join(dir, 'bin', tool), args, {
        env: {
          PATH: process.env.PATH,
          FAKE_JUJU_STATE: statePath,
          FAKE_JUJU_LOG: logPath,
          JUJU_UNIT_NAME: 'synapse/0',
          JUJU_DISPATCH_PATH: options.action ? 'actions/create-backup' : 'hooks/install',
          ...(options.action ? { JUJU_ACTION_NAME: 'create-backup' } : {}),
        },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c) => (stdout += c));
      child.stderr.on('data', (c) => (stderr += c));
      child.on('close', (code) => resolve({ stdout, stderr, exitCode: code ?? -1 }));
      child.stdin.end(options.input ?? '');
    });

  it('rejects bad and reserved action-set keys, and action tools outside actions', async () => {
    expect((await run('action-set', ['Bad_Key=1'], { action: true })).exitCode).toBe(2);
    const reserved = await run('action-set', ['stdout=1'], { action: true });
    expect(reserved.exitCode).toBe(2);
    expect(reserved.stderr).toMatch(/reserved/);
    expect((await run('action-set', ['a..b=1'], { action: true })).exitCode).toBe(2);
    expect((await run('action-set', ['ok-key.sub=1'], { action: true })).exitCode).toBe(0);
    expect((await run('action-set', ['k=1'])).stderr).toMatch(/not running an action/);
    const state = JSON.parse(fs.readFileSync(statePath, 'utf8'));
    expect(state.action.results).toEqual({ 'ok-key': { sub: '1' } });
  });

  it('rejects unknown flags and serves config without unset options', async () => {
    const bad = await run('config-get', ['--format=json', '--bogus']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/option provided but not defined: --bogus/);
    const cfg = await run('config-get', ['--format=json']);
    expect(JSON.parse(cfg.stdout)).toEqual({
      'server-name': 'example.com',
      's3-uri-style': 'host',
    });
  });

  it('enforces leadership and secret grants', async () => {
    const set = await run('relation-set', ['-r', '3', '--app', '--file', '-'], {
      input: '{"bucket":"b"}',
    });
    expect(set.exitCode).toBe(1);
    expect(set.stderr).toMatch(/not the leader/);
    expect((await run('status-set', ['--application', 'active', '--', 'x'])).exitCode).toBe(1);
    const secret = await run('secret-get', ['--format=json', 'secret:aaa', '--refresh']);
    expect(secret.stderr).toMatch(/permission denied/);
    expect((await run('secret-get', ['--format=json', 'secret:zzz'])).stderr).toMatch(/not found/);
  });

  it('serves open-port, unit state and application secrets like Juju', async () => {
    expect((await run('open-port', ['8008/tcp'])).exitCode).toBe(0);
    expect((await run('open-port', ['http'])).exitCode).toBe(2);
    expect((await run('state-set', ['k=v', 'j=w'])).exitCode).toBe(0);
    expect((await run('state-set', ['j='])).exitCode).toBe(0);
    expect(JSON.parse((await run('state-get', ['--format=json'])).stdout)).toEqual({ k: 'v' });
    const file = path.join(path.dirname(statePath), 'secret.json');
    fs.writeFileSync(file, '{"shared-key":"value"}');
    // Application secrets need leadership.
    const add = await run('secret-add', [
      '--owner',
      'application',
      '--label',
      'l1',
      '--file',
      file,
    ]);
    expect(add.stderr).toMatch(/not the leader/);
    const state = JSON.parse(fs.readFileSync(statePath, 'utf8'));
    expect(state.openPorts).toEqual(['8008/tcp']);
  });

  it('logs every call with argv and stdin', async () => {
    await run('relation-set', ['-r', 'backup:3', '--file', '-'], { input: '{"a":"b"}' });
    const calls = fs
      .readFileSync(logPath, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as ToolCall);
    expect(calls).toEqual([
      expect.objectContaining({
        tool: 'relation-set',
        argv: ['-r', 'backup:3', '--file', '-'],
        stdin: '{"a":"b"}',
        exitCode: 0,
      }),
    ]);
    const state = JSON.parse(fs.readFileSync(statePath, 'utf8'));
    expect(state.relations[0].data['synapse/0']).toEqual({ a: 'b' });
  });
});
