/**
 * LateWritable (src/workload/pebble/late-streams.ts) against a real unix socket
 * whose reader goes away: every write or end that the reader did not take fails.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { LateWritable } from '../src/workload/pebble/late-streams';

/** A connected pair: `ours` (what LateWritable writes to) and the reader's end. */
async function socketPair(): Promise<{ ours: net.Socket; theirs: net.Socket; close: () => void }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'late-streams-'));
  const file = path.join(dir, 's.sock');
  const accepted = new Promise<net.Socket>((resolve) => {
    const server = net.createServer((conn) => {
      server.close();
      resolve(conn);
    });
    server.listen(file);
  });
  await new Promise((r) => setTimeout(r, 10));
  const theirs = net.connect(file);
  theirs.on('error', () => undefined);
  theirs.pause(); // a reader that stops reading
  const ours = await accepted;
  ours.resume(); // as DirectStreamProcess does: reading sees the command's end
  return { ours, theirs, close: () => rmSync(dir, { recursive: true, force: true }) };
}

/** How a write's or an end's callback was called: 'ok' or the error's message. */
const outcome = (err?: Error | null) => (err ? err.message : 'ok');

describe('LateWritable', () => {
  test('a write cut off by the reader going away fails its callback, not only with an event', async () => {
    const { ours, theirs, close } = await socketPair();
    try {
      const stdin = new LateWritable();
      const events: string[] = [];
      stdin.on('error', (e) => events.push(`error: ${e.message}`));
      const written = new Promise<string>((resolve) =>
        stdin.write(Buffer.alloc(16 * 1024 * 1024), (err) => resolve(outcome(err))),
      );
      stdin.attach(ours);
      await new Promise((r) => setTimeout(r, 50));
      theirs.destroy(); // with unread bytes: ECONNRESET or EPIPE on our side
      expect(await written).toMatch(/ECONNRESET|EPIPE/);
      expect(events).toEqual([expect.stringMatching(/ECONNRESET|EPIPE/)]);
    } finally {
      close();
    }
  });

  test('a socket destroyed while a write is under way fails that write (Node calls it back without an error)', async () => {
    const { ours, theirs, close } = await socketPair();
    try {
      const stdin = new LateWritable();
      stdin.on('error', () => undefined);
      stdin.attach(ours);
      const written = new Promise<string>((resolve) =>
        stdin.write(Buffer.alloc(16 * 1024 * 1024), (err) => resolve(outcome(err))),
      );
      await new Promise((r) => setTimeout(r, 50));
      ours.destroy(new Error('dropped'));
      expect(await written).toBe('dropped');
    } finally {
      theirs.destroy();
      close();
    }
  });

  test('an input the reader took whole ends with success', async () => {
    const { ours, theirs, close } = await socketPair();
    try {
      const stdin = new LateWritable();
      stdin.attach(ours);
      const input = Buffer.alloc(4 * 1024 * 1024, 7);
      const received: Buffer[] = [];
      theirs.on('data', (chunk: Buffer) => received.push(chunk));
      const ended = new Promise<string>((resolve) =>
        stdin.end(input, (err?: Error | null) => resolve(outcome(err))),
      );
      theirs.resume();
      await new Promise((resolve) => theirs.once('end', resolve));
      expect(await ended).toBe('ok');
      expect(Buffer.concat(received).equals(input)).toBe(true);
    } finally {
      theirs.destroy();
      close();
    }
  });
});
