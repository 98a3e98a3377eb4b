#!/usr/bin/env node
/*
 * `npm run test:faults`: runs the fault suite (tests/faults, jest.faults.config.js)
 * and prints its table, one row per case (case, expected, observed, pass/fail),
 * ending with the line `N passed, N failed`. Exits non-zero when a case failed
 * or none ran. Extra arguments go to jest (e.g. a test file or -t NAME).
 *
 * The tests write what they expect and observe to $FAULTS_OBSERVATIONS
 * (tests/faults/support/report.ts); jest's --json output says which passed.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const buildDir = path.join(root, 'build');
const resultsFile = path.join(buildDir, 'faults-results.json');
const observationsFile = path.join(buildDir, 'faults-observations.jsonl');
const tableFile = path.join(buildDir, 'faults-table.txt');
fs.mkdirSync(buildDir, { recursive: true });
for (const f of [resultsFile, observationsFile, tableFile]) fs.rmSync(f, { force: true });

const jestBin = createRequire(import.meta.url).resolve('jest/bin/jest');
const jest = spawnSync(
  process.execPath,
  [
    jestBin,
    '-c',
    'jest.faults.config.js',
    '--json',
    `--outputFile=${resultsFile}`,
    // Daemons and proxies are the suite's own; whatever a failed case leaves must not hang CI.
    '--forceExit',
    ...process.argv.slice(2),
  ],
  {
    cwd: root,
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, FAULTS_OBSERVATIONS: observationsFile },
  },
);

const observations = new Map();
if (fs.existsSync(observationsFile)) {
  for (const line of fs.readFileSync(observationsFile, 'utf8').split('\n').filter(Boolean)) {
    const row = JSON.parse(line);
    observations.set(row.name, { ...observations.get(row.name), ...row });
  }
}

// eslint-disable-next-line no-control-regex -- ANSI colour codes in jest's failure messages
const stripAnsi = (s) => s.replace(/\u001b\[[0-9;]*m/g, '');
const firstLines = (text, n) =>
  stripAnsi(text)
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('at '))
    .slice(0, n)
    .join(' ');

const rows = [];
let results;
try {
  results = JSON.parse(fs.readFileSync(resultsFile, 'utf8'));
} catch {
  results = { testResults: [] };
}
for (const file of results.testResults) {
  const rel = path.relative(root, file.name);
  if (file.assertionResults.length === 0) {
    rows.push({
      name: rel,
      expected: 'the file runs',
      observed: firstLines(file.message || 'no tests ran', 4),
      status: 'failed',
    });
  }
  for (const t of file.assertionResults) {
    const seen = observations.get(t.fullName) ?? {};
    let observed = seen.observed ?? '';
    if (t.status === 'failed') {
      const why = firstLines(t.failureMessages.join('\n'), 4);
      observed = observed ? `${observed} · FAILED: ${why}` : `FAILED: ${why}`;
    }
    rows.push({
      name: t.title,
      expected: seen.expected ?? '',
      observed: observed || (t.status === 'pending' ? '(skipped)' : ''),
      status: t.status,
    });
  }
}

function wrap(text, width) {
  const out = [];
  for (const para of String(text).split('\n')) {
    let line = '';
    for (const word of para.split(/\s+/).filter(Boolean)) {
      let w = word;
      while (w.length > width) {
        if (line) {
          out.push(line);
          line = '';
        }
        out.push(w.slice(0, width));
        w = w.slice(width);
      }
      if (!line) line = w;
      else if (line.length + 1 + w.length <= width) line += ` ${w}`;
      else {
        out.push(line);
        line = w;
      }
    }
    out.push(line);
  }
  return out.length ? out : [''];
}

const columns = [
  { title: 'case', width: 34, get: (r) => r.name },
  { title: 'expected', width: 46, get: (r) => r.expected },
  { title: 'observed', width: 84, get: (r) => r.observed },
  {
    title: 'pass/fail',
    width: 9,
    get: (r) => (r.status === 'passed' ? 'pass' : r.status === 'failed' ? 'FAIL' : 'skipped'),
  },
];
const lines = [];
const rule = columns.map((c) => '-'.repeat(c.width)).join('-+-');
lines.push(columns.map((c) => c.title.padEnd(c.width)).join(' | '));
lines.push(rule);
for (const row of rows) {
  const cells = columns.map((c) => wrap(c.get(row), c.width));
  const height = Math.max(...cells.map((c) => c.length));
  for (let i = 0; i < height; i++) {
    lines.push(
      columns
        .map((c, j) => (cells[j][i] ?? '').padEnd(c.width))
        .join(' | ')
        .trimEnd(),
    );
  }
  lines.push(rule);
}
const passed = rows.filter((r) => r.status === 'passed').length;
const failed = rows.filter((r) => r.status === 'failed').length;
const skipped = rows.length - passed - failed;
if (skipped > 0) lines.push(`${skipped} skipped`);
lines.push(`${passed} passed, ${failed} failed`);
const table = `${lines.join('\n')}\n`;
fs.writeFileSync(tableFile, table);
process.stdout.write(`\n${table}`);

if (failed > 0 || passed === 0 || jest.status !== 0) process.exit(1);
