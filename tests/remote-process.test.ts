/**
 * What the remote transports share (src/workload/remote-process.ts), without a
 * peer: stdin batching and an output stream's backpressure and abandonment.
 */
import { RemoteOutput, batchMessages } from '../src/workload/remote-process';

const sizes = (messages: Buffer[][]) =>
  messages.map((pieces) => pieces.reduce((sum, p) => sum + p.length, 0));

describe('batchMessages', () => {
  const chunk = (n: number, fill = 1) => Buffer.alloc(n, fill);

  test('queued chunks go together up to the cap; a larger one goes whole unless split', () => {
    const chunks = [chunk(300), chunk(300), chunk(500), chunk(2500), chunk(100)];
    expect(sizes(batchMessages(chunks, { maxMessageBytes: 1000, splitChunks: false }))).toEqual([
      600, 500, 2500, 100,
    ]);
    expect(sizes(batchMessages(chunks, { maxMessageBytes: 1000, splitChunks: true }))).toEqual([
      1000, 1000, 1000, 700,
    ]);
  });

  test('every byte in order, as views of the chunks; empty chunks make no message', () => {
    const chunks = [Buffer.from('abc'), Buffer.alloc(0), Buffer.from('defgh'), Buffer.from('ij')];
    const messages = batchMessages(chunks, { maxMessageBytes: 4, splitChunks: true });
    expect(messages.map((m) => Buffer.concat(m).toString())).toEqual(['abcd', 'efgh', 'ij']);
    expect(messages[0]![1]!.buffer).toBe(chunks[2]!.buffer);
    expect(batchMessages([Buffer.alloc(0)], { maxMessageBytes: 4, splitChunks: false })).toEqual(
      [],
    );
  });
});

class TestOutput extends RemoteOutput {
  readonly calls: string[] = [];
  protected pauseSource(): void {
    this.calls.push('pause');
  }
  protected resumeSource(): void {
    this.calls.push('resume');
  }
  protected abandonSource(): void {
    this.calls.push('abandon');
  }
}

describe('RemoteOutput', () => {
  test('a consumer that stops reading pauses the source; reading resumes it', async () => {
    const out = new TestOutput();
    expect(out.deliver(Buffer.alloc(200 * 1024))).toBe(true);
    expect(out.deliver(Buffer.alloc(100 * 1024))).toBe(false); // over 256 KiB buffered
    expect(out.saturated).toBe(true);
    expect(out.calls).toEqual(['pause']);
    out.read();
    expect(out.saturated).toBe(false);
    expect(out.calls).toEqual(['pause', 'resume']);
  });

  test('finish ends it once; data after the end is ignored; destroying then abandons nothing', async () => {
    const out = new TestOutput();
    const got: Buffer[] = [];
    out.on('data', (c: Buffer) => got.push(c));
    out.deliver(Buffer.from('a'));
    out.finish();
    out.deliver(Buffer.from('b'));
    out.finish();
    await new Promise((resolve) => out.once('end', resolve));
    expect(Buffer.concat(got).toString()).toBe('a');
    out.destroy();
    expect(out.calls).not.toContain('abandon');
  });

  test('destroyed before its end: the source is abandoned, and later data ignored', () => {
    const out = new TestOutput();
    out.on('error', () => undefined);
    out.destroy();
    expect(out.calls).toEqual(['abandon']);
    expect(out.isOpen).toBe(false);
    expect(out.deliver(Buffer.from('late'))).toBe(true);
  });
});
