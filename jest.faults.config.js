// The fault suite (tests/faults): run by `npm run test:faults` (scripts/test-faults.mjs),
// not by `npm test`, whose config leaves tests/faults out.
const base = require('./jest.config.js');

/** @type {import('jest').Config} */
module.exports = {
  ...base,
  roots: ['<rootDir>/tests/faults'],
  testPathIgnorePatterns: ['/node_modules/'],
  testTimeout: 180000,
};
