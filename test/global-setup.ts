// Starts two separate PostgreSQL 15 clusters, blue and green, for the whole test run; each test
// file creates its own databases on them (test/harness.ts) and drops them at the end.
//
// Scratch space: when the machine has a roomy tmpfs (/dev/shm), the run's temp files go there
// (TMPDIR, inherited by the test workers and the CLI processes they spawn). Miniflare keeps its
// local queue, KV and Durable Object storage under the temp dir and writes it synchronously; on a
// disk that halved the chaos test's traffic rate. Nothing else changes: same clusters, same workerd.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';
import { startCluster, type LocalCluster } from '../support/embedded.ts';

const TMPFS = '/dev/shm';
const TMPFS_MIN_FREE_BYTES = 8 * 1024 ** 3;

let clusters: LocalCluster[] = [];
let scratch: string | undefined;

/** A fresh scratch dir on tmpfs when one with room exists, else undefined (the default temp dir stays). */
function tmpfsScratch(): string | undefined {
  try {
    const st = fs.statfsSync(TMPFS);
    if (st.bavail * st.bsize < TMPFS_MIN_FREE_BYTES) return undefined;
    const dir = fs.mkdtempSync(path.join(TMPFS, 'pg-bluegreen-test-'));
    fs.chmodSync(dir, 0o755); // Postgres runs as `postgres` under root and must traverse it
    return dir;
  } catch {
    return undefined;
  }
}

/** Starts blue and green and hands their admin DSNs to the tests. */
export async function setup(project: TestProject): Promise<void> {
  scratch = tmpfsScratch();
  if (scratch) process.env.TMPDIR = scratch;
  process.stderr.write(`test scratch dir: ${os.tmpdir()}\n`);
  clusters = await Promise.all([startCluster({ name: 'blue' }), startCluster({ name: 'green' })]);
  project.provide('blueAdminDsn', clusters[0]!.dsn());
  project.provide('greenAdminDsn', clusters[1]!.dsn());
}

/** Stops both clusters and removes their data. */
export async function teardown(): Promise<void> {
  await Promise.all(clusters.map((c) => c.stop()));
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
}

declare module 'vitest' {
  export interface ProvidedContext {
    blueAdminDsn: string;
    greenAdminDsn: string;
  }
}
