/** The default hook-tool runner: spawns the tool from PATH (hook-tools.ts). */
import { spawn } from 'node:child_process';
import type { ToolRunner } from './hook-tools';

export const spawnRunner: ToolRunner = (tool, args, input) =>
  new Promise((resolve, reject) => {
    const child = spawn(tool, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.stdin.on('error', () => undefined);
    child.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        resolve({ stdout: '', stderr: `command not found: ${tool}`, exitCode: 127 });
      } else {
        reject(e);
      }
    });
    child.once('close', (code, signal) => {
      resolve({
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + (signal ? `killed by ${signal}` : ''),
        exitCode: code ?? 128,
      });
    });
    child.stdin.end(input ?? '');
  });
