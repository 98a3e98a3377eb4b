/**
 * Samples every process's command line (/proc/<pid>/cmdline) while a run is in
 * flight, looking for secrets; and the environment of every process below the
 * given roots (the workload's Pebble, the charm), which must not carry them
 * either. Run as root to see every process.
 */
import * as fs from 'node:fs';

export interface ProcSample {
  samples: number;
  /** Distinct pids seen. */
  processes: number;
  /** Distinct command lines seen (for checks that the sampling saw the run at all). */
  commandLines: Set<string>;
  /** Command lines of the root processes seen (those whose tree had its environment checked). */
  rootCommands: Set<string>;
  /** `pid <n> cmdline: <command>` / `pid <n> environ` for each sighting of a secret. */
  leaks: string[];
}

const chunk = Buffer.alloc(64 * 1024);

/**
 * Reads a /proc file whole, synchronously: for some 150 processes a sample
 * then costs a few milliseconds of CPU, where promise-based reads cost ten
 * times that on a machine with two cores.
 */
function readProc(pid: string, file: string): Buffer | undefined {
  let fd: number;
  try {
    fd = fs.openSync(`/proc/${pid}/${file}`, 'r');
  } catch {
    return undefined; // gone, or not ours to read
  }
  try {
    const parts: Buffer[] = [];
    for (;;) {
      const n = fs.readSync(fd, chunk, 0, chunk.length, null);
      if (n <= 0) break;
      parts.push(Buffer.from(chunk.subarray(0, n)));
    }
    return Buffer.concat(parts);
  } catch {
    return undefined;
  } finally {
    fs.closeSync(fd);
  }
}

/** Whether a process's environment holds `entry` (e.g. `PEBBLE=/tmp/pebble-x`). */
export function environHas(pid: string, entry: string): boolean {
  const environ = readProc(pid, 'environ');
  return environ !== undefined && environ.includes(Buffer.from(`${entry}\0`));
}

function parentOf(stat: Buffer | undefined): string | undefined {
  if (!stat) return undefined;
  const text = stat.toString();
  // pid (comm) state ppid ...: comm may hold spaces and parentheses.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return rest[1];
}

export class ProcSampler {
  private readonly result: ProcSample = {
    samples: 0,
    processes: 0,
    commandLines: new Set(),
    rootCommands: new Set(),
    leaks: [],
  };
  private readonly pids = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private readonly secrets: Buffer[];

  /**
   * @param secrets what must never appear
   * @param isRoot  says, from a command line, whether a process roots a tree whose
   *                environments are checked too (e.g. the charm, the workload's Pebble)
   */
  constructor(
    secrets: string[],
    private readonly isRoot: (cmdline: string, pid: string) => boolean,
    private readonly intervalMs = 50,
  ) {
    this.secrets = secrets.filter((s) => s.length >= 4).map((s) => Buffer.from(s));
  }

  start(): void {
    const tick = () => {
      this.sample();
      this.timer = setTimeout(tick, this.intervalMs);
    };
    this.timer = setTimeout(tick, 0);
  }

  stop(): ProcSample {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.sample(); // one last look
    this.result.processes = this.pids.size;
    return this.result;
  }

  private has(data: Buffer): boolean {
    return this.secrets.some((s) => data.indexOf(s) >= 0);
  }

  private sample(): void {
    const entries = fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e));
    const parents = new Map<string, string | undefined>();
    const roots = new Set<string>();
    for (const pid of entries) {
      const cmdline = readProc(pid, 'cmdline');
      if (!cmdline) continue;
      this.pids.add(pid);
      parents.set(pid, parentOf(readProc(pid, 'stat')));
      const command = cmdline.toString().replace(/\0+$/, '').split('\0').join(' ');
      if (command) this.result.commandLines.add(command);
      if (this.has(cmdline)) this.result.leaks.push(`pid ${pid} cmdline: ${command}`);
      if (this.isRoot(command, pid)) {
        roots.add(pid);
        this.result.rootCommands.add(command);
      }
    }
    const below = (pid: string): boolean => {
      for (let p: string | undefined = pid, depth = 0; p && depth < 64; depth++) {
        if (roots.has(p)) return true;
        p = parents.get(p);
      }
      return false;
    };
    for (const pid of parents.keys()) {
      if (!below(pid)) continue;
      const environ = readProc(pid, 'environ');
      if (environ && this.has(environ)) this.result.leaks.push(`pid ${pid} environ`);
    }
    this.result.samples++;
  }
}
