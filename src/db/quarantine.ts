// Quarantine: rows are never deleted, they are moved. A rule's rows, and every row that depends on
// them through a foreign key (found in the catalog, recursively), move in one transaction into
// `bluegreen_quarantine.<table>` as jsonb with run id, rule and reason; `restore` puts them back.
// Where a value can be rewritten instead (a dangling reference set to NULL as the engine's own
// migration does, a list escaped so the migration converts it to what it meant), the row stays and
// the old value is recorded in `bluegreen_quarantine._rewrites` (a partial row: key and old value),
// restorable the same way until a migration retypes the column. A rule's statements are generated from
// the catalog when cleanup plans, so `plan` prints exactly what runs; the run id is not in their text.

import fs from 'node:fs';
import { listTables, type ForeignKey } from './catalog.ts';
import { query, withTransaction, type Db } from './connect.ts';
import { ident, literal, qualified, tableKey, type TableRef } from './sql.ts';
import { StateError } from '../errors.ts';

/** Schema holding quarantined rows on the database that was cleaned. */
export const QUARANTINE_SCHEMA = 'bluegreen_quarantine';
/** The type, as it is now, of column `column` of table `table` (both SQL text expressions; the table as `schema.table`). */
function columnType(table: string, column: string): string {
  return `(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = to_regclass(${table}::text) AND a.attname::text = ${column}::text AND a.attnum > 0 AND NOT a.attisdropped)`;
}
/** Tables of the quarantine schema that are ours, not per-source-table holds. */
const OWN_TABLES = ['_template', '_rewrites'];
const REWRITES = qualified(QUARANTINE_SCHEMA, '_rewrites');
/** The DDL that creates the quarantine schema, its id sequence, tables and helper functions (idempotent). */
export const QUARANTINE_SETUP_SQL = fs.readFileSync(new URL('../../sql/state/quarantine.sql', import.meta.url), 'utf8').trim();
/**
 * The setting the recorded statements read the run id from (`current_setting`): the run id is not in
 * their text, so what `plan` prints (no run yet) is exactly what the journal records.
 */
export const RUN_ID_SETTING = 'bluegreen.run_id';
const RUN_ID = `current_setting(${literal(RUN_ID_SETTING)})`;

/** Quarantine table name for a source table (`<table>` in public, `<schema>__<table>` elsewhere). */
export function quarantineTable(t: TableRef): string {
  return t.schema === 'public' ? t.name : `${t.schema}__${t.name}`;
}

/** Creates the quarantine schema, its id sequence and helper functions (idempotent). */
export async function installQuarantine(db: Db): Promise<void> {
  await query(db, QUARANTINE_SETUP_SQL);
}

/**
 * Runs `fn` inside a READ ONLY transaction with the quarantine helpers (e.g. is_json) available, and
 * rolls everything back. Rule SQL comes from the config and from migration DDL; whatever slipped past
 * the config check (a volatile user function, an operator with side effects) still cannot write.
 * The helpers are installed first because read-only cannot be lifted once set; going read-only
 * mid-transaction is allowed. Nothing may evaluate rule SQL on blue outside this.
 */
export async function withEphemeralHelpers<T>(db: Db, fn: () => Promise<T>): Promise<T> {
  return withTransaction(db, async () => {
    const { rows } = await query<{ ok: boolean }>(db, `SELECT to_regnamespace('${QUARANTINE_SCHEMA}') IS NOT NULL AS ok`);
    if (!rows[0]?.ok) await query(db, QUARANTINE_SETUP_SQL);
    await query(db, 'SET LOCAL transaction_read_only = on');
    return fn();
  }, { end: 'rollback' });
}

/** One table's share of a rule: the rows matching `where` (alias t) move to quarantine. */
export interface MoveStep {
  /** Table the rows leave. */
  table: TableRef;
  /** Predicate over alias `t`. */
  where: string;
  /** Why these rows move. */
  reason: string;
  /**
   * Tables (`schema.table`) whose rows referencing the moved ones stay, with the reference set to NULL
   * (recorded, restorable) instead of moving with them: what the engine's own migration does to them.
   */
  detach?: readonly string[];
}

/** A reference to moved rows that is set to NULL instead of moving its row (MoveStep.detach). */
export interface DetachedReference {
  /** The foreign key whose child column is set to NULL. */
  fk: ForeignKey;
  /** The move whose rows it references. */
  parent: MoveStep;
}

