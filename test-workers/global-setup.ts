// Runs in Node before the workerd tests: starts a throwaway green cluster with the Hydra v1 fixture
// (seeded) for the consumer, plus an empty database on the same cluster where every replay fails.

import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { startCluster, type LocalCluster } from '../support/embedded.ts';
import { loadHydraV1Schema, seedHydraV1 } from '../support/fixture/seed.ts';

let cluster: LocalCluster | undefined;

async function run(dsn: string, fn: (c: pg.Client) => Promise<unknown>): Promise<void> {
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  try {
    await fn(c);
  } finally {
    await c.end();
  }
}

/** Starts green, loads and seeds the fixture, and hands the DSNs to the workers config. */
export async function setup(project: TestProject): Promise<void> {
  cluster = await startCluster({ name: 'workers-green' });
  await run(cluster.dsn(), async (c) => {
    await c.query('CREATE DATABASE green');
    await c.query('CREATE DATABASE empty');
  });
  await run(cluster.dsn('green'), async (c) => {
    await loadHydraV1Schema(c);
    await seedHydraV1(c, { rows: 400, seed: 7, dirty: [] });
  });
  project.provide('workersGreenDsn', cluster.dsn('green'));
  project.provide('workersEmptyDsn', cluster.dsn('empty'));
}

/** Stops the cluster. */
export async function teardown(): Promise<void> {
  await cluster?.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    workersGreenDsn: string;
    workersEmptyDsn: string;
  }
}
