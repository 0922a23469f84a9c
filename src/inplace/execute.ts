// Runs in-place units on blue: every statement under lock_timeout, a lock timeout (or deadlock,
// or serialization failure) retried with backoff a bounded number of times, a failed concurrent
// index build's INVALID index dropped before the retry, and each transactional unit's journal row
// written inside the unit's own transaction, so a crash never runs a unit twice.

import { setTimeout as sleep } from 'node:timers/promises';
import type { Db } from '../db/connect.ts';
import { qualified, type TableRef } from '../db/sql.ts';
import type { UnitHooks } from '../drill.ts';
import { batchSql, type Unit } from '../lint/rewrite.ts';
import type { Journal } from '../state/journal.ts';

/** How in-place statements run (config `inPlace`). */
export interface InPlaceSettings {
  /** lock_timeout of every statement, in ms. */
  lockTimeoutMs: number;
  /** Retries per unit after a retryable failure. */
  retries: number;
  /** Rows per batch of a batched backfill. */
  backfillBatchRows: number;
}

/** SQLSTATEs worth a retry: lock_not_available, deadlock_detected, serialization_failure. */
const RETRYABLE = new Set(['55P03', '40P01', '40001']);
const BACKOFF_BASE_MS = 50;
const BACKOFF_CAP_MS = 2000;
/** The journal step in-place units are recorded under. */
export const IN_PLACE_STEP = 'migrate-in-place';

function sqlstate(err: unknown): string | undefined {
  const e = err as { code?: unknown; detail?: { sqlstate?: unknown } } | null;
  if (typeof e?.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) return e.code;
  return typeof e?.detail?.sqlstate === 'string' ? e.detail.sqlstate : undefined;
}

/** Counts what retries cost, for the report. */
export interface RetryStats {
  /** Retryable failures seen (each followed by a retry). */
  retries: number;
}

/** Runs `fn`; on a retryable SQLSTATE waits (exponential backoff with jitter) and tries again, at most `retries` times. */
export async function withRetries<T>(settings: InPlaceSettings, stats: RetryStats, note: (text: string) => void, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      const code = sqlstate(err);
      if (!code || !RETRYABLE.has(code) || attempt >= settings.retries) throw err;
      stats.retries++;
      // Backoff is the point here (give the blocking transaction time to finish), not a wait for an event.
      const wait = Math.round(Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt) * (0.5 + Math.random() / 2));
      note(`SQLSTATE ${code}; retry ${attempt + 1}/${settings.retries} in ${wait} ms`);
      await sleep(wait);
    }
  }
}

