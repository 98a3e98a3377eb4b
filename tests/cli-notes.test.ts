/** create's note lines in the CLI (src/cli/output.ts): counts with the right number. */
import type { CreateResult } from '../src/backup/types';
import { createNoteLines } from '../src/cli/output';

const result = (paths: string[]): CreateResult =>
  ({
    skipped: paths.map((path) => ({ path, kind: 'fifo' })),
    skippedCount: paths.length,
    warnings: [],
    warningsCount: 0,
  }) as unknown as CreateResult;

test('one entry left out is "1 entry ... it holds", more are "entries ... they hold"', () => {
  expect(createNoteLines(result(['media/p']))).toEqual([
    'left out 1 entry a restore refuses (it holds no data): media/p (fifo)',
  ]);
  expect(createNoteLines(result(['media/p', 'media/q']))).toEqual([
    'left out 2 entries a restore refuses (they hold no data): media/p (fifo), media/q (fifo)',
  ]);
  expect(createNoteLines(result([]))).toEqual([]);
});