/** The moves of a rule, dependents first and the rule's own table last, and the references it detaches. */
export function planMoves(root: MoveStep, fks: readonly ForeignKey[]): { moves: MoveStep[]; detached: DetachedReference[] } {
  const moves: MoveStep[] = [];
  const detached: DetachedReference[] = [];
  const visit = (step: MoveStep, path: string[]): void => {
    for (const fk of fks) {
      if (tableKey(fk.parent) !== tableKey(step.table) || path.includes(tableKey(fk.child))) continue;
      if (root.detach?.includes(tableKey(fk.child))) {
        detached.push({ fk, parent: step });
        continue;
      }
      visit({ table: fk.child, where: referencing(fk, step), reason: `depends on a quarantined ${tableKey(fk.parent)} row (foreign key ${fk.name})` }, [...path, tableKey(fk.child)]);
    }
    moves.push(step);
  };
  visit(root, [tableKey(root.table)]);
  return { moves, detached };
}

/** Rows of `fk.child` (alias `t`) whose foreign key points at rows `step` takes. */
function referencing(fk: ForeignKey, step: MoveStep): string {
  const childCols = fk.childColumns.map((c) => `t.${ident(c)}`).join(', ');
  const parentCols = fk.parentColumns.map((c) => `t.${ident(c)}`).join(', ');
  return `(${childCols}) IN (SELECT ${parentCols} FROM ${qualified(step.table.schema, step.table.name)} t WHERE ${step.where})`;
}

/** Expands a rule into moves, dependents (by foreign key, recursively) first, the rule's own table last. */
export function expandDependents(root: MoveStep, fks: readonly ForeignKey[]): MoveStep[] {
  return planMoves(root, fks).moves;
}

/** A reference to moved rows that is set to NULL instead: a recorded rewrite of the child's column (throws when it cannot be restored). */
function detachStep(rule: string, { fk, parent }: DetachedReference, primaryKeys: ReadonlyMap<string, readonly string[]>): RewriteStep {
  const key = primaryKeys.get(tableKey(fk.child)) ?? [];
  if (fk.childColumns.length !== 1 || !key.length) {
    throw new StateError(`cannot detach ${tableKey(fk.child)} from rule ${rule}: only a one-column foreign key on a table with a primary key can be set to NULL and restored`, 'this is an engine declaration problem: report it');
  }
  const column = fk.childColumns[0]!;
  const where = referencing(fk, parent);
  return { table: fk.child, where, reason: `references a row rule ${rule} quarantines; kept with ${column} set to NULL, as the engine's own migration leaves it`, key: [...key], columns: [{ column, where, set: 'NULL' }] };
}

/** One statement of a recorded rule (cleanup rule or repair): what plan prints and what runs. */
export interface RuleStatement {
  /** The SQL; it reads the run id from {@link RUN_ID_SETTING}. */
  sql: string;
  /** What its row count is: rows moved out of `table`, values rewritten in it, or nothing counted (DDL, a detached reference). */
  kind: 'ddl' | 'detach' | 'move' | 'rewrite';
  /** The source table (`schema.table`). */
  table: string;
}

/**
 * The statements that move the rows of one rule and their dependents (by foreign key, recursively)
 * to quarantine: references the rule detaches first (set to NULL and recorded, while the rows they
 * point at are still there), then per move its quarantine table and the move, dependents first.
 * Pure: `fks` and `primaryKeys` come from the catalog of the database they will run on (or one with
 * the same schema). Throws StateError when a declared detach cannot be recorded.
 */
export function moveStatements(rule: string, root: MoveStep, fks: readonly ForeignKey[], primaryKeys: ReadonlyMap<string, readonly string[]>): RuleStatement[] {
  const { moves, detached } = planMoves(root, fks);
  const out: RuleStatement[] = detached.flatMap((d) => rewriteStatements(rule, detachStep(rule, d, primaryKeys)).map((s) => ({ ...s, kind: 'detach' as const })));
  for (const m of moves) {
    const hold = qualified(QUARANTINE_SCHEMA, quarantineTable(m.table));
    const table = tableKey(m.table);
    out.push({ kind: 'ddl', table, sql: `CREATE TABLE IF NOT EXISTS ${hold} (LIKE ${qualified(QUARANTINE_SCHEMA, '_template')} INCLUDING ALL)` });
    out.push({
      kind: 'move',
      table,
      sql: `WITH moved AS (DELETE FROM ${qualified(m.table.schema, m.table.name)} t WHERE ${m.where} RETURNING t.*)
INSERT INTO ${hold} (run_id, rule, reason, source_table, row)
SELECT ${RUN_ID}, ${literal(rule)}, ${literal(m.reason)}, ${literal(table)}, to_jsonb(moved) FROM moved`,
    });
  }
  return out;
}

