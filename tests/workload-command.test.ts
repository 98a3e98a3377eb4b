/**
 * Short commands in the workload (src/workload/command.ts): execCollect,
 * runCommand on top of it, and fileExists, on this host (LocalWorkload).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WorkloadCommandError } from '../src/errors';
import { execCollect, fileExists, runCommand } from '../src/workload/command';
import { LocalWorkload } from '../src/workload/local';
import { tmpDir } from './support/peers';

const workload = new LocalWorkload();

describe('execCollect', () => {
  test('collects stdout and stderr and reports the exit status, non-zero included', async () => {
    const result = await execCollect(workload, {
      command: ['sh', '-c', 'printf out; printf "err\\n" >&2; exit 3'],
    });
    expect(result).toEqual({
      exitCode: 3,
      status: { exitCode: 3, signal: undefined },
      stdout: 'out',
      stderr: 'err',
    });
  });

  test('keeps the first MiB of stdout and the last 16 KiB of stderr', async () => {
    const result = await execCollect(workload, {
      command: [
        'sh',
        '-c',
        'head -c 3145728 /dev/zero; head -c 100000 /dev/zero | tr "\\0" a >&2; echo END >&2',
      ],
    });
    expect(result.exitCode).toBe(0);
    expect(result.stdout.length).toBeGreaterThanOrEqual(1024 * 1024);
    expect(result.stdout.length).toBeLessThan(3 * 1024 * 1024);
    expect(result.stderr.length).toBeLessThanOrEqual(16 * 1024);
    expect(result.stderr).toBe(`${'a'.repeat(16 * 1024 - 4)}END`);
  });

  test('a command that cannot start rejects', async () => {
    await expect(execCollect(workload, { command: ['/nonexistent/cmd'] })).rejects.toThrow(
      /cannot run \/nonexistent\/cmd/,
    );
  });
});

describe('runCommand and fileExists', () => {
  test('runCommand returns stdout, or throws with the status and the end of stderr', async () => {
    expect(await runCommand(workload, ['printf', 'hi'], 'greeting')).toBe('hi');
    const err = await runCommand(
      workload,
      ['sh', '-c', 'echo one >&2; echo two >&2; exit 4'],
      'failing',
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkloadCommandError);
    expect(err).toMatchObject({
      message: 'failing exited with status 4: one; two',
      exitCode: 4,
      stderr: 'one\ntwo',
    });
  });

  test('fileExists: a regular file yes; a directory, a missing path or an odd name no', async () => {
    const dir = await tmpDir('file-exists');
    try {
      const file = path.join(dir.path, 'a "b" $(c)');
      fs.writeFileSync(file, 'x');
      expect(await fileExists(workload, file)).toBe(true);
      expect(await fileExists(workload, dir.path)).toBe(false);
      expect(await fileExists(workload, path.join(dir.path, 'missing'))).toBe(false);
      expect(await fileExists(workload, `${file}; true`)).toBe(false);
    } finally {
      await dir.cleanup();
    }
  });
});
