/**
 * The kind backend of the integration scenario reads `juju run --format json`
 * (tests/integration/kind-deployment.ts). It cannot run here (no container engine), so its
 * reading of Juju's output is checked on the shapes Juju 3 prints: a completed task, one the
 * charm failed with action-fail, and one whose hook exited non-zero without it (the shapes
 * jubilant's tests hold, canonical/jubilant tests/unit/test_run.py).
 */
import { parseJujuRun } from './integration/kind-deployment';

describe("the kind backend reads juju run's JSON", () => {
  it('a completed task: the charm results without Juju keys, log lines without their time', () => {
    const out = JSON.stringify({
      'synapse/0': {
        id: '42',
        log: [
          '2025-03-01 16:23:26 +1300 NZDT creating a backup of /data',
          '2025-03-01 16:23:27 +1300 NZDT backup 20250301032326 complete',
        ],
        results: {
          'backup-id': '20250301032326',
          backups: { '20250301032326': { status: 'complete' } },
          'return-code': 0,
          stdout: 'OUT',
          stderr: 'ERR',
        },
        status: 'completed',
        unit: 'synapse/0',
      },
    });
    expect(parseJujuRun(out)).toEqual({
      results: {
        'backup-id': '20250301032326',
        backups: { '20250301032326': { status: 'complete' } },
      },
      failed: false,
      message: undefined,
      logs: ['creating a backup of /data', 'backup 20250301032326 complete'],
    });
  });

  it("a task the charm failed: action-fail's message", () => {
    const out = JSON.stringify({
      's3-integrator/0': {
        id: '7',
        message: 'backup 1 does not exist',
        results: { 'return-code': 0 },
        status: 'failed',
      },
    });
    expect(parseJujuRun(out)).toEqual({
      results: {},
      failed: true,
      message: 'backup 1 does not exist',
      logs: [],
    });
  });

  it('a hook that exited non-zero without action-fail failed, with its stderr', () => {
    const out = JSON.stringify({
      'synapse/0': {
        id: '8',
        results: { 'return-code': 1, stderr: 'Uncaught exception' },
        status: 'failed',
      },
    });
    expect(parseJujuRun(out)).toEqual({
      results: {},
      failed: true,
      message: 'Uncaught exception',
      logs: [],
    });
  });
});
