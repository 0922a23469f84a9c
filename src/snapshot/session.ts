// The connections of a copy: the exporter that holds the snapshot open, worker connections on blue
// that import it, worker connections on green tuned for bulk loading, and post-data statements that
// tolerate a redo (an object a crashed attempt already committed counts as done).

import { connect, query, toPostgresError, type Db } from '../db/connect.ts';
import { literal } from '../db/sql.ts';
import { StateError } from '../errors.ts';
import { createSlotExport } from '../stream/slot.ts';
import type { Lane, StepContext } from '../steps/step.ts';
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

/** A lane of the copy: a green worker; its blue connection is imported into the snapshot when a unit first needs it. */
export async function openCopyLane(greenDsn: string): Promise<Lane> {
  return { green: await openGreenWorker(greenDsn), blue: null };
}

/** Ends a lane's connections. */
export async function closeCopyLane(lane: Lane): Promise<void> {
  await lane.blue?.end().catch(() => {});
  await lane.green.end().catch(() => {});
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

/** Journal unit (step snapshot) recording the stream's slot and the LSN it starts from. */
export const SLOT_RECORD = 'slot';

/**
 * Exports a new snapshot (with `stream.enabled`, the snapshot of a new logical replication slot);
 * refuses to replace a gone one mid-copy unless --accept-new-snapshot (never with a stream).
 */
export async function exportSnapshot(ctx: StepContext, copiedAny: boolean): Promise<Exporter> {
  const journal = ctx.journal!;
  const previous = (await query<{ snapshot_id: string | null }>(ctx.blue, 'SELECT snapshot_id FROM bluegreen.run WHERE run_id = $1', [journal.runId])).rows[0]?.snapshot_id ?? null;
  const stream = ctx.config.raw.stream.enabled;
  if (previous && copiedAny && !(await snapshotAlive(ctx.config.blueDsn, previous))) {
    // The stream starts at the slot's snapshot: tables copied from another one would miss or repeat writes.
    if (stream) {
      throw new StateError(
        `snapshot ${previous} of run ${journal.runId} is gone (its session ended) and part of the data was copied from it; the change stream starts exactly at that snapshot`,
        `run \`migrate apply --restart --config ${ctx.config.file}\` to copy again from a new slot and snapshot (--accept-new-snapshot cannot keep a stream lossless)`,
        { previousSnapshot: previous },
      );
    }
    if (!ctx.options.acceptNewSnapshot) {
      throw new StateError(
        `snapshot ${previous} of run ${journal.runId} is gone (its session ended) and part of the data was copied from it`,
        'rerun with --resume --accept-new-snapshot to copy the remaining tables from a new snapshot (tables may then differ by the writes in between; revocations are still replayed), or --restart for a fully consistent copy',
        { previousSnapshot: previous },
      );
    }
    ctx.progress(`snapshot ${previous} is gone; continuing with a new snapshot as --accept-new-snapshot allows`);
  }
  if (stream) {
    const exported = await createSlotExport(ctx.blue, ctx.config.blueDsn);
    await journal.updateRun({ snapshot_id: exported.snapshotId });
    // A record beside the step's actions: where the stream starts (status, the stream step, the guardrail).
    await journal.finish('snapshot', SLOT_RECORD, { slot: exported.slot, consistentPoint: exported.consistentPoint, snapshotId: exported.snapshotId });
    ctx.progress(`slot ${exported.slot} streams every write committed after ${exported.consistentPoint}; the copy reads its snapshot`);
    return exported;
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

/** Runs one post-data statement on green; an object a crashed attempt already committed counts as done. */
export async function runPostData(green: Db, sql: string): Promise<void> {
  try {
    await green.query(sql);
  } catch (err) {
    if (!DUPLICATE_OBJECT.has((err as { code?: string }).code ?? '')) throw toPostgresError(err, { sql, side: 'green' });
  }
}

/** The statements that add one foreign key: ADD ... NOT VALID, then VALIDATE (null when the constraint cannot be named). */
export interface ForeignKeyStatements {
  /** pg_dump's ADD CONSTRAINT ... FOREIGN KEY, NOT VALID. */
  add: string;
  /** ALTER TABLE ... VALIDATE CONSTRAINT. */
  validate: string | null;
}

/** Splits pg_dump's foreign key into a NOT VALID add and a VALIDATE, so a violation leaves it in place for cleanup. */
export function foreignKeyStatements(sql: string): ForeignKeyStatements {
  const add = /\bNOT VALID\s*$/i.test(sql) ? sql : `${sql} NOT VALID`;
  const m = /^ALTER TABLE (?:ONLY )?(.+?)\s+ADD CONSTRAINT (\S+) FOREIGN KEY/is.exec(sql);
  return { add, validate: m ? `ALTER TABLE ${m[1]} VALIDATE CONSTRAINT ${m[2]}` : null };
}

/** The SQL text of a foreign key's statements, as the plan shows it and the journal records it. */
export function foreignKeySql(fk: ForeignKeyStatements): string {
  return fk.validate ? `${fk.add};\n${fk.validate}` : fk.add;
}

/** Adds a foreign key NOT VALID, then validates it; a violation is reported, not thrown (cleanup deals with it). */
export async function addForeignKey(green: Db, fk: ForeignKeyStatements): Promise<{ validated: boolean; violation?: string }> {
  await runPostData(green, fk.add);
  if (!fk.validate) return { validated: false };
  try {
    await green.query(fk.validate);
    return { validated: true };
  } catch (err) {
    if ((err as { code?: string }).code === '23503') return { validated: false, violation: (err as Error).message };
    throw toPostgresError(err, { sql: fk.validate, side: 'green' });
  }
}
