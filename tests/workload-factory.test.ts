/**
 * The one place that turns a transport's name into a Workload
 * (src/workload/factory.ts), for the charm and the CLI. No peers needed:
 * building a workload connects to nothing.
 */
import { ConfigError } from '../src/errors';
import {
  WORKLOAD_MODES,
  WorkloadModeError,
  createWorkload,
  loadWorkload,
  parseWorkloadMode,
  quotedList,
} from '../src/workload/factory';
import { LocalWorkload } from '../src/workload/local';
import { PebbleWorkload } from '../src/workload/pebble';

describe('workload modes', () => {
  test('each mode is itself; pebble-direct is pebble; unset is the fallback', () => {
    for (const mode of WORKLOAD_MODES) expect(parseWorkloadMode(mode)).toBe(mode);
    expect(parseWorkloadMode('pebble-direct')).toBe('pebble');
    expect(parseWorkloadMode(undefined)).toBe('pebble');
    expect(parseWorkloadMode(undefined, ['local'], 'local')).toBe('local');
  });

  test('an unknown name, or one the caller does not allow, is a WorkloadModeError', () => {
    const allowed = ['pebble', 'pebble-relay', 'kubernetes'] as const;
    for (const name of ['ssh', 'local', 'Pebble', '']) {
      let err: unknown;
      try {
        parseWorkloadMode(name, allowed);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(WorkloadModeError);
      expect(err).toBeInstanceOf(ConfigError);
      expect(err).toMatchObject({
        code: 'config',
        mode: name,
        allowed,
        message: `workload mode "${name}" is not valid: use "pebble", "pebble-relay" or "kubernetes"`,
      });
    }
    // An alias is allowed when what it stands for is.
    expect(() => parseWorkloadMode('pebble-direct', ['pebble-relay'])).toThrow(WorkloadModeError);
  });

  test('quotedList', () => {
    expect(quotedList([])).toBe('');
    expect(quotedList(['a'])).toBe('"a"');
    expect(quotedList(['a', 'b', 'c'])).toBe('"a", "b" or "c"');
  });
});

describe('createWorkload and loadWorkload', () => {
  test('pebble and pebble-relay are Pebble at the socket; pebble adds the shared dir', async () => {
    const socket = '/charm/containers/synapse/pebble.socket';
    const relay = createWorkload('pebble-relay', { pebbleSocket: socket });
    expect(relay).toBeInstanceOf(PebbleWorkload);
    expect(relay.description).toBe(`Pebble at ${socket}`);
    // No shared dir: it sweeps the socket's directory (here missing: nothing to remove).
    expect(await relay.removeStale()).toEqual([]);
    const direct = createWorkload('pebble', {
      pebbleSocket: socket,
      workloadSharedDir: '/charm/container',
    });
    expect(direct).toBeInstanceOf(PebbleWorkload);
    expect(direct.description).toBe(`Pebble at ${socket}`);
    expect(createWorkload('local')).toBeInstanceOf(LocalWorkload);
    expect(await loadWorkload('local')).toBeInstanceOf(LocalWorkload);
  });

  test('a mode without the settings it needs is a ConfigError', async () => {
    expect(() => createWorkload('pebble', {})).toThrow(
      new ConfigError("the pebble transport needs Pebble's socket"),
    );
    await expect(loadWorkload('kubernetes')).rejects.toThrow(
      new ConfigError('the kubernetes transport needs the unit to exec into'),
    );
  });
});
