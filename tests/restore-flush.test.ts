/**
 * The restore's extraction flushes the restored files to disk while tar still writes them
 * (src/backup/scripts/restore.ts extractionFlushLauncher), so that the flush before the swap only
 * has the tail left; its background loop ends with tar, holds none of the command's streams,
 * and gives up where `sync -f` fails. Through real Pebble, with `sync` on PATH a wrapper that
 * logs each call before running the real one.
 */
import { spawnSync } from 'node:child_process';
import { promises as fsp, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { extractionFlushLauncher, tarExtractCommand } from '../src/backup/scripts';
import { RUN_MARKER_ENV } from '../src/backup/scripts/lock';
import { PebbleWorkload } from '../src/workload/pebble';
import type { ExecProcess } from '../src/workload/workload';
import { readAll } from './support/streams';
import { type PebblePeer, describeWithPeers, startPebble, tmpDir } from './support/peers';

const REAL_SYNC = spawnSync('sh', ['-c', 'command -v sync']).stdout.toString().trim();

/** Lines of the wrapper's log: "<seconds since epoch> <args>". */
async function syncCalls(log: string): Promise<string[]> {
  const text = await fsp.readFile(log, 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean);
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Pids of live processes (not zombies) whose command line names `dir`. */
function processesNaming(dir: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2)[0];
      if (state !== 'Z' && cmdline.split('\0').includes(dir)) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** Command lines (NUL-separated) of live processes whose environment holds `entry`. */
function processesWithEnvironment(entry: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(entry)) {
        found.push(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
      }
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** A one-file tar archive of `size` bytes of content, from GNU tar. */
async function archiveOf(size: number): Promise<Buffer> {
  const src = await tmpDir('flush-src');
  await fsp.writeFile(path.join(src.path, 'media'), Buffer.alloc(size, 7));
  const out = spawnSync('tar', ['-c', '-f', '-', '-C', src.path, 'media'], { maxBuffer: 1 << 26 });
  return out.stdout;
}

describeWithPeers(['pebble'])('the restore flushes while tar extracts', () => {
  let pebble: PebblePeer;
  let workload: PebbleWorkload;
  let log: string;
  let failSyncF: string;

  beforeAll(async () => {
    const bin = await tmpDir('fake-sync');
    log = path.join(bin.path, 'sync.log');
    failSyncF = path.join(bin.path, 'fail-sync-f');
    await fsp.writeFile(
      path.join(bin.path, 'sync'),
      `#!/bin/sh\necho "$(date +%s.%N) $*" >> '${log}'\n` +
        `[ "$1" = -f ] && [ -e '${failSyncF}' ] && exit 1\nexec '${REAL_SYNC}' "$@"\n`,
      { mode: 0o755 },
    );
    pebble = await startPebble({ path: `${bin.path}:${process.env.PATH}` });
    workload = new PebbleWorkload({ socketPath: pebble.socketPath });
  });
  afterAll(async () => {
    await pebble?.stop();
  });
  beforeEach(async () => {
    await fsp.rm(log, { force: true });
    await fsp.rm(failSyncF, { force: true });
  });

  /** Starts the extraction into a new dir and writes the archive's first half. */
  async function startExtraction(archive: Buffer, environment?: Record<string, string>) {
    const dir = (await tmpDir('flush-dst')).path;
    const proc: ExecProcess = workload.exec({
      command: tarExtractCommand(dir),
      launcher: extractionFlushLauncher(dir),
      stdin: true,
      environment,
    });
    const stderr = readAll(proc.stderr);
    proc.stdin!.write(archive.subarray(0, archive.length / 2));
    return { dir, proc, stderr };
  }

  test("flushes the target's filesystem while tar still reads, and the loop ends with tar", async () => {
    const archive = await archiveOf(1 << 20);
    // The data dir lock's run marker, as its launcher sets it (src/backup/scripts/lock.ts).
    const marker = `${RUN_MARKER_ENV}=flush-test-${process.pid}`;
    const { dir, proc, stderr } = await startExtraction(archive, {
      [RUN_MARKER_ENV]: marker.split('=')[1]!,
    });
    // tar waits for the rest of the archive: the flush must come meanwhile.
    const calls = await until('a flush during the extraction', async () => {
      const c = await syncCalls(log);
      return c.length > 0 ? c : undefined;
    });
    expect(calls[0]).toMatch(new RegExp(` -f -- ${dir}$`));
    // Only tar carries the marker: a takeover after a killed restore waits for it alone.
    expect(processesWithEnvironment(marker).map((c) => c.split('\0')[0])).toEqual(['tar']);
    proc.stdin!.end(archive.subarray(archive.length / 2));
    const status = await proc.wait();
    expect({ status: status.exitCode, stderr: (await stderr).toString() }).toEqual({
      status: 0,
      stderr: '',
    });
    expect((await fsp.stat(path.join(dir, 'media'))).size).toBe(1 << 20);
    // The loop checks for tar at most a second after it ends.
    await until('the flush loop to end', async () =>
      processesNaming(dir).length === 0 ? true : undefined,
    );
  });

  test("tar's own status and complaint come through unchanged", async () => {
    const { dir, proc, stderr } = await startExtraction(Buffer.alloc(4096, 0x41));
    proc.stdin!.end();
    const status = await proc.wait();
    expect(status.exitCode).toBe(2);
    expect((await stderr).toString()).toMatch(/tar: This does not look like a tar archive/);
    await until('the flush loop to end', async () =>
      processesNaming(dir).length === 0 ? true : undefined,
    );
  });

  test('where sync -f fails, the loop stops instead of syncing every second', async () => {
    await fsp.writeFile(failSyncF, '');
    const archive = await archiveOf(1 << 16);
    const { dir, proc } = await startExtraction(archive);
    await until('the first flush', async () =>
      (await syncCalls(log)).length > 0 ? true : undefined,
    );
    // Three more periods: a loop that went on would have called sync again.
    await new Promise((r) => setTimeout(r, 3_000));
    expect(await syncCalls(log)).toHaveLength(1);
    expect(processesNaming(dir)).toHaveLength(1); // tar alone
    proc.stdin!.end(archive.subarray(archive.length / 2));
    expect((await proc.wait()).exitCode).toBe(0);
  });
});
