#!/usr/bin/env node
/*
 * A fake of Juju's hook tools for tests. The harness links this one script
 * under each tool name (action-get, status-set, ...) in a directory put first
 * on PATH; the name it was called by says which tool it is.
 *
 * Like Juju it parses flags the gnuflag way (flags anywhere before `--`,
 * `--flag=value` or `--flag value`, unknown flags rejected with exit 2),
 * validates action-set keys (lowercase alphanumerics and hyphens per
 * dot-separated segment; reserved stdout/stderr/stdout-encoding/stderr-encoding),
 * enforces leadership for application data and status, and refuses action
 * tools outside an action.
 *
 * Environment:
 *   FAKE_JUJU_STATE  JSON state file (read, and updated by the tools that write)
 *   FAKE_JUJU_LOG    JSON-lines file; every call appends
 *                    {tool, argv, stdin, exitCode, stderr, dispatch, t}
 *
 * State file:
 *   { leader: bool,
 *     config: { option: value },                      // unset options absent
 *     secrets: { "secret:ID": { content: {k: v}, granted: bool } },
 *     relations: [ { id, endpoint, remoteApp, remoteUnits: [], data: { member: {k: v} } } ],
 *     action: { params: {}, results: {}, failed: bool, message: string, logs: [] },
 *     status: { unit: {status, message}, app: {status, message} },
 *     version: string,
 *     openPorts: ["8008/tcp"],                         // open-port
 *     bindAddress: "10.1.2.3",                         // network-get --bind-address
 *     unitState: { key: value } }                      // state-get, state-set
 */
import fs from 'node:fs';
import path from 'node:path';

const tool = path.basename(process.argv[1]);
const argv = process.argv.slice(2);
const statePath = process.env.FAKE_JUJU_STATE;
const logPath = process.env.FAKE_JUJU_LOG;

let stdin = null;
if (!process.stdin.isTTY) {
  try {
    stdin = fs.readFileSync(0, 'utf8');
  } catch {
    stdin = null;
  }
}

class ToolExit extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function fail(message, code = 1) {
  throw new ToolExit(code, `ERROR ${message}`);
}

function loadState() {
  if (!statePath) fail('FAKE_JUJU_STATE is not set', 2);
  const state = JSON.parse(fs.readFileSync(statePath, 'utf8'));
  state.config ??= {};
  state.secrets ??= {};
  state.relations ??= [];
  state.status ??= {};
  return state;
}