/** A rule that keeps its rows and rewrites values instead of moving them. */
export interface RewriteStep extends MoveStep {
  /** Columns rewritten: per column, which rows (alias `t`) and the new value (an expression over `t`). */
  columns: readonly { column: string; where: string; set: string }[];
  /**
   * Primary key columns of the table (how restore finds the row again); null: read from the catalog
   * as the statement runs (a repair's table exists only once the migrations ran, after plan).
   */
  key: readonly string[] | null;
}

/**
 * The statements that rewrite each column on the rows its predicate selects and record each row's
 * key and old value (as a partial row) in `_rewrites`, one statement per column (a data-modifying
 * CTE always runs); each one's row count is the values it rewrote.
 */
export function rewriteStatements(rule: string, step: RewriteStep): RuleStatement[] {
  const table = qualified(step.table.schema, step.table.name);
  const source = literal(tableKey(step.table));
  const { key } = step;
  return step.columns.map((c) => {
    const partial = key
      ? `jsonb_build_object(${[...key, c.column].map((k) => `${literal(k)}, t.${ident(k)}`).join(', ')})`
      : `(SELECT jsonb_object_agg(k.col, to_jsonb(t) -> k.col) FROM unnest(pk.cols || ${literal(c.column)}::text) k(col))`;
    const keyCte = key
      ? ''
      : `pk AS (SELECT array_agg(a.attname::text ORDER BY x.n) AS cols FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY x(attnum, n)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = x.attnum WHERE i.indrelid = to_regclass(${literal(table)}) AND i.indisprimary),\n     `;
    const keyColumns = key ? `ARRAY[${key.map(literal).join(', ')}]::text[]` : 'pk.cols';
    const sql = `WITH ${keyCte}old AS (SELECT t.ctid AS c, ${partial} AS row FROM ${table} t${key ? '' : ', pk'} WHERE ${c.where}),
     changed AS (UPDATE ${table} t SET ${ident(c.column)} = ${c.set} FROM old WHERE t.ctid = old.c RETURNING 1)
INSERT INTO ${REWRITES} (run_id, rule, reason, source_table, column_name, key_columns, row, column_type)
SELECT ${RUN_ID}, ${literal(rule)}, ${literal(step.reason)}, ${source}, ${literal(c.column)}, ${keyColumns}, old.row, ${columnType(source, literal(c.column))} FROM old${key ? '' : ', pk'}`;
    return { kind: 'rewrite' as const, table: tableKey(step.table), sql };
  });
}

/** The figures of statements that ran: rows moved per source table, values rewritten. */
export interface RuleFigures {
  /** Rows moved to quarantine, by `schema.table`. */
  moved: Record<string, number>;
  /** Values rewritten in place (detached references not counted). */
  rewritten: number;
}

/** Runs a rule's statements, exactly as planned, in one transaction on `db` with the run id set for them. */
export async function runRuleStatements(db: Db, runId: string, statements: readonly RuleStatement[]): Promise<RuleFigures> {
  const figures: RuleFigures = { moved: {}, rewritten: 0 };
  await withTransaction(db, async () => {
    // is_local: the setting ends with this transaction.
    await query(db, 'SELECT set_config($1, $2, true)', [RUN_ID_SETTING, runId]);
    for (const s of statements) {
      const n = (await query(db, s.sql, [], { sql: s.sql })).rowCount ?? 0;
      if (s.kind === 'move') figures.moved[s.table] = (figures.moved[s.table] ?? 0) + n;
      if (s.kind === 'rewrite') figures.rewritten += n;
    }
  });
  return figures;
}

/** One group of values rewritten in place. */
export interface RewriteSummary {
  /** Source table. */
  table: string;
  /** Column rewritten. */
  column: string;
  /** Rule that rewrote it. */
  rule: string;
  /** Reason recorded. */
  reason: string;
  /** Rows rewritten. */
  rows: number;
}

