// Runs in-place units on blue: every statement under lock_timeout, a lock timeout (or deadlock,
// or serialization failure) retried with backoff a bounded number of times (src/retry.ts), a failed
// concurrent index build's INVALID index dropped before the retry, and each transactional unit's
// journal row written inside the unit's own transaction, so a crash never runs a unit twice. The
// runner (src/run-step.ts) starts each unit, calls the drill hooks and journals it done afterwards.

import type { Db } from '../db/connect.ts';
import { qualified, type TableRef } from '../db/sql.ts';
import { batchSql, type Unit } from '../lint/rewrite.ts';
import { RetriesExhausted, withRetry, type RetryPolicy } from '../retry.ts';
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

/** The retry policy of in-place units: `retries` after the first try, jittered backoff from 50 ms, capped at 2 s. */
function inPlaceRetryPolicy(settings: InPlaceSettings): RetryPolicy {
  return { attempts: settings.retries + 1, baseDelayMs: BACKOFF_BASE_MS, maxDelayMs: BACKOFF_CAP_MS, jitter: true };
}

/** Runs `fn`; on a retryable SQLSTATE waits (exponential backoff with jitter) and tries again, at most `retries` times. */
export async function withRetries<T>(settings: InPlaceSettings, stats: RetryStats, note: (text: string) => void, fn: () => Promise<T>): Promise<T> {
  try {
    // Backoff is the point here (give the blocking transaction time to finish), not a wait for an event.
    return await withRetry(
      inPlaceRetryPolicy(settings),
      {
        retryable: (err) => RETRYABLE.has(sqlstate(err) ?? ''),
        onRetry: ({ attempt, waitMs, error }) => {
          stats.retries++;
          note(`SQLSTATE ${sqlstate(error)}; retry ${attempt}/${settings.retries} in ${waitMs} ms`);
        },
      },
      fn,
    );
  } catch (err) {
    // Out of tries: the last failure itself is what the operator must see (its SQLSTATE, its statement).
    throw err instanceof RetriesExhausted ? err.last : err;
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
  /** Journal unit key (the action id). */
  key: string;
  /** The migration's isolation for transactional units. */
  isolation: 'serializable' | 'default';
  /** Settings. */
  settings: InPlaceSettings;
  /** Retry counter. */
  stats: RetryStats;
  /** Progress line. */
  note: (text: string) => void;
  /** Finished units of the step, journalled ones included (for the batched cursor). */
  done: ReadonlyMap<string, Record<string, unknown>>;
}

/**
 * Runs one unit: exactly the statements of `unitSql(u)` (a transactional unit's statements one by one
 * in one transaction; a batched unit as its batches). The runner skips units already done, writes
 * `start` and journals the unit done after it; a transactional unit (and a batched one's last batch)
 * also journals itself done inside its own transaction, so a crash after the COMMIT never runs it
 * again, and the runner's later finish is an upsert of the same row with the full detail. Returns the
 * unit's figures for that detail.
 */
export async function runUnit(u: Unit, c: UnitContext): Promise<Record<string, unknown>> {
  if (u.mode === 'tx') {
    const figures = { statements: u.sql.length };
    await withRetries(c.settings, c.stats, c.note, () =>
      inTransaction(c.db, c.isolation, c.settings, async () => {
        for (const sql of u.sql) await c.db.query(sql);
        await c.journal.finish(IN_PLACE_STEP, c.key, figures);
      }),
    );
    return figures;
  }
  if (u.mode === 'outside') {
    // Outside a transaction nothing can commit with the journal row: the runner journals it next, and a
    // crash in between reruns it (a finished index build is then found and kept).
    await runOutside(u, c);
    return { statements: 1 };
  }
  return runBatched(u, c);
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

async function runBatched(u: Extract<Unit, { mode: 'batched' }>, c: UnitContext): Promise<Record<string, unknown>> {
  const pk = await primaryKey(c.db, u.table);
  if (!pk.length) {
    c.note(`${u.table.name} has no primary key: the UPDATE runs as written`);
    const figures = { batches: 1 };
    await withRetries(c.settings, c.stats, c.note, () =>
      inTransaction(c.db, 'default', c.settings, async () => {
        await c.db.query(`${u.head} ${u.set}`);
        await c.journal.finish(IN_PLACE_STEP, c.key, figures);
      }),
    );
    return figures;
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
        // The cursor commits with the batch: a crash resumes after the last committed batch. The empty
        // batch at the end journals the unit itself done in the same way.
        await c.journal.finish(IN_PLACE_STEP, n ? cursorKey : c.key, next);
      }),
    );
    state = next;
    if (!n) return state;
    c.note(`${u.table.name}: ${state.rows} row(s) backfilled in ${state.batches} batch(es)`);
  }
}
