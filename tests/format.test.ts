/** The shared wording helpers of src/format.ts (CLI lines and action messages). */
import { counted, formatBytes } from '../src/format';

describe('counted', () => {
  test.each([
    [0, 'file', undefined, '0 files'],
    [1, 'file', undefined, '1 file'],
    [2, 'file', undefined, '2 files'],
    [1, 'one-time key', undefined, '1 one-time key'],
    [3, 'entry', 'entries', '3 entries'],
    [1, 'entry', 'entries', '1 entry'],
  ])('%d %s', (n, one, many, expected) => {
    expect(counted(n, one, many)).toBe(expected);
  });
});

describe('formatBytes', () => {
  test('binary units', () => {
    expect(formatBytes(10 * 1024)).toBe('10.0 KiB');
  });
});
