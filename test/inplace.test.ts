// In-place mode on real PostgreSQL: the example migrations run lock-safe while writers keep
// inserting and updating the migrated table, lock timeouts are retried, a failed concurrent build
// leaves no INVALID index, and the clean Hydra fixture reaches v2 on blue itself.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadWorkload, migrateInPlace, quiet, startWriters } from '../bench/workload.ts';
import type { ProgressSink } from '../src/runner.ts';
import { createDbPair, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

const ROWS = 20_000;
const LOCK_TIMEOUT_MS = 200;
// A writer may wait for our DDL's lock at most lock_timeout; the margin covers the DDL's own (catalog-only) run.
const MARGIN_MS = 100;
const pairs: DbPair[] = [];
afterAll(async () => {
  for (const p of pairs) await p.drop();
});

async function freshPair(prefix: string, rows = ROWS): Promise<DbPair> {
  const pair = await createDbPair(prefix);
  pairs.push(pair);
  await loadWorkload(pair.blueDsn, rows);
  return pair;
}

describe('apply --in-place on the example migrations', () => {
  it('never makes a concurrent writer wait longer than lock_timeout, and ends with every constraint valid', async () => {
    const pair = await freshPair('inplace_w');
    // Each writer's own lock_timeout turns "waited for a lock longer than ours + margin" into a counted failure,
    // which CPU scheduling on a busy machine cannot cause (it only counts time spent waiting for locks).
    const writers = await startWriters(pair.blueDsn, ROWS, { maxOps: 100_000, lockTimeoutMs: LOCK_TIMEOUT_MS + MARGIN_MS });
    let doc: Record<string, unknown>;
    let report: Awaited<ReturnType<typeof writers.stop>>;
    try {
      doc = await migrateInPlace(pair.blueDsn, { greenDsn: pair.greenDsn, lockTimeoutMs: LOCK_TIMEOUT_MS, batchRows: 2000 });
    } finally {
      report = await writers.stop();
    }
    expect(doc.ok, JSON.stringify(doc)).toBe(true);
    expect(report.errors).toBe(0);
    expect(report.statements).toBeGreaterThan(50);
    expect(report.lockTimeouts).toBe(0);
    // Wall time includes CPU starvation on a shared 2-core machine; an unbounded lock wait would be the whole backfill.
    expect(report.maxMs).toBeLessThan(3000);
    await withClient(pair.blueDsn, async (c) => {
      const r = await c.query(`SELECT
          (SELECT is_nullable FROM information_schema.columns WHERE table_name = 'bench_tokens' AND column_name = 'tenant') AS nullable,
          (SELECT count(*)::int FROM bench_tokens WHERE tenant = 'default' AND subject LIKE 'user-%') AS not_backfilled,
          (SELECT count(*)::int FROM pg_constraint WHERE NOT convalidated) AS invalid_constraints,
          (SELECT count(*)::int FROM pg_index WHERE NOT indisvalid) AS invalid_indexes,
          (SELECT count(*)::int FROM pg_constraint WHERE conname LIKE '%not_null') AS leftover_checks,
          (SELECT count(*)::int FROM migrations WHERE id > 0) AS recorded`);
      expect(r.rows[0]).toEqual({ nullable: 'NO', not_backfilled: 0, invalid_constraints: 0, invalid_indexes: 0, leftover_checks: 0, recorded: 5 });
    });
  });

  it('times out behind a long transaction, retries with backoff, and finishes once it is gone', async () => {
    const pair = await freshPair('inplace_r', 2000);
    await withClient(pair.blueDsn, async (blocker) => {
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE bench_tokens IN ACCESS SHARE MODE');
      let released = false;
      // Release the blocker as soon as the runner reports its first lock timeout.
      const sink: ProgressSink = {
        step: (_n, _t, fn) =>
          fn((text) => {
            if (!released && text.includes('55P03')) {
              released = true;
              void blocker.query('COMMIT');
            }
          }),
      };
      const doc = await migrateInPlace(pair.blueDsn, { greenDsn: pair.greenDsn, lockTimeoutMs: 100, batchRows: 500, sink });
      expect(released).toBe(true);
      expect(doc.ok, JSON.stringify(doc)).toBe(true);
      expect((doc.migrate as { retries: number }).retries).toBeGreaterThanOrEqual(1);
    });
  });

  it('drops the INVALID index a failed concurrent build leaves, and a resume after the fix finishes', async () => {
    const pair = await freshPair('inplace_i', 2000);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'inplace-mig-'));
    // An expression index: the pre-flight cannot check it, so the build itself meets the duplicate.
    fs.writeFileSync(path.join(dir, '1_subject_uq.sql'), 'CREATE UNIQUE INDEX bench_tokens_subject_uq ON bench_tokens (lower(subject));\n');
    await withClient(pair.blueDsn, (c) => c.query(`INSERT INTO bench_tokens (client_id, subject) VALUES ('client-1', 'USER-7')`));
    const failed = await migrateInPlace(pair.blueDsn, { greenDsn: pair.greenDsn, lockTimeoutMs: 200, batchRows: 500, dir });
    expect(failed.ok).toBe(false);
    expect((failed.error as { sqlstate?: string }).sqlstate ?? JSON.stringify(failed.error)).toContain('23505');
    const invalid = async (): Promise<number> => withClient(pair.blueDsn, async (c) => (await c.query(`SELECT count(*)::int AS n FROM pg_class WHERE relname = 'bench_tokens_subject_uq'`)).rows[0].n);
    expect(await invalid()).toBe(0);
    await withClient(pair.blueDsn, (c) => c.query(`DELETE FROM bench_tokens WHERE subject = 'USER-7'`));
    const resumed = await migrateInPlace(pair.blueDsn, { greenDsn: pair.greenDsn, lockTimeoutMs: 200, batchRows: 500, dir, mode: 'resume', sink: quiet });
    expect(resumed.ok, JSON.stringify(resumed)).toBe(true);
    expect(await invalid()).toBe(1);
  });

  it('runs every statement as written with --no-rewrite, and the plan shows no rewrite then', async () => {
    const pair = await freshPair('inplace_n', 500);
    const doc = await migrateInPlace(pair.blueDsn, { greenDsn: pair.greenDsn, lockTimeoutMs: 500, batchRows: 100, rewrite: false });
    expect(doc.ok, JSON.stringify(doc)).toBe(true);
    const units = await withClient(pair.blueDsn, async (c) => (await c.query<{ unit: string }>(`SELECT unit FROM bluegreen.journal WHERE step = 'migrate-in-place' AND unit <> '' ORDER BY unit`)).rows.map((r) => r.unit));
    // One unit per file plus its tracking row: nothing split, nothing batched.
    expect(units).toEqual(['1:0', '1:1', '2:0', '2:1', '3:0', '3:1', '4:0', '4:1', '5:0', '5:1']);
  });
});

