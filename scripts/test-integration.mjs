#!/usr/bin/env node
/*
 * `npm run test:integration [-- --backend kind|local] [jest args]`: runs the integration
 * scenario (tests/integration, jest.integration.config.js) on one backend, default local,
 * passed to the tests as INTEGRATION_BACKEND. Prints one line per step (result, seconds,
 * name) and `integration (BACKEND): N passed, N failed, N skipped`; exits non-zero when a
 * step failed, was skipped, or none ran. Results: build/integration-results.json.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const resultsFile = path.join(root, 'build', 'integration-results.json');

const args = process.argv.slice(2);
let backend = 'local';
const jestArgs = [];
for (let i = 0; i < args.length; i++) {
  const m = /^--backend(?:=(.*))?$/.exec(args[i]);
  if (!m) jestArgs.push(args[i]);
  else backend = m[1] ?? args[++i];
}
if (backend !== 'local' && backend !== 'kind') {
  console.error(`test-integration: --backend must be local or kind, not "${backend ?? ''}"`);
  process.exit(2);
}

fs.mkdirSync(path.dirname(resultsFile), { recursive: true });
fs.rmSync(resultsFile, { force: true });
const jestBin = createRequire(import.meta.url).resolve('jest/bin/jest');
const jest = spawnSync(
  process.execPath,
  [
    jestBin,
    '-c',
    'jest.integration.config.js',
    '--json',
    `--outputFile=${resultsFile}`,
    // A daemon or port-forward a failed step leaves must not hang CI.
    '--forceExit',
    ...jestArgs,
  ],
  {
    cwd: root,
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, INTEGRATION_BACKEND: backend },
  },
);

if (!fs.existsSync(resultsFile)) {
  console.error(`test-integration: jest wrote no results (exit ${jest.status ?? jest.signal})`);
  process.exit(1);
}
const results = JSON.parse(fs.readFileSync(resultsFile, 'utf8'));
for (const file of results.testResults) {
  for (const t of file.assertionResults) {
    const seconds = ((t.duration ?? 0) / 1000).toFixed(1).padStart(6);
    console.log(`${t.status.padEnd(7)} ${seconds} s  ${t.title}`);
  }
  if (file.status === 'failed' && file.assertionResults.length === 0) {
    const why = file.message
      .split('\n')
      .map((l) => l.trim())
      .find((l) => l && !l.startsWith('●'));
    console.log(`failed  ${path.relative(root, file.name)}: ${why}`);
  }
}
const { numPassedTests: passed, numFailedTests: failed, numPendingTests: skipped } = results;
console.log(`integration (${backend}): ${passed} passed, ${failed} failed, ${skipped} skipped`);
const ok = jest.status === 0 && results.numTotalTests > 0 && failed === 0 && skipped === 0;
process.exit(ok ? 0 : 1);
