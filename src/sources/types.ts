// The contract every migration source satisfies (pop folder, postgres-migrations folder, external
// command), and the one routine that runs a migration file together with its tracking row, so that
// every source rolls back, reports file:line:column and records its bookkeeping the same way.

import type { Db } from '../db/connect.ts';
import { toPostgresError } from '../db/connect.ts';
import { splitStatements } from './check.ts';

/** One migration as the source knows it. */
export interface Migration {
  /** Version (pop: 20 digits) or numeric id (postgres-migrations); `command` for a command source. */
  id: string;
  /** Human name taken from the file name (or the command line). */
  name: string;
  /** Absolute path of the file that will run (null for `command`). */
  file: string | null;
  /** The SQL text of the file ('' for `command`). */
  sql: string;
  /** How the file runs: in a SERIALIZABLE transaction, a default one, or statement by statement. */
  transaction: 'serializable' | 'default' | 'none';
}

/** A place migrations come from; it can tell what is pending on a database and apply one. */
export interface MigrationSource {
  /** Which kind of source this is (the config's `migrations.kind`). */
  readonly kind: 'pop' | 'postgres-migrations' | 'command';
  /** One human sentence saying where migrations come from. */
  describe(): string;
  /** Every migration on disk, validated and in run order. */
  all(): Promise<Migration[]>;
  /** What would run on `db`, in run order; never writes. */
  pending(db: Db): Promise<Migration[]>;
  /** Runs one migration together with its tracking row; `recordOnly` writes just the row (in-place mode ran the SQL as rewritten units). */
  apply(db: Db, m: Migration, opts?: { recordOnly?: boolean }): Promise<void>;
}

/** Config of a source (mirrors the config file's `migrations` key). */
export type SourceConfig =
  | { kind: 'pop'; dir: string }
  | { kind: 'postgres-migrations'; dir: string }
  | { kind: 'command'; argv: string[]; env?: Record<string, string>; timeoutSeconds?: number; dsnEnv?: string };

/** The bookkeeping INSERT a source runs after a migration's SQL (bind parameters in `values`). */
export interface TrackingRow {
  /** The INSERT statement. */
  text: string;
  /** Its bind parameters. */
  values: unknown[];
}

/**
 * Runs `m` and then `row` on green. Transactional migrations run as one simple query inside
 * BEGIN ... COMMIT with the tracking row, so a failure leaves neither the change nor the row.
 * `none` migrations run statement by statement (so several CONCURRENTLY statements in one file work)
 * and the row is written only after the last statement succeeded.
 */
export async function runWithTracking(db: Db, m: Migration, row: TrackingRow): Promise<void> {
  const where = { ...(m.file === null ? {} : { file: m.file }), side: 'green' as const };
  const origin = { ...where, sql: m.sql };
  if (m.transaction === 'none') {
    for (const stmt of await splitStatements(m)) {
      try {
        await db.query(stmt.sql);
      } catch (err) {
        throw toPostgresError(shiftPosition(err, stmt.offset), origin);
      }
    }
    await insertRow(db, row);
    return;
  }
  try {
    await db.query(m.transaction === 'serializable' ? 'BEGIN ISOLATION LEVEL SERIALIZABLE' : 'BEGIN');
    try {
      // An empty query string is a protocol-level no-op; a comment-only one is fine for Postgres.
      if (m.sql.trim() !== '') await db.query(m.sql);
    } catch (err) {
      throw toPostgresError(err, origin);
    }
    await insertRow(db, row);
    await db.query('COMMIT');
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    // A failing COMMIT (deferred constraint, serialization failure) still belongs to this file.
    throw toPostgresError(err, where);
  }
}

async function insertRow(db: Db, row: TrackingRow): Promise<void> {
  try {
    await db.query(row.text, row.values);
  } catch (err) {
    throw toPostgresError(err, { side: 'green' });
  }
}

/**
 * Postgres reports positions within the statement sent; make them positions within the whole file.
 * Many DDL errors carry no position at all: then point at the start of the failing statement.
 */
function shiftPosition(err: unknown, offset: number): unknown {
  const e = err as { code?: unknown; position?: string } | null;
  if (!e || typeof e !== 'object' || typeof e.code !== 'string' || !/^[0-9A-Z]{5}$/.test(e.code)) return err;
  e.position = String((typeof e.position === 'string' ? Number(e.position) : 1) + offset);
  return err;
}
