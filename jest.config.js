// The charm ships Node 24; on a Node 20 host the AWS SDK's upgrade nag is only noise in test logs.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/tests'],
  testMatch: ['**/*.test.ts'],
  // The fault suite and the integration scenario have their own configs and runners:
  // npm run test:faults, npm run test:integration.
  testPathIgnorePatterns: [
    '/node_modules/',
    '<rootDir>/tests/faults/',
    '<rootDir>/tests/integration/',
  ],
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }],
    // @kubernetes/client-node 1.x and a few of its dependencies are ES modules only.
    '^.+\\.js$': '<rootDir>/tests/support/esm-transform.js',
  },
  transformIgnorePatterns: [
    '/node_modules/(?!(@kubernetes/client-node|openid-client|oauth4webapi|jose)/)',
  ],
  testTimeout: 120000,
  maxWorkers: 2,
};
