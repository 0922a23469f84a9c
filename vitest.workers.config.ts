// Worker tests, run inside workerd by @cloudflare/vitest-pool-workers: the router, its route fence,
// coalescer, consumer and DLQ sink with real KV, queues, Durable Objects and Hyperdrive (to a real
// Postgres started by test-workers/global-setup.ts in Node). The engine behind the router is a small
// Hydra-shaped stand-in Worker (test-workers/engine.js) reached through the outbound service.

import { cloudflareTest } from '@cloudflare/vitest-pool-workers';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  plugins: [
    cloudflareTest(({ inject }) => ({
      main: './test-workers/entry.ts',
      miniflare: {
        compatibilityDate: '2026-04-20',
        compatibilityFlags: ['nodejs_compat'],
        kvNamespaces: ['DEAD_LETTERS'],
        durableObjects: { COALESCER: { className: 'RefreshCoalescer', useSQLite: true }, ROUTE: { className: 'RouteFence', useSQLite: true } },
        // The router's producer goes to a queue nobody consumes, so router tests leave no background
        // work; TO_CONSUMER feeds the consumer for the end-to-end tests.
        queueProducers: {
          REVOCATIONS: { queueName: 'router-test-revocations' },
          TO_CONSUMER: { queueName: 'bluegreen-revocations' },
          DLQ: { queueName: 'bluegreen-revocations-dlq' },
        },
        queueConsumers: {
          'bluegreen-revocations': { maxBatchSize: 100, maxBatchTimeout: 0.05, maxRetries: 3, retryDelay: 0 },
          'bluegreen-revocations-dlq': { maxBatchSize: 100, maxBatchTimeout: 0.05 },
        },
        hyperdrives: { GREEN: inject('workersGreenDsn'), GREEN_EMPTY: inject('workersEmptyDsn') },
        bindings: { REVOCATION_HMAC_KEY: 'workers-test-key', COALESCE_WINDOW_SECONDS: '30', REPLAY_PROFILE: 'hydra-v1', ROUTE_ADMIN_TOKEN: 'workers-route-admin-token' },
        outboundService: 'engine',
        workers: [{ name: 'engine', modules: true, scriptPath: here('./test-workers/engine.js'), compatibilityDate: '2026-04-20' }],
      },
    })),
  ],
  resolve: {
    // pg's Cloudflare socket and protocol packages resolve to their CommonJS builds inside workerd.
    alias: {
      'pg-protocol': here('./node_modules/pg-protocol/dist/index.js'),
      'pg-cloudflare': here('./node_modules/pg-cloudflare/dist/index.js'),
    },
  },
  test: {
    include: ['test-workers/**/*.test.ts'],
    globalSetup: ['test-workers/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
