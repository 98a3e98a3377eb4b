// `npm run test:integration [-- --backend kind|local]` (scripts/test-integration.mjs): the
// integration scenario in tests/integration/, on the backend INTEGRATION_BACKEND names.
// `npm test` leaves it out (jest.config.js); .ci/run runs it once, after `npm test`.
const base = require('./jest.config.js');

/** @type {import('jest').Config} */
module.exports = {
  ...base,
  roots: ['<rootDir>/tests/integration'],
  testPathIgnorePatterns: ['/node_modules/'],
  // One deployment, its steps in order: nothing to share a worker with.
  maxWorkers: 1,
  // Kind deploys and waits for Juju: the steps set their own, longer, timeouts.
  testTimeout: 300000,
};