async function hasRewrites(db: Db): Promise<boolean> {
  const { rows } = await query<{ ok: boolean }>(db, `SELECT to_regclass($1) IS NOT NULL AS ok`, [`${QUARANTINE_SCHEMA}._rewrites`]);
  return rows[0]?.ok ?? false;
}

/** Counts values rewritten in place, by table, column, rule and reason. */
export async function listRewrites(db: Db): Promise<RewriteSummary[]> {
  if (!(await hasRewrites(db))) return [];
  const { rows } = await query<{ source_table: string; column_name: string; rule: string; reason: string; n: string }>(
    db,
    `SELECT source_table, column_name, rule, reason, count(*) AS n FROM ${REWRITES} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4`,
  );
  return rows.map((r) => ({ table: r.source_table, column: r.column_name, rule: r.rule, reason: r.reason, rows: Number(r.n) }));
}

/** Columns holding rewritten values (`schema.table.column`): validation compares them as a migration's UPDATE would be compared. */
export async function rewrittenColumns(db: Db): Promise<Set<string>> {
  return new Set((await listRewrites(db)).map((r) => `${r.table}.${r.column}`));
}

/** Puts rewritten values back (all, or one rule's), inside the caller's transaction; returns rows per `table.column`. */
async function restoreRewrites(db: Db, rule: string | undefined): Promise<Record<string, number>> {
  const restored: Record<string, number> = {};
  const groups = (await listRewrites(db)).filter((g) => rule === undefined || g.rule === rule);
  const tables = new Map((await listTables(db)).map((t) => [tableKey(t), t]));
  for (const g of new Map(groups.map((x) => [`${x.table}.${x.column}`, x])).values()) {
    const t = tables.get(g.table);
    if (!t || !t.columns.includes(g.column) || !t.primaryKey.length) {
      throw new StateError(
        `cannot restore the rewritten ${g.table}.${g.column}: the table, the column or its primary key no longer exists (the migrations changed the table)`,
        'restore before running the migrations (on a green built with `migrate apply --restart`), or restore by hand from bluegreen_quarantine._rewrites',
      );
    }
    const retyped = await query<{ was: string; now: string | null }>(
      db,
      `SELECT DISTINCT r.column_type AS was, ${columnType('$1', '$2')} AS now FROM ${REWRITES} r
        WHERE r.source_table = $1 AND r.column_name = $2 AND r.column_type IS NOT NULL AND ($3::text IS NULL OR r.rule = $3)`,
      [g.table, g.column, rule ?? null],
    );
    const changed = retyped.rows.find((r) => r.was !== r.now);
    if (changed) {
      throw new StateError(
        `cannot restore the rewritten ${g.table}.${g.column}: it was ${changed.was} when cleanup rewrote it and is ${changed.now ?? 'gone'} now (the migrations converted it; the converted value already holds what the old text meant)`,
        'restore before running the migrations (on a green built with `migrate apply --restart`), or read the old values from bluegreen_quarantine._rewrites',
      );
    }
    const target = qualified(t.schema, t.name);
    const old = `(jsonb_populate_record(NULL::${target}, back.row))`;
    const keyMatch = `(${t.primaryKey.map((k) => `x.${ident(k)}`).join(', ')}) = (${t.primaryKey.map((k) => `${old}.${ident(k)}`).join(', ')})`;
    const res = await query(
      db,
      `WITH back AS (DELETE FROM ${REWRITES} r WHERE r.source_table = $2 AND r.column_name = $3 AND ($1::text IS NULL OR r.rule = $1) RETURNING r.row)
       UPDATE ${target} x SET ${ident(g.column)} = ${old}.${ident(g.column)} FROM back WHERE ${keyMatch}`,
      [rule ?? null, g.table, g.column],
    );
    restored[`${g.table}.${g.column}`] = res.rowCount ?? 0;
  }
  return restored;
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
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r' AND NOT (c.relname = ANY ($2::text[])) ORDER BY 1`,
    [QUARANTINE_SCHEMA, OWN_TABLES],
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

/** Puts quarantined rows back (all, or one rule's), parents before dependents, then rewritten values, in one transaction. */
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
  await withTransaction(db, async () => {
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
    // Values last: a rewritten row may itself have been moved by a later rule and is back only now.
    for (const [column, n] of Object.entries(await restoreRewrites(db, rule))) restored[`${column} (rewritten value)`] = n;
  });
  return restored;
}