describe('apply --in-place on the clean Hydra fixture', () => {
  it('plans the rewrites, then brings blue itself to the v2 schema with every constraint valid', async () => {
    const pair = await createDbPair('inplace_h');
    pairs.push(pair);
    await seedBlue(pair, { rows: 1000, seed: 3, dirty: [] });
    const cfg = writeConfig(pair, { inPlace: { lockTimeoutMs: 1000, retries: 5, backfillBatchRows: 200 } });
    const plan = await runCli(['plan', '--in-place', '--config', cfg.file, '--json'], cfg.env);
    expect(plan.code, plan.stderr).toBe(0);
    const planned = JSON.parse(plan.stdout);
    const actions = planned.steps.find((s: { step: string }) => s.step === 'migrate-in-place').actions as { id: string; sql?: string; facts?: { rewrites?: string[] } }[];
    expect(actions.some((a) => a.sql?.includes('CREATE UNIQUE INDEX CONCURRENTLY hydra_client_idx_id_uq'))).toBe(true);
    expect(actions.some((a) => a.sql?.replace(/\s+/g, ' ').includes('hydra_oauth2_access_client_id_fk FOREIGN KEY (client_id, nid) REFERENCES hydra_client (id, nid) ON DELETE CASCADE NOT VALID'))).toBe(true);
    expect(planned.safety.preflight).toEqual([]);

    const r = await runCli(['apply', '--in-place', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.steps.map((s: { name: string; status: string }) => `${s.name}:${s.status}`)).toEqual(['constraints:done', 'migrate-in-place:done']);
    const journal = await withClient(pair.blueDsn, async (c) => (await c.query<{ u: string }>(`SELECT unit AS u FROM bluegreen.journal WHERE step = 'migrate-in-place' AND unit <> '' AND unit NOT LIKE '%:cursor' ORDER BY 1`)).rows.map((x) => x.u));
    expect(journal).toEqual(actions.map((a) => a.id).sort());
    await withClient(pair.blueDsn, async (c) => {
      const s = await c.query(`SELECT to_regclass('public.hydra_oauth2_flow') IS NOT NULL AS flow,
          (SELECT is_nullable FROM information_schema.columns WHERE table_name = 'hydra_oauth2_access' AND column_name = 'nid') AS nid_nullable,
          (SELECT count(*)::int FROM pg_constraint WHERE NOT convalidated) AS invalid,
          (SELECT count(*)::int FROM pg_index WHERE NOT indisvalid) AS invalid_indexes,
          (SELECT count(*)::int FROM schema_migration WHERE version = '20211011000012000000') AS last`);
      expect(s.rows[0]).toEqual({ flow: true, nid_nullable: 'NO', invalid: 0, invalid_indexes: 0, last: 1 });
    });
  });
});
