// The in-place workload shared by `npm run bench:inplace` and test/inplace.test.ts: the example
// table set (sql/examples/inplace.schema.sql) filled with N rows, its migrations run as written or
// in place, and a writer loop that inserts and updates rows of the migrated table meanwhile,
// recording every statement's latency.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { applyCommand } from '../src/commands/apply.ts';
import type { ProgressSink } from '../src/runner.ts';
import type { ResumeMode } from '../src/state/journal.ts';
import { postgresMigrationsSource } from '../src/sources/postgres-migrations.ts';

/** The example migration folder (postgres-migrations format). */
export const INPLACE_MIGRATIONS = fileURLToPath(new URL('../sql/examples/inplace/', import.meta.url));
const SCHEMA = fs.readFileSync(new URL('../sql/examples/inplace.schema.sql', import.meta.url), 'utf8');
const FILL = `INSERT INTO bench_tokens (client_id, subject, state, created_at)
  SELECT 'client-' || (1 + g % 100), 'user-' || (g % 5000), g % 3, timestamptz '2024-01-01' + g * interval '1 second'
  FROM generate_series(1, $1::int) g`;
const INSERT = `INSERT INTO bench_tokens (client_id, subject) VALUES ('client-' || (1 + $1::int % 100), 'writer-' || $1::int)`;
const UPDATE = 'UPDATE bench_tokens SET state = state + 1 WHERE id = $1';

/** Creates the example tables on `dsn` and fills bench_tokens with `rows` rows. */
export async function loadWorkload(dsn: string, rows: number): Promise<void> {
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  try {
    await c.query(SCHEMA);
    await c.query(FILL, [rows]);
    await c.query('ANALYZE bench_clients, bench_tokens');
  } finally {
    await c.end();
  }
}

/** What the writers saw. */
export interface WriterReport {
  /** Statements run. */
  statements: number;
  /** The longest single statement, ms. */
  maxMs: number;
  /** Statements that failed (none expected). */
  errors: number;
  /** Statements cancelled by the writers' own lock_timeout (a lock wait longer than it), when one was set. */
  lockTimeouts: number;
  /** When the longest statement started (Date.now()) and which one it was. */
  maxAt: { startedAt: number; statement: 'insert' | 'update' } | null;
}

/** Starts `writers` loops of INSERT + UPDATE on bench_tokens (each bounded by `maxOps`); `stop()` ends them and reports. */
export async function startWriters(dsn: string, rows: number, opts: { writers?: number; maxOps?: number; lockTimeoutMs?: number } = {}): Promise<{ stop(): Promise<WriterReport> }> {
  const report: WriterReport = { statements: 0, maxMs: 0, errors: 0, lockTimeouts: 0, maxAt: null };
  let running = true;
  const clients = await Promise.all(
    Array.from({ length: opts.writers ?? 2 }, async () => {
      const c = new pg.Client({ connectionString: dsn, application_name: 'bench-writer' });
      await c.connect();
      // Lock waits are what is measured; keep WAL flushes on a busy disk out of the latencies.
      await c.query('SET synchronous_commit = off');
      // Optional: a writer lock wait longer than this fails the statement (55P03), measuring waits without CPU noise.
      if (opts.lockTimeoutMs) await c.query(`SET lock_timeout = ${Math.round(opts.lockTimeoutMs)}`);
      return c;
    }),
  );
  const timed = async (c: pg.Client, sql: string, v: number): Promise<void> => {
    const t0 = performance.now();
    const startedAt = Date.now();
    try {
      await c.query(sql, [v]);
    } catch (err) {
      if ((err as { code?: string }).code === '55P03') report.lockTimeouts++;
      else report.errors++;
    }
    const ms = performance.now() - t0;
    if (ms > report.maxMs) report.maxAt = { startedAt, statement: sql === INSERT ? 'insert' : 'update' };
    report.maxMs = Math.max(report.maxMs, ms);
    report.statements++;
  };
  // Warm-up (connection caches, plans) before anything is measured: a cold first statement is not a lock stall.
  const WARMUP = 20;
  for (const [w, c] of clients.entries()) {
    for (let i = 0; i < WARMUP; i++) {
      await c.query(INSERT, [w * 1_000_000 + 900_000 + i]);
      await c.query(UPDATE, [1 + ((i * 7919 + w * 104729) % rows)]);
    }
  }
  const loops = clients.map(async (c, w) => {
    for (let i = 0; running && i < (opts.maxOps ?? 1_000_000); i++) {
      await timed(c, INSERT, w * 1_000_000 + i);
      await timed(c, UPDATE, 1 + ((i * 7919 + w * 104729) % rows));
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      await Promise.all(clients.map((c) => c.end()));
      return report;
    },
  };
}

/** Runs the pending example migrations as written (one transaction per file, no lock_timeout): the anchor. */
export async function migrateRaw(dsn: string): Promise<void> {
  const source = postgresMigrationsSource(INPLACE_MIGRATIONS);
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  try {
    for (const m of await source.pending(c)) await source.apply(c, m);
  } finally {
    await c.end();
  }
}

/** A progress sink that prints nothing. */
export const quiet: ProgressSink = { step: (_name, _title, fn) => fn(() => {}) };

/** Runs `migrate apply --in-place` on `dsn` through the command function; returns its JSON document (green is only connected to, never written). */
export async function migrateInPlace(
  dsn: string,
  opts: { greenDsn: string; lockTimeoutMs: number; batchRows: number; rewrite?: boolean; dir?: string; mode?: ResumeMode; sink?: ProgressSink },
): Promise<Record<string, unknown>> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-inplace-'));
  const file = path.join(dir, 'migrate.config.json');
  const env = `BENCH_INPLACE_DSN_${process.pid}`;
  process.env[env] = dsn;
  process.env[`${env}_GREEN`] = opts.greenDsn;
  fs.writeFileSync(file, JSON.stringify({
    blue: { dsn: `env:${env}` },
    green: { dsn: `env:${env}_GREEN` },
    profile: 'none',
    migrations: { kind: 'postgres-migrations', dir: opts.dir ?? INPLACE_MIGRATIONS },
    inPlace: { lockTimeoutMs: opts.lockTimeoutMs, retries: 50, backfillBatchRows: opts.batchRows },
  }));
  const mode = opts.mode ?? 'fresh';
  const out = await applyCommand({ config: file, json: true, inPlace: true, sink: opts.sink ?? quiet, rewrite: opts.rewrite !== false, resume: mode === 'resume', restart: mode === 'restart' });
  fs.rmSync(dir, { recursive: true, force: true });
  return out.json;
}
