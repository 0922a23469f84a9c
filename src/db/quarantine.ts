// Quarantine: rows are never deleted, they are moved. A rule's rows, and every row that depends on
// them through a foreign key (found in the catalog, recursively), move in one transaction into
// `bluegreen_quarantine.<table>` as jsonb with run id, rule and reason; `restore` puts them back.

import fs from 'node:fs';
import { listForeignKeys, type ForeignKey } from './catalog.ts';
import { query, type Db } from './connect.ts';
import { ident, literal, qualified, tableKey, type TableRef } from './sql.ts';
import { StateError } from '../errors.ts';

/** Schema holding quarantined rows on the database that was cleaned. */
export const QUARANTINE_SCHEMA = 'bluegreen_quarantine';
const SETUP_SQL = fs.readFileSync(new URL('../../sql/state/quarantine.sql', import.meta.url), 'utf8');

/** Quarantine table name for a source table (`<table>` in public, `<schema>__<table>` elsewhere). */
export function quarantineTable(t: TableRef): string {
  return t.schema === 'public' ? t.name : `${t.schema}__${t.name}`;
}

/** Creates the quarantine schema, its id sequence and helper functions (idempotent). */
export async function installQuarantine(db: Db): Promise<void> {
  await query(db, SETUP_SQL);
}

/**
 * Runs `fn` inside a READ ONLY transaction with the quarantine helpers (e.g. is_json) available, and
 * rolls everything back. Rule SQL comes from the config and from migration DDL; whatever slipped past
 * the config check (a volatile user function, an operator with side effects) still cannot write.
 * The helpers are installed first because read-only cannot be lifted once set; going read-only
 * mid-transaction is allowed. Nothing may evaluate rule SQL on blue outside this.
 */
export async function withEphemeralHelpers<T>(db: Db, fn: () => Promise<T>): Promise<T> {
  await query(db, 'BEGIN');
  try {
    const { rows } = await query<{ ok: boolean }>(db, `SELECT to_regnamespace('${QUARANTINE_SCHEMA}') IS NOT NULL AS ok`);
    if (!rows[0]?.ok) await query(db, SETUP_SQL);
    await query(db, 'SET LOCAL transaction_read_only = on');
    return await fn();
  } finally {
    await db.query('ROLLBACK').catch(() => {});
  }
}

/** One table's share of a rule: the rows matching `where` (alias t) move to quarantine. */
export interface MoveStep {
  /** Table the rows leave. */
  table: TableRef;
  /** Predicate over alias `t`. */
  where: string;
  /** Why these rows move. */
  reason: string;
}

/** Expands a rule into moves, dependents (by foreign key, recursively) first, the rule's own table last. */
export function expandDependents(root: MoveStep, fks: readonly ForeignKey[]): MoveStep[] {
  const out: MoveStep[] = [];
  const visit = (step: MoveStep, path: string[]): void => {
    for (const fk of fks) {
      if (tableKey(fk.parent) !== tableKey(step.table) || path.includes(tableKey(fk.child))) continue;
      const childCols = fk.childColumns.map((c) => `t.${ident(c)}`).join(', ');
      const parentCols = fk.parentColumns.map((c) => `t.${ident(c)}`).join(', ');
      const child: MoveStep = {
        table: fk.child,
        where: `(${childCols}) IN (SELECT ${parentCols} FROM ${qualified(step.table.schema, step.table.name)} t WHERE ${step.where})`,
        reason: `depends on a quarantined ${tableKey(fk.parent)} row (foreign key ${fk.name})`,
      };
      visit(child, [...path, tableKey(fk.child)]);
    }
    out.push(step);
  };
  visit(root, [tableKey(root.table)]);
  return out;
}