function saveState(state) {
  const tmp = `${statePath}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(state, null, 2));
  fs.renameSync(tmp, statePath);
}

/** gnuflag-style parsing: {flags, positional}. spec: {bool: [...], value: [...]} (names without dashes). */
function parseFlags(args, spec) {
  const bool = new Set(spec.bool ?? []);
  const value = new Set([...(spec.value ?? [])]);
  const flags = {};
  const positional = [];
  let i = 0;
  for (; i < args.length; i++) {
    const arg = args[i];
    if (arg === '--') {
      positional.push(...args.slice(i + 1));
      break;
    }
    if (arg.startsWith('-') && arg !== '-') {
      const body = arg.replace(/^--?/, '');
      const eq = body.indexOf('=');
      const name = eq >= 0 ? body.slice(0, eq) : body;
      if (bool.has(name)) {
        if (eq >= 0) {
          const raw = body.slice(eq + 1);
          if (/^(1|t|T|TRUE|true|True)$/.test(raw)) flags[name] = true;
          else if (/^(0|f|F|FALSE|false|False)$/.test(raw)) flags[name] = false;
          else fail(`invalid boolean value "${raw}" for flag ${arg.split('=')[0]}`, 2);
        } else {
          flags[name] = true;
        }
      } else if (value.has(name)) {
        if (eq >= 0) flags[name] = body.slice(eq + 1);
        else {
          if (i + 1 >= args.length) fail(`flag needs an argument: ${arg}`, 2);
          flags[name] = args[++i];
        }
      } else {
        fail(`option provided but not defined: ${arg.split('=')[0]}`, 2);
      }
    } else {
      positional.push(arg);
    }
  }
  if (flags.format !== undefined && flags.format !== 'json') {
    fail(`this fake only serves --format=json (got "${flags.format}")`, 2);
  }
  return { flags, positional };
}

function inAction() {
  return (
    Boolean(process.env.JUJU_ACTION_NAME) || /^actions\//.test(process.env.JUJU_DISPATCH_PATH ?? '')
  );
}

function requireAction() {
  if (!inAction()) fail('not running an action');
}

const unitName = process.env.JUJU_UNIT_NAME ?? 'synapse/0';
const appName = unitName.split('/')[0];

const KEY_SEGMENT = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;
const RESERVED = new Set(['stdout', 'stdout-encoding', 'stderr', 'stderr-encoding']);

function findRelation(state, ref) {
  const raw = ref ?? process.env.JUJU_RELATION_ID;
  if (!raw) fail('no relation id specified', 2);
  const m = /^(?:([a-z0-9-]+):)?(\d+)$/.exec(raw);
  if (!m) fail(`invalid value "${raw}" for option -r: invalid relation id`, 2);
  const rel = state.relations.find((r) => r.id === Number(m[2]));
  if (!rel || (m[1] && m[1] !== rel.endpoint)) {
    fail(`invalid value "${raw}" for option -r: relation not found`, 2);
  }
  rel.data ??= {};
  return rel;
}

function out(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

const tools = {
  'action-get'(args) {
    const { positional } = parseFlags(args, { value: ['format'] });
    requireAction();
    const state = loadState();
    const params = state.action?.params ?? {};
    if (positional.length === 0) return out(params);
    let v = params;
    for (const part of positional[0].split('.')) v = v == null ? undefined : v[part];
    out(v ?? null);
  },

  'action-set'(args) {
    const { positional } = parseFlags(args, {});
    requireAction();
    if (positional.length === 0) fail('no key=value pairs specified', 2);
    const state = loadState();
    state.action ??= {};
    state.action.results ??= {};
    for (const pair of positional) {
      const eq = pair.indexOf('=');
      if (eq <= 0) fail(`argument "${pair}" must be of the form key=value`, 2);
      const key = pair.slice(0, eq);
      const segments = key.split('.');
      for (const seg of segments) {
        if (!KEY_SEGMENT.test(seg)) {
          fail(
            `key "${key}" must start and end with lowercase alphanumeric, and contain only lowercase alphanumeric, hyphens and periods`,
            2,
          );
        }
      }
      if (RESERVED.has(segments[0])) fail(`cannot set reserved action key "${segments[0]}"`, 2);
      let node = state.action.results;
      for (const seg of segments.slice(0, -1)) {
        if (typeof node[seg] !== 'object' || node[seg] === null) node[seg] = {};
        node = node[seg];
      }
      node[segments[segments.length - 1]] = pair.slice(eq + 1);
    }
    saveState(state);
  },

  'action-log'(args) {
    const { positional } = parseFlags(args, {});
    requireAction();
    if (positional.length === 0) fail('no message specified', 2);
    const state = loadState();
    state.action ??= {};
    state.action.logs ??= [];
    state.action.logs.push(positional.join(' '));
    saveState(state);
  },

  'action-fail'(args) {
    const { positional } = parseFlags(args, {});
    requireAction();
    const state = loadState();
    state.action ??= {};
    state.action.failed = true;
    state.action.message = positional.length
      ? positional.join(' ')
      : 'action failed without reason given, check action for errors';
    saveState(state);
  },

  'config-get'(args) {
    const { flags, positional } = parseFlags(args, { bool: ['all', 'a'], value: ['format'] });
    const state = loadState();
    if (positional.length > 1) fail(`unrecognized args: ${JSON.stringify(positional.slice(1))}`, 2);
    if (positional.length === 1) return out(state.config[positional[0]] ?? null);
    if (flags.all || flags.a) return out(state.config);
    out(Object.fromEntries(Object.entries(state.config).filter(([, v]) => v !== null)));
  },

  'status-set'(args) {
    const { flags, positional } = parseFlags(args, { bool: ['application'] });
    const [status, ...rest] = positional;
    if (!status) fail('invalid args, require <status> [message] [data]', 2);
    if (!['maintenance', 'blocked', 'waiting', 'active'].includes(status)) {
      fail(`invalid status "${status}", expected one of [maintenance blocked waiting active]`, 2);
    }
    if (rest.length > 1) fail(`unrecognized args: ${JSON.stringify(rest.slice(1))}`, 2);
    const state = loadState();
    if (flags.application && !state.leader) fail('this unit is not the leader');
    const which = flags.application ? 'app' : 'unit';
    state.status[which] = { status, message: rest[0] ?? '' };
    state.statusHistory ??= [];
    state.statusHistory.push({ which, status, message: rest[0] ?? '' });
    saveState(state);
  },

  'juju-log'(args) {
    const { flags, positional } = parseFlags(args, { bool: ['debug'], value: ['log-level', 'l'] });
    const level = flags['log-level'] ?? flags.l ?? 'INFO';
    if (!['TRACE', 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'].includes(level)) {
      fail(`invalid log level "${level}"`, 2);
    }
    if (positional.length === 0) fail('no message specified', 2);
  },

  'is-leader'(args) {
    parseFlags(args, { value: ['format'] });
    out(Boolean(loadState().leader));
  },

  'application-version-set'(args) {
    const { positional } = parseFlags(args, {});
    if (positional.length !== 1) fail('application-version-set takes exactly one version', 2);
    const state = loadState();
    state.version = positional[0];
    saveState(state);
  },

  'open-port'(args) {
    const { positional } = parseFlags(args, { value: ['endpoints', 'format'] });
    if (positional.length !== 1) fail('open-port takes one port, range or "icmp"', 2);
    const spec = positional[0];
    const m = /^(\d+)(?:-(\d+))?(?:\/(tcp|udp))?$/.exec(spec);
    if (spec !== 'icmp' && (!m || Number(m[1]) < 1 || Number(m[2] ?? m[1]) > 65535)) {
      fail(`invalid port or range "${spec}"`, 2);
    }
    const state = loadState();
    state.openPorts ??= [];
    const normal = spec === 'icmp' || spec.includes('/') ? spec : `${spec}/tcp`;
    if (!state.openPorts.includes(normal)) state.openPorts.push(normal);
    saveState(state);
  },

  'network-get'(args) {
    const { flags, positional } = parseFlags(args, {
      bool: ['bind-address', 'ingress-address', 'egress-subnets', 'primary-address'],
      value: ['format', 'r', 'relation'],
    });
    if (positional.length !== 1) fail('no endpoint specified', 2);
    if (!flags['bind-address']) fail('this fake serves only --bind-address', 2);
    out(loadState().bindAddress ?? '10.1.2.3');
  },

  async 'secret-add'(args) {
    const { flags, positional } = parseFlags(args, {
      value: ['owner', 'label', 'description', 'expire', 'rotate', 'file'],
    });
    const owner = flags.owner ?? 'application';
    if (!['application', 'unit'].includes(owner)) fail(`invalid owner "${owner}"`, 2);
    const state = loadState();
    if (owner === 'application' && !state.leader) fail('this unit is not the leader');
    const content = {};
    if (flags.file !== undefined) {
      const parsed = (await import('yaml')).parse(fs.readFileSync(flags.file, 'utf8'));
      Object.assign(content, parsed);
    }
    for (const pair of positional) {
      const eq = pair.indexOf('=');
      if (eq <= 0) fail(`expected "key=value", got "${pair}"`, 2);
      content[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
    if (Object.keys(content).length === 0) fail('missing secret value or filename', 2);
    for (const key of Object.keys(content)) {
      if (!/^[a-z](?:-?[a-z0-9]){2,}$/.test(key)) fail(`invalid key "${key}"`, 2);
    }
    if (flags.label && Object.values(state.secrets).some((s) => s.label === flags.label)) {
      fail(`secret with label "${flags.label}" already exists`);
    }
    const uri = `secret:${Math.random().toString(36).slice(2).padEnd(20, '0').slice(0, 20)}`;
    state.secrets[uri] = { content, granted: true, label: flags.label, owner };
    saveState(state);
    process.stdout.write(`${uri}\n`);
  },

  'state-get'(args) {
    const { flags, positional } = parseFlags(args, { bool: ['strict'], value: ['format', 'o'] });
    if (positional.length > 1) fail(`unrecognized args: ${JSON.stringify(positional.slice(1))}`, 2);
    const unitState = loadState().unitState ?? {};
    if (positional.length === 0) return out(unitState);
    const key = positional[0];
    if (!(key in unitState)) {
      if (flags.strict) fail(`key "${key}" not found`);
      return out(null);
    }
    out(unitState[key]);
  },

  'state-set'(args) {
    const { positional } = parseFlags(args, { value: ['file'] });
    const state = loadState();
    state.unitState ??= {};
    for (const pair of positional) {
      const eq = pair.indexOf('=');
      if (eq <= 0) fail(`expected "key=value", got "${pair}"`, 2);
      const [key, value] = [pair.slice(0, eq), pair.slice(eq + 1)];
      if (value === '') delete state.unitState[key];
      else state.unitState[key] = value;
    }
    saveState(state);
  },

  'relation-ids'(args) {
    const { positional } = parseFlags(args, { value: ['format'] });
    const endpoint = positional[0] ?? process.env.JUJU_RELATION;
    if (!endpoint) fail('no endpoint name specified', 2);
    if (positional.length > 1) fail(`unrecognized args: ${JSON.stringify(positional.slice(1))}`, 2);
    const state = loadState();
    out(state.relations.filter((r) => r.endpoint === endpoint).map((r) => `${r.endpoint}:${r.id}`));
  },

  'relation-list'(args) {
    const { flags, positional } = parseFlags(args, {
      bool: ['app'],
      value: ['format', 'r', 'relation'],
    });
    if (positional.length) fail(`unrecognized args: ${JSON.stringify(positional)}`, 2);
    const rel = findRelation(loadState(), flags.r ?? flags.relation);
    if (flags.app) return out(rel.remoteApp ?? '');
    out(rel.remoteUnits ?? []);
  },

  'relation-get'(args) {
    const { flags, positional } = parseFlags(args, {
      bool: ['app'],
      value: ['format', 'r', 'relation'],
    });
    const state = loadState();
    const rel = findRelation(state, flags.r ?? flags.relation);
    const key = positional[0] ?? '-';
    const member =
      positional[1] ?? (flags.app ? process.env.JUJU_REMOTE_APP : process.env.JUJU_REMOTE_UNIT);
    if (!member) fail('no unit or application specified', 2);
    if (positional.length > 2) fail(`unrecognized args: ${JSON.stringify(positional.slice(2))}`, 2);
    const memberApp = member.split('/')[0];
    if (flags.app && member.includes('/')) fail(`"${member}" is not a valid application name`, 2);
    if (!flags.app && !member.includes('/')) fail(`"${member}" is not a valid unit name`, 2);
    if (flags.app && member === appName && !state.leader) fail('permission denied');
    if (memberApp !== appName && memberApp !== rel.remoteApp)
      fail(`cannot read settings for ${member}: not a member`);
    const data = rel.data[member] ?? {};
    if (key === '-') return out(data);
    out(data[key] ?? null);
  },

  async 'relation-set'(args) {
    const { flags, positional } = parseFlags(args, {
      bool: ['app'],
      value: ['r', 'relation', 'file', 'format'],
    });
    const state = loadState();
    const rel = findRelation(state, flags.r ?? flags.relation);
    const updates = {};
    if (flags.file !== undefined) {
      const text = flags.file === '-' ? (stdin ?? '') : fs.readFileSync(flags.file, 'utf8');
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = (await import('yaml')).parse(text);
      }
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        fail('expected a map of settings in --file', 2);
      }
      for (const [k, v] of Object.entries(parsed)) {
        if (typeof v !== 'string') fail(`value for key "${k}" must be a string`, 2);
        updates[k] = v;
      }
    }
    for (const pair of positional) {
      const eq = pair.indexOf('=');
      if (eq <= 0) fail(`expected "key=value", got "${pair}"`, 2);
      updates[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
    if (flags.app && !state.leader)
      fail('cannot write relation settings: this unit is not the leader');
    const member = flags.app ? appName : unitName;
    const bag = (rel.data[member] ??= {});
    for (const [k, v] of Object.entries(updates)) {
      if (v === '') delete bag[k];
      else bag[k] = v;
    }
    saveState(state);
  },

  'secret-get'(args) {
    const { flags, positional } = parseFlags(args, {
      bool: ['refresh', 'peek'],
      value: ['format', 'label'],
    });
    if (flags.refresh && flags.peek) fail('specify one of --peek or --refresh but not both', 2);
    if (positional.length !== 1 && !flags.label) fail('require either a secret URI or label', 2);
    const state = loadState();
    if (positional.length === 0) {
      const owned = Object.values(state.secrets).find((s) => s.label === flags.label);
      if (!owned) fail(`secret with label "${flags.label}" not found`);
      return out(owned.content ?? {});
    }
    const uri = positional[0];
    const id = uri.replace(/^secret:(\/\/[^/]+\/)?/, '');
    const entry = Object.entries(state.secrets).find(
      ([k]) => k === uri || k.replace(/^secret:(\/\/[^/]+\/)?/, '') === id,
    );
    if (!entry) fail(`secret "${id}" not found`);
    const secret = entry[1];
    if (secret.granted === false) fail('permission denied');
    out(secret.content ?? {});
  },
};

async function main() {
  let exitCode = 0;
  let stderr = '';
  try {
    const impl = tools[tool];
    if (!impl) fail(`unknown hook tool "${tool}"`, 127);
    await impl(argv);
  } catch (err) {
    if (err instanceof ToolExit) {
      exitCode = err.code;
      stderr = err.message;
    } else {
      exitCode = 1;
      stderr = `ERROR ${err && err.stack ? err.stack : String(err)}`;
    }
    process.stderr.write(`${stderr}\n`);
  }
  if (logPath) {
    const entry = {
      tool,
      argv,
      stdin: stdin || null,
      exitCode,
      stderr: stderr || undefined,
      dispatch: process.env.JUJU_DISPATCH_PATH,
      t: Date.now(),
    };
    fs.appendFileSync(logPath, `${JSON.stringify(entry)}\n`);
  }
  process.exitCode = exitCode;
}

await main();
