// Green carries a marker of its own (schema `bluegreen_green`) so the tool never overwrites a
// database it did not create: a non-empty green without our marker is refused, and `--restart`
// wipes only a green that carries it.

import { StateError } from '../errors.ts';
import { query, type Db } from './connect.ts';
import { ident } from './sql.ts';

/** Schemas the tool owns on green; never compared, never part of the copy. */
export const OWN_SCHEMAS = ['bluegreen', 'bluegreen_green', 'bluegreen_quarantine'] as const;

const SYSTEM_SCHEMA_FILTER = `n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'`;

/** SQL predicate on `n.nspname` selecting user schemas that are not ours. */
export const USER_SCHEMA_FILTER = `${SYSTEM_SCHEMA_FILTER} AND n.nspname NOT IN (${OWN_SCHEMAS.map((s) => `'${s}'`).join(', ')})`;

/** The marker row on green, when green was created by a run. */
export interface GreenMarker {
  run_id: string;
  snapshot_id: string | null;
  loaded_at: Date | null;
}

/** Reads green's marker; null when green has none. */
export async function readMarker(green: Db): Promise<GreenMarker | null> {
  const { rows: exists } = await query<{ ok: boolean }>(green, `SELECT to_regclass('bluegreen_green.copy') IS NOT NULL AS ok`);
  if (!exists[0]?.ok) return null;
  const { rows } = await query<GreenMarker>(green, 'SELECT run_id, snapshot_id, loaded_at FROM bluegreen_green.copy ORDER BY started_at DESC LIMIT 1');
  return rows[0] ?? null;
}

/** Number of user tables on green outside our schemas. */
export async function userTableCount(db: Db): Promise<number> {
  const { rows } = await query<{ n: string }>(
    db,
    `SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') AND ${USER_SCHEMA_FILTER}`,
  );
  return Number(rows[0]?.n ?? 0);
}

/** Refuses a green that holds foreign data; returns whether it carries our marker. */
export async function assertGreenUsable(green: Db): Promise<GreenMarker | null> {
  const marker = await readMarker(green);
  if (!marker && (await userTableCount(green)) > 0) {
    throw new StateError(
      'green is not empty and was not created by migrate',
      'point green.dsn at a new, empty database (CREATE DATABASE ...); migrate never overwrites a database it did not create',
    );
  }
  return marker;
}

/** Drops every user schema on green and our own green schemas, then recreates `public` (only after assertGreenUsable). */
export async function wipeGreen(green: Db): Promise<void> {
  const { rows } = await query<{ nspname: string }>(green, `SELECT n.nspname FROM pg_namespace n WHERE ${SYSTEM_SCHEMA_FILTER}`);
  await query(green, 'BEGIN');
  for (const r of rows) await query(green, `DROP SCHEMA ${ident(r.nspname)} CASCADE`);
  await query(green, 'CREATE SCHEMA public');
  await query(green, 'COMMIT');
}

/** Creates the marker schema and records the run that is loading green. */
export async function writeMarker(green: Db, runId: string, snapshotId: string | null): Promise<void> {
  await query(green, 'CREATE SCHEMA IF NOT EXISTS bluegreen_green');
  await query(
    green,
    `CREATE TABLE IF NOT EXISTS bluegreen_green.copy (run_id text PRIMARY KEY, snapshot_id text, started_at timestamptz NOT NULL DEFAULT clock_timestamp(), loaded_at timestamptz)`,
  );
  await query(green, `INSERT INTO bluegreen_green.copy (run_id, snapshot_id) VALUES ($1, $2) ON CONFLICT (run_id) DO UPDATE SET snapshot_id = EXCLUDED.snapshot_id`, [runId, snapshotId]);
}

/** Marks green's copy as fully loaded. */
export async function markLoaded(green: Db, runId: string): Promise<void> {
  await query(green, 'UPDATE bluegreen_green.copy SET loaded_at = clock_timestamp() WHERE run_id = $1', [runId]);
}