/** Runs statements in one transaction with the unit's journal row, under SET LOCAL lock_timeout. */
async function inTransaction(db: Db, isolation: 'serializable' | 'default', settings: InPlaceSettings, body: () => Promise<void>): Promise<void> {
  await db.query(isolation === 'serializable' ? 'BEGIN ISOLATION LEVEL SERIALIZABLE' : 'BEGIN');
  try {
    await db.query(`SET LOCAL lock_timeout = ${Math.round(settings.lockTimeoutMs)}`);
    await body();
    await db.query('COMMIT');
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

async function invalidIndexes(db: Db, table: TableRef): Promise<{ schema: string; name: string; oid: number }[]> {
  const { rows } = await db.query<{ schema: string; name: string; oid: number }>(
    `SELECT n.nspname AS schema, c.relname AS name, c.oid::int AS oid FROM pg_index i
       JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE i.indrelid = to_regclass($1) AND NOT i.indisvalid`,
    [qualified(table.schema, table.name)],
  );
  return rows;
}

async function dropIndex(db: Db, ix: { schema: string; name: string }): Promise<void> {
  await db.query(`DROP INDEX CONCURRENTLY IF EXISTS ${qualified(ix.schema, ix.name)}`);
}

/** Where a unit runs and how it is recorded. */
export interface UnitContext {
  /** Blue (also holds the journal and the run lock). */
  db: Db;
  /** The run's journal. */
  journal: Journal;
  /** Journal unit key. */
  key: string;
  /** The migration's isolation for transactional units. */
  isolation: 'serializable' | 'default';
  /** Settings. */
  settings: InPlaceSettings;
  /** Retry counter. */
  stats: RetryStats;
  /** Progress line. */
  note: (text: string) => void;
  /** Finished units of the step (for the batched cursor). */
  done: Map<string, Record<string, unknown>>;
  /** Crash-drill hooks around the unit. */
  hooks?: UnitHooks;
}

/** Runs one unit (the caller skips units already done and writes `start`). */
export async function runUnit(u: Unit, c: UnitContext): Promise<void> {
  await c.hooks?.beforeUnit?.(IN_PLACE_STEP, c.key);
  if (u.mode === 'tx') {
    await withRetries(c.settings, c.stats, c.note, () =>
      inTransaction(c.db, c.isolation, c.settings, async () => {
        for (const sql of u.sql) await c.db.query(sql);
        await c.journal.finish(IN_PLACE_STEP, c.key, { statements: u.sql.length });
      }),
    );
  } else if (u.mode === 'outside') {
    await runOutside(u, c);
    await c.journal.finish(IN_PLACE_STEP, c.key, { statements: 1 });
  } else {
    await runBatched(u, c);
  }
  await c.hooks?.afterUnit?.(IN_PLACE_STEP, c.key);
}

async function runOutside(u: Extract<Unit, { mode: 'outside' }>, c: UnitContext): Promise<void> {
  await withRetries(c.settings, c.stats, c.note, async () => {
    await c.db.query(`SET lock_timeout = ${Math.round(c.settings.lockTimeoutMs)}`);
    if (u.table && u.indexName) {
      // A build that finished before a crash is kept; an INVALID leftover is dropped (IF NOT EXISTS would keep it).
      const left = (await invalidIndexes(c.db, u.table)).filter((ix) => ix.name === u.indexName);
      for (const ix of left) await dropIndex(c.db, ix);
      const valid = await c.db.query('SELECT 1 FROM pg_class WHERE oid = to_regclass($1)', [qualified(u.table.schema, u.indexName)]);
      if (valid.rowCount) return;
    }
    const before = u.table ? new Set((await invalidIndexes(c.db, u.table)).map((ix) => ix.oid)) : new Set<number>();
    try {
      await c.db.query(u.sql);
    } catch (err) {
      if (u.table) {
        for (const ix of (await invalidIndexes(c.db, u.table)).filter((i) => !before.has(i.oid))) {
          c.note(`dropping the INVALID index ${ix.name} left by the failed build`);
          await dropIndex(c.db, ix);
        }
      }
      throw err;
    }
  });
}

async function primaryKey(db: Db, table: TableRef): Promise<string[]> {
  const { rows } = await db.query<{ a: string }>(
    `SELECT a.attname::text AS a FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)`,
    [qualified(table.schema, table.name)],
  );
  return rows.map((r) => r.a);
}

async function runBatched(u: Extract<Unit, { mode: 'batched' }>, c: UnitContext): Promise<void> {
  const pk = await primaryKey(c.db, u.table);
  if (!pk.length) {
    c.note(`${u.table.name} has no primary key: the UPDATE runs as written`);
    await withRetries(c.settings, c.stats, c.note, () =>
      inTransaction(c.db, 'default', c.settings, async () => {
        await c.db.query(`${u.head} ${u.set}`);
        await c.journal.finish(IN_PLACE_STEP, c.key, { batches: 1 });
      }),
    );
    return;
  }
  const cursorKey = `${c.key}:cursor`;
  let state = (c.done.get(cursorKey) ?? { last: null, rows: 0, batches: 0 }) as { last: unknown[] | null; rows: number; batches: number };
  for (;;) {
    let n = 0;
    let next = state;
    await withRetries(c.settings, c.stats, c.note, () =>
      inTransaction(c.db, 'default', c.settings, async () => {
        const sql = batchSql(u, pk, c.settings.backfillBatchRows, state.last !== null);
        const { rows } = await c.db.query<{ n: number; last: unknown[] | null }>(sql, state.last?.map((v) => (v === null ? null : String(v))) ?? []);
        n = rows[0]?.n ?? 0;
        next = n ? { last: rows[0]!.last, rows: state.rows + n, batches: state.batches + 1 } : state;
        // The cursor commits with the batch: a crash resumes after the last committed batch.
        await c.journal.finish(IN_PLACE_STEP, n ? cursorKey : c.key, next);
      }),
    );
    state = next;
    if (!n) return;
    c.note(`${u.table.name}: ${state.rows} row(s) backfilled in ${state.batches} batch(es)`);
  }
}
