// Starts two separate PostgreSQL 15 clusters, blue and green, for the whole test run; each test
// file creates its own databases on them (test/harness.ts) and drops them at the end.

import type { TestProject } from 'vitest/node';
import { startCluster, type LocalCluster } from '../src/db/embedded.ts';

let clusters: LocalCluster[] = [];

/** Starts blue and green and hands their admin DSNs to the tests. */
export async function setup(project: TestProject): Promise<void> {
  clusters = await Promise.all([startCluster({ name: 'blue' }), startCluster({ name: 'green' })]);
  project.provide('blueAdminDsn', clusters[0]!.dsn());
  project.provide('greenAdminDsn', clusters[1]!.dsn());
}

/** Stops both clusters and removes their data. */
export async function teardown(): Promise<void> {
  await Promise.all(clusters.map((c) => c.stop()));
}

declare module 'vitest' {
  export interface ProvidedContext {
    blueAdminDsn: string;
    greenAdminDsn: string;
  }
}
