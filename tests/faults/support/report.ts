/**
 * The fault suite's table: each test says what it expects and what it
 * observed; scripts/test-faults.mjs joins that with jest's pass/fail.
 * Rows go to $FAULTS_OBSERVATIONS (JSON lines) as soon as they are known, so
 * that a test that fails half-way still shows what it saw.
 */
import * as fs from 'node:fs';

interface Row {
  name: string;
  expected?: string;
  observed?: string;
}

function write(row: Row): void {
  const file = process.env.FAULTS_OBSERVATIONS;
  if (!file) return;
  fs.appendFileSync(file, `${JSON.stringify(row)}\n`);
}

function currentTest(): string {
  return expect.getState().currentTestName ?? '(outside a test)';
}

/** What this case should do, in a line. */
export function expected(text: string): void {
  write({ name: currentTest(), expected: text });
}

const observedSoFar = new Map<string, string[]>();

/** Adds to what this case observed (shown joined with " · "). */
export function observed(text: string): void {
  const name = currentTest();
  const parts = observedSoFar.get(name) ?? [];
  parts.push(text);
  observedSoFar.set(name, parts);
  write({ name, observed: parts.join(' · ') });
}
