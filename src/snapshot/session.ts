// The connections of a copy: the exporter that holds the snapshot open, worker connections on blue
// that import it, worker connections on green tuned for bulk loading, and post-data statements that
// tolerate a redo (an object a crashed attempt already committed counts as done).

import { connect, query, toPostgresError, type Db } from '../db/connect.ts';
import { literal } from '../db/sql.ts';
import { StateError } from '../errors.ts';
import type { StepContext } from '../steps/step.ts';
import { STABLE_OUTPUT } from './check.ts';

const DUPLICATE_OBJECT = new Set(['42P07', '42710', '42P16']);

/** What pg_dump's post-data header sets, plus bulk-load settings for index builds. */
const GREEN_WORKER_SETTINGS = [
  'SET statement_timeout = 0',
  'SET lock_timeout = 0',
  "SELECT pg_catalog.set_config('search_path', '', false)",
  'SET check_function_bodies = false',
  'SET client_min_messages = warning',
  'SET synchronous_commit = off',
  "SET maintenance_work_mem = '512MB'",
  ...STABLE_OUTPUT,
];

/** Opens a blue connection inside the exported snapshot (REPEATABLE READ, read only). */
export async function importSnapshot(dsn: string, snapshotId: string): Promise<Db> {
  const db = await connect('blue', dsn, 'migrate-snapshot-worker', { holdsSnapshot: true });
  try {
    for (const s of STABLE_OUTPUT) await db.query(s);
    await db.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    await db.query(`SET TRANSACTION SNAPSHOT ${literal(snapshotId)}`);
  } catch (err) {
    await db.end().catch(() => {});
    throw err;
  }
  return db;
}

/** A green connection set up for loading and index builds. */
export async function openGreenWorker(dsn: string): Promise<Db> {
  const db = await connect('green', dsn, 'migrate-copy-worker');
  for (const s of GREEN_WORKER_SETTINGS) await query(db, s, [], { side: 'green' });
  return db;
}

/** True when an exported snapshot can still be imported (its exporting transaction is alive). */
async function snapshotAlive(dsn: string, snapshotId: string): Promise<boolean> {
  try {
    const db = await importSnapshot(dsn, snapshotId);
    await db.end();
    return true;
  } catch {
    return false;
  }
}

/** The exported snapshot and the session that keeps it alive. */
export interface Exporter {
  /** The id workers import. */
  snapshotId: string;
  /** Ends the exporting session (idempotent): the snapshot is gone afterwards. */
  release(): Promise<void>;
}

/** Exports a new snapshot; refuses to replace a gone one mid-copy unless --accept-new-snapshot. */
export async function exportSnapshot(ctx: StepContext, copiedAny: boolean): Promise<Exporter> {
  const journal = ctx.journal!;
  const previous = (await query<{ snapshot_id: string | null }>(ctx.blue, 'SELECT snapshot_id FROM bluegreen.run WHERE run_id = $1', [journal.runId])).rows[0]?.snapshot_id ?? null;
  if (previous && copiedAny && !(await snapshotAlive(ctx.config.blueDsn, previous))) {
    if (!ctx.options.acceptNewSnapshot) {
      throw new StateError(
        `snapshot ${previous} of run ${journal.runId} is gone (its session ended) and part of the data was copied from it`,
        'rerun with --resume --accept-new-snapshot to copy the remaining tables from a new snapshot (tables may then differ by the writes in between; revocations are still replayed), or --restart for a fully consistent copy',
        { previousSnapshot: previous },
      );
    }
    ctx.progress(`snapshot ${previous} is gone; continuing with a new snapshot as --accept-new-snapshot allows`);
  }
  const db = await connect('blue', ctx.config.blueDsn, 'migrate-snapshot-exporter', { holdsSnapshot: true });
  let snapshotId: string;
  try {
    await db.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    snapshotId = (await db.query<{ id: string }>('SELECT pg_export_snapshot() AS id')).rows[0]!.id;
    await journal.updateRun({ snapshot_id: snapshotId });
  } catch (err) {
    await db.end().catch(() => {});
    throw toPostgresError(err, { side: 'blue' });
  }
  let open = true;
  return {
    snapshotId,
    release: async () => {
      if (!open) return;
      open = false;
      await db.end().catch(() => {});
    },
  };
}

/** Runs one post-data statement; foreign keys go in NOT VALID, then VALIDATE (violations are left to cleanup). */
export async function runPostData(green: Db, sql: string, foreignKey: boolean): Promise<Record<string, unknown>> {
  const statement = foreignKey && !/\bNOT VALID\s*$/i.test(sql) ? `${sql} NOT VALID` : sql;
  try {
    await green.query(statement);
  } catch (err) {
    if (!DUPLICATE_OBJECT.has((err as { code?: string }).code ?? '')) throw toPostgresError(err, { sql: statement, side: 'green' });
  }
  if (!foreignKey) return {};
  const m = /^ALTER TABLE (?:ONLY )?(.+?)\s+ADD CONSTRAINT (\S+) FOREIGN KEY/is.exec(sql);
  if (!m) return { validated: false };
  try {
    await green.query(`ALTER TABLE ${m[1]} VALIDATE CONSTRAINT ${m[2]}`);
    return { validated: true };
  } catch (err) {
    if ((err as { code?: string }).code === '23503') return { validated: false, violation: (err as Error).message };
    throw toPostgresError(err, { side: 'green' });
  }
}
