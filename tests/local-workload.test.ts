/**
 * The local transport's commands run in process groups of their own, so a
 * terminal's Ctrl-C (SIGINT to the foreground group) reaches the CLI and not
 * them, and kill() ends a command with everything it started: no orphan left.
 */
import { readFileSync } from 'node:fs';
import { readAll as collect } from './support/streams';
import { LocalWorkload } from '../src/workload/local';

/** The process group of `pid` (field 5 of /proc/<pid>/stat). */
function pgidOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
}

/** Whether `pid` is gone (or a zombie waiting for init to reap it). */
function gone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** Resolves once `pid` is gone; rejects after `ms` (the kill is synchronous: this is slack). */
async function untilGone(pid: number, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!gone(pid)) {
    if (Date.now() > deadline) throw new Error(`process ${pid} is still running`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('local workload: process groups', () => {
  const workload = new LocalWorkload();

  test("a command leads a process group of its own, not the caller's", async () => {
    const proc = workload.exec({ command: ['sh', '-c', 'echo $$; cat /proc/$$/stat'] });
    const [out] = await Promise.all([collect(proc.stdout), proc.wait()]);
    const [pidLine, stat] = out.toString().split('\n');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    expect(Number(fields[2])).toBe(Number(pidLine));
    expect(Number(fields[2])).not.toBe(pgidOf(process.pid));
  });

  test('kill() ends the whole group: the command and what it started', async () => {
    const proc = workload.exec({ command: ['sh', '-c', 'sleep 300 & echo $!; wait'] });
    const firstLine = await new Promise<number>((resolve) =>
      proc.stdout.once('data', (b: Buffer) => resolve(Number(b.toString().trim()))),
    );
    expect(gone(firstLine)).toBe(false);
    proc.kill();
    expect((await proc.wait()).signal).toBe('SIGKILL');
    await untilGone(firstLine);
  });

  test('a command that exits leaving a background child: the child goes with it', async () => {
    const proc = workload.exec({
      command: ['sh', '-c', 'sleep 300 >/dev/null 2>&1 & echo $!'],
    });
    const [out, status] = await Promise.all([collect(proc.stdout), proc.wait()]);
    expect(status.exitCode).toBe(0);
    await untilGone(Number(out.toString().trim()));
  });
});
