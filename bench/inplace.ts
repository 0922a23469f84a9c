// `npm run bench:inplace -- [--rows N] [--json]`: the example migration set (add column, whole-table
// backfill, SET NOT NULL, index, foreign key) on N rows, run as written (the anchor) and in place,
// each while two writers insert and update rows of the migrated table. Reports the longest single
// writer statement in each run. Prints one JSON line.

import { parseArgs } from 'node:util';
import pg from 'pg';
import { startCluster } from '../support/embedded.ts';
import type { ProgressSink } from '../src/runner.ts';
import { loadWorkload, migrateInPlace, migrateRaw, startWriters, type WriterReport } from './workload.ts';

const { values } = parseArgs({
  options: { rows: { type: 'string', default: '1000000' }, 'lock-timeout': { type: 'string', default: '100' }, 'batch-rows': { type: 'string', default: '2000' }, json: { type: 'boolean', default: false } },
});
const rows = Number(values.rows);
const lockTimeoutMs = Number(values['lock-timeout']);
const batchRows = Number(values['batch-rows']);

/** A checkpoint before each measured run, so neither run pays for the other's dirty buffers. */
async function checkpoint(dsn: string): Promise<void> {
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  await c.query('CHECKPOINT');
  await c.end();
}

const cluster = await startCluster({ name: 'bench-inplace' });
try {
  const admin = new pg.Client({ connectionString: cluster.dsn() });
  await admin.connect();
  for (const db of ['raw', 'ours', 'unused_green']) await admin.query(`CREATE DATABASE ${db}`);
  await admin.end();
  await Promise.all([loadWorkload(cluster.dsn('raw'), rows), loadWorkload(cluster.dsn('ours'), rows)]);

  const measure = async (dsn: string, migrate: () => Promise<unknown>): Promise<WriterReport & { ms: number }> => {
    await checkpoint(dsn);
    const writers = await startWriters(dsn, rows);
    const t0 = performance.now();
    let result: unknown;
    let report: WriterReport;
    try {
      result = await migrate();
    } finally {
      report = await writers.stop();
    }
    const doc = result as { ok?: boolean; error?: unknown } | undefined;
    if (doc && doc.ok === false) throw new Error(`in-place run failed: ${JSON.stringify(doc.error)}`);
    return { ...report, ms: Math.round(performance.now() - t0) };
  };
  const raw = await measure(cluster.dsn('raw'), () => migrateRaw(cluster.dsn('raw')));
  // What the in-place runner was doing when each progress line came: names the phase of the longest stall.
  const phases: { at: number; text: string }[] = [];
  const sink: ProgressSink = { step: (name, _t, fn) => fn((text) => void phases.push({ at: Date.now(), text: `${name}: ${text}` })) };
  const ours = await measure(cluster.dsn('ours'), () => migrateInPlace(cluster.dsn('ours'), { greenDsn: cluster.dsn('unused_green'), lockTimeoutMs, batchRows, sink }));
  const during = ours.maxAt ? (phases.filter((p) => p.at <= ours.maxAt!.startedAt).at(-1)?.text ?? 'start') : null;
  const out = {
    raw_max_stall_ms: Math.round(raw.maxMs),
    ours_max_stall_ms: Math.round(ours.maxMs),
    rows,
    lock_timeout_ms: lockTimeoutMs,
    raw_migrate_ms: raw.ms,
    ours_migrate_ms: ours.ms,
    raw_writer_statements: raw.statements,
    ours_writer_statements: ours.statements,
    writer_errors: raw.errors + ours.errors,
    ours_max_stall_during: ours.maxAt ? `${ours.maxAt.statement} during ${during}` : null,
  };
  process.stdout.write(`${values.json ? JSON.stringify(out) : JSON.stringify(out, null, 2)}\n`);
} finally {
  await cluster.stop();
}