/** Moves the rows of one rule (and their dependents) in one transaction; returns rows moved per table. */
export async function quarantineRule(db: Db, runId: string, rule: string, root: MoveStep): Promise<Record<string, number>> {
  const moves = expandDependents(root, await listForeignKeys(db));
  const moved: Record<string, number> = {};
  await query(db, 'BEGIN');
  try {
    for (const m of moves) {
      const qt = quarantineTable(m.table);
      await query(db, `CREATE TABLE IF NOT EXISTS ${qualified(QUARANTINE_SCHEMA, qt)} (LIKE ${qualified(QUARANTINE_SCHEMA, '_template')} INCLUDING ALL)`);
      const sql = `WITH moved AS (DELETE FROM ${qualified(m.table.schema, m.table.name)} t WHERE ${m.where} RETURNING t.*)
        INSERT INTO ${qualified(QUARANTINE_SCHEMA, qt)} (run_id, rule, reason, source_table, row)
        SELECT $1, $2, $3, $4, to_jsonb(moved) FROM moved`;
      const res = await query(db, sql, [runId, rule, m.reason, tableKey(m.table)], { sql });
      moved[tableKey(m.table)] = (moved[tableKey(m.table)] ?? 0) + (res.rowCount ?? 0);
    }
    await query(db, 'COMMIT');
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
  return moved;
}

/** A summary line of the quarantine. */
export interface QuarantineSummary {
  /** Source table. */
  table: string;
  /** Rule that moved the rows. */
  rule: string;
  /** Reason recorded. */
  reason: string;
  /** Rows held. */
  rows: number;
}

async function quarantineTables(db: Db): Promise<string[]> {
  const { rows } = await query<{ relname: string }>(
    db,
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> '_template' ORDER BY 1`,
    [QUARANTINE_SCHEMA],
  );
  return rows.map((r) => r.relname);
}

/** Counts quarantined rows by table, rule and reason. */
export async function listQuarantine(db: Db): Promise<QuarantineSummary[]> {
  const out: QuarantineSummary[] = [];
  for (const qt of await quarantineTables(db)) {
    const { rows } = await query<{ source_table: string; rule: string; reason: string; n: string }>(
      db,
      `SELECT source_table, rule, reason, count(*) AS n FROM ${qualified(QUARANTINE_SCHEMA, qt)} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`,
    );
    for (const r of rows) out.push({ table: r.source_table, rule: r.rule, reason: r.reason, rows: Number(r.n) });
  }
  return out;
}

/** Puts quarantined rows back (all, or one rule's), parents before dependents, in one transaction. */
export async function restoreQuarantine(db: Db, rule?: string): Promise<Record<string, number>> {
  const tables = await quarantineTables(db);
  const groups: { qt: string; source: string; firstId: number }[] = [];
  for (const qt of tables) {
    const { rows } = await query<{ source_table: string; first_id: string }>(
      db,
      `SELECT source_table, min(q_id) AS first_id FROM ${qualified(QUARANTINE_SCHEMA, qt)} WHERE $1::text IS NULL OR rule = $1 GROUP BY 1`,
      [rule ?? null],
    );
    for (const r of rows) groups.push({ qt, source: r.source_table, firstId: Number(r.first_id) });
  }
  // A rule moves dependents first, so the table whose rows moved last is the parent: restore it first.
  groups.sort((a, b) => b.firstId - a.firstId);
  const restored: Record<string, number> = {};
  await query(db, 'BEGIN');
  try {
    // Orphans (rows whose parent never existed) can only go back as they were with the foreign-key
    // triggers off for this transaction; that needs superuser. Without it, they fail with 23503 and
    // everything else still restores with `--rule`.
    await query(db, 'SAVEPOINT replica');
    await db.query('SET LOCAL session_replication_role = replica').catch(() => db.query('ROLLBACK TO SAVEPOINT replica'));
    for (const g of groups) {
      const [schema = 'public', name = ''] = g.source.split('.');
      const target = qualified(schema, name);
      const missing = await query<{ key: string }>(
        db,
        `SELECT DISTINCT k.key FROM ${qualified(QUARANTINE_SCHEMA, g.qt)} q, jsonb_object_keys(q.row) k(key)
          WHERE ($1::text IS NULL OR q.rule = $1)
            AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(${literal(target)}) AND a.attname = k.key AND a.attnum > 0 AND NOT a.attisdropped)`,
        [rule ?? null],
      );
      if (missing.rows.length) {
        throw new StateError(
          `cannot restore into ${g.source}: its columns ${missing.rows.map((r) => r.key).join(', ')} no longer exist (the migrations changed the table)`,
          'restore before running the migrations (on a green built with `migrate apply --restart`), or restore by hand from the jsonb in bluegreen_quarantine',
        );
      }
      const res = await query(
        db,
        `WITH back AS (DELETE FROM ${qualified(QUARANTINE_SCHEMA, g.qt)} q WHERE q.source_table = $2 AND ($1::text IS NULL OR q.rule = $1) RETURNING q.row)
         INSERT INTO ${target} SELECT (jsonb_populate_record(NULL::${target}, back.row)).* FROM back`,
        [rule ?? null, g.source],
      );
      restored[g.source] = (restored[g.source] ?? 0) + (res.rowCount ?? 0);
    }
    await query(db, 'COMMIT');
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
  return restored;
}
