/**
 * runPipeline (src/backup/pipeline.ts): whatever fails first is what it
 * reports, a stage or the consumer, however the teardown then spreads.
 */
import { PassThrough, Readable, Transform, Writable } from 'node:stream';
import { type Consumer, runPipeline } from '../src/backup/pipeline';

const chunks = (n: number): Readable =>
  Readable.from(Array.from({ length: n }, () => Buffer.alloc(1024, 1)));

/** Fails on its `after`-th chunk with `error`. */
function failingTransform(after: number, error: Error): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      if (++seen >= after) done(error);
      else done(null, chunk);
    },
  });
}

/** Reads its source through a sink that fails on its `after`-th chunk, as the S3 sink does. */
function failingConsumer(after: number, error: Error): Consumer {
  return {
    consume: async (source) => {
      let seen = 0;
      const sink = new Writable({
        write(_chunk, _enc, done) {
          done(++seen >= after ? error : null);
        },
      });
      await new Promise<void>((resolve, reject) => {
        source.pipe(sink);
        sink.once('error', (err) => {
          source.destroy(err);
          // The store reports its own error only after cleaning up.
          setTimeout(() => reject(new Error(`upload failed: ${err.message}`)), 20);
        });
        sink.once('finish', resolve);
      });
    },
  };
}

const draining = (): Consumer => ({
  consume: async (source) => {
    for await (const chunk of source) void chunk;
  },
});

describe('runPipeline', () => {
  test('all succeed: undefined, and the consumer got every byte', async () => {
    let bytes = 0;
    const consumer: Consumer = {
      consume: async (source) => {
        for await (const chunk of source) bytes += (chunk as Buffer).length;
      },
    };
    await expect(runPipeline([chunks(10), new PassThrough()], { consumer })).resolves.toBe(
      undefined,
    );
    expect(bytes).toBe(10 * 1024);
  });

  test('a stage fails first: that stage and its error, not the teardown of the others', async () => {
    const boom = new Error('scanner says no');
    const bad = failingTransform(3, boom);
    const onFailure = jest.fn();
    const failure = await runPipeline([chunks(10), new PassThrough(), bad, new PassThrough()], {
      consumer: draining(),
      onFailure,
    });
    expect(failure).toEqual({ stage: bad, error: boom });
    expect(onFailure).toHaveBeenCalledTimes(1);
  });

  test('the consumer fails first: the consumer and the error it rejects with (its own words)', async () => {
    const consumer = failingConsumer(2, new Error('HTTP 500'));
    const last = new PassThrough();
    const failure = await runPipeline([chunks(50), new PassThrough(), last], { consumer });
    expect(failure).toEqual({ stage: consumer, error: new Error('upload failed: HTTP 500') });
  });

  test('the consumer rejects before reading: the pipeline is torn down, the consumer reported', async () => {
    const source = chunks(1000);
    const consumer: Consumer = { consume: () => Promise.reject(new Error('access denied')) };
    const failure = await runPipeline([source, new PassThrough()], { consumer });
    expect(failure).toEqual({ stage: consumer, error: new Error('access denied') });
    expect(source.destroyed).toBe(true);
  });

  test('the consumer destroys its source without an error: still the consumer', async () => {
    const consumer: Consumer = {
      consume: async (source) => {
        source.destroy();
        await new Promise((resolve) => setTimeout(resolve, 20)); // cleaning up, then saying why
        throw new Error('gave up');
      },
    };
    const failure = await runPipeline([chunks(1000), new PassThrough()], { consumer });
    expect(failure).toEqual({ stage: consumer, error: new Error('gave up') });
  });

  test('without a consumer, a failing sink is the stage reported', async () => {
    const full = new Error('disk full');
    const sink = new Writable({ write: (_c, _e, done) => done(full) });
    const failure = await runPipeline([chunks(5), new PassThrough(), sink]);
    expect(failure).toEqual({ stage: sink, error: full });
  });
});
