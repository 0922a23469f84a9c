import { defineConfig } from 'vitest/config';

// Node tests: real PostgreSQL clusters (blue and green) started once by the global setup.
// Worker tests live in their own config (vitest.workers.config.ts).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
  },
});
