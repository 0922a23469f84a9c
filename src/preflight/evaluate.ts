// The second pre-flight mechanism (the first is static: src/lint/constraints.ts): every data-carrying
// statement of the pending migrations is evaluated row by row, as written, on the database green
// will start from, under a per-row exception guard (sql/state/preflight.sql). Tables are seen as
// cleanup will leave them (rows a rule takes, with their dependents, are hidden), so a finding is a
// row class that would still make `apply` fail at migrate time. Functions the migrations create are
// created first inside the same transaction, which then turns READ ONLY and is always rolled back.

import fs from 'node:fs';
import path from 'node:path';
import { listForeignKeys, listTables } from '../db/catalog.ts';
import { query, type Db } from '../db/connect.ts';
import { expandDependents, installQuarantine } from '../db/quarantine.ts';
import { ident, literal, qualified, tableKey, type TableRef } from '../db/sql.ts';
import { parseMigration } from '../lint/parse.ts';
import { resolveRules } from '../steps/cleanup.ts';
import type { StepContext } from '../steps/step.ts';
import { buildProbes, createdFunctions, type Probe } from './probes.ts';

const PREFLIGHT_SQL = fs.readFileSync(new URL('../../sql/state/preflight.sql', import.meta.url), 'utf8');
/** Driving rows evaluated together before falling back to one row at a time. */
const CHUNK_ROWS = 500;

/** A configured cleanup rule, as the operator would paste it into `cleanup.rules`. */
export interface SuggestedRule {
  /** Rule name. */
  name: string;
  /** `schema.table`. */
  table: string;
  /** Predicate over alias `t`. */
  where: string;
  /** Why. */
  reason: string;
}

/** One row class that would make a migration fail, found by evaluating its own expressions. */
export interface RowFinding {
  /** Stable id: `preflight:<file>:<line>:<sqlstate>`. */
  id: string;
  /** file:line of the statement that would fail. */
  origin: string;
  /** Statement kind. */
  kind: Probe['kind'];
  /** The table whose rows fail (the statement's driving table). */
  table: string;
  /** SQLSTATE the migration would stop with. */
  sqlstate: string;
  /** Postgres' message. */
  message: string;
  /** Failing rows. */
  rows: number;
  /** Up to five primary keys (ctid when the table has none). */
  sample: Record<string, unknown>[];
  /** The expression that fails, when one alone does. */
  expression: string | null;
  /** A cleanup rule that takes exactly these rows. */
  suggestedRule: SuggestedRule;
}

/** A statement whose expressions cannot be evaluated before the migrations run (a table or column they create). */
export interface NotEvaluable {
  /** file:line. */
  origin: string;
  /** Statement kind. */
  kind: Probe['kind'];
  /** Why. */
  reason: string;
}

async function keysOf(db: Db, t: TableRef, pk: string[], ids: string[]): Promise<Record<string, unknown>[]> {
  const cols = pk.length ? pk.map((c) => `t.${ident(c)}`).join(', ') : 't.ctid::text AS ctid';
  const { rows } = await query<Record<string, unknown>>(db, `SELECT ${cols} FROM ${qualified(t.schema, t.name)} t WHERE t.ctid = ANY ($1::tid[]) ORDER BY 1`, [ids]);
  return rows;
}

/** A rule that names the failing rows by key: exact for this snapshot, and apply checks again on green. */
function ruleFor(f: Omit<RowFinding, 'suggestedRule'>, t: TableRef, pk: string[], keys: Record<string, unknown>[]): SuggestedRule {
  const lit = (v: unknown): string => (v === null ? 'NULL' : literal(typeof v === 'object' ? JSON.stringify(v) : String(v)));
  const where = pk.length
    ? `(${pk.map((c) => `t.${ident(c)}`).join(', ')}) IN (${keys.map((k) => `(${pk.map((c) => lit(k[c])).join(', ')})`).join(', ')})`
    : `t.ctid = ANY (ARRAY[${keys.map((k) => lit(k.ctid)).join(', ')}]::tid[])`;
  const file = path.basename(f.origin).replace(/\.up\.sql:/, '-').toLowerCase().replace(/[^a-z0-9]+/g, '-');
  return { name: `preflight-${file}-${f.sqlstate.toLowerCase()}`, table: tableKey(t), where, reason: `${f.message} (SQLSTATE ${f.sqlstate}) at ${f.origin}` };
}

/**
 * Evaluates the pending migrations' data statements on `db` (blue before the copy, green after it),
 * read-only and rolled back. Returns the row classes that would fail and the statements it could not evaluate.
 */
export async function rowPreflight(ctx: StepContext, db: Db): Promise<{ findings: RowFinding[]; notEvaluable: NotEvaluable[] }> {
  const files = [];
  for (const m of await ctx.source.pending(db)) files.push(await parseMigration(m));
  const moves = new Map<string, string[]>();
  const fks = await listForeignKeys(db);
  for (const rule of await resolveRules(ctx, db)) {
    // A rewrite keeps its rows (with values the migration converts) and their dependents.
    for (const m of rule.rewrite ? [rule] : expandDependents(rule, fks)) moves.set(tableKey(m.table), [...(moves.get(tableKey(m.table)) ?? []), m.where]);
  }
  const probes = buildProbes(files, (t) => (moves.get(tableKey(t)) ?? []).map((w) => `coalesce((${w}), false)`).join(' OR ') || null);
  if (!probes.length) return { findings: [], notEvaluable: [] };
  const pk = new Map((await listTables(db)).map((t) => [tableKey(t), t.primaryKey]));
  const findings: RowFinding[] = [];
  const notEvaluable: NotEvaluable[] = [];
  await query(db, 'BEGIN');
  try {
    await installQuarantine(db);
    await query(db, PREFLIGHT_SQL);
    // SQL-language bodies are checked at CREATE; theirs may name tables the migrations create first.
    await query(db, 'SET LOCAL check_function_bodies = off');
    for (const fn of createdFunctions(files)) {
      await query(db, 'SAVEPOINT fn');
      await db.query(fn).then(() => db.query('RELEASE SAVEPOINT fn'), () => db.query('ROLLBACK TO SAVEPOINT fn'));
    }
    await query(db, 'SET LOCAL transaction_read_only = on');
    for (const probe of probes) {
      const p = await compiling(db, probe);
      if ('reason' in p) {
        notEvaluable.push({ origin: probe.origin, kind: probe.kind, reason: p.reason });
        continue;
      }
      const driver = `SELECT ctid FROM ${qualified(p.table.schema, p.table.name)}`;
      const { rows } = await query<{ row_id: string; state: string; message: string }>(
        db,
        'SELECT row_id::text, state, message FROM bluegreen_quarantine.preflight_rows($1, $2, $3)',
        [driver, p.sql, CHUNK_ROWS],
      );
      const groups = new Map<string, { state: string; message: string; ids: string[] }>();
      for (const r of rows) {
        const g = groups.get(`${r.state} ${r.message}`) ?? { state: r.state, message: r.message, ids: [] };
        g.ids.push(r.row_id);
        groups.set(`${r.state} ${r.message}`, g);
      }
      const keyCols = pk.get(tableKey(p.table)) ?? [];
      for (const g of groups.values()) {
        const keys = await keysOf(db, p.table, keyCols, g.ids);
        const base = {
          id: `preflight:${path.basename(p.file)}:${p.line}:${g.state}`,
          origin: p.origin,
          kind: p.kind,
          table: tableKey(p.table),
          sqlstate: g.state,
          message: g.message,
          rows: g.ids.length,
          sample: keys.slice(0, 5),
          expression: await failingExpression(db, p, g.ids[0]!),
        };
        findings.push({ ...base, suggestedRule: ruleFor(base, p.table, keyCols, keys) });
      }
    }
  } finally {
    await db.query('ROLLBACK').catch(() => {});
  }
  return { findings, notEvaluable };
}

/** True when `sql` plans on `db` (inside a savepoint, so a failure leaves the transaction usable). */
async function plans(db: Db, sql: string): Promise<string | null> {
  await query(db, 'SAVEPOINT probe');
  try {
    await db.query({ text: `EXPLAIN ${sql}`, values: ['{}'] });
    await query(db, 'RELEASE SAVEPOINT probe');
    return null;
  } catch (err) {
    await query(db, 'ROLLBACK TO SAVEPOINT probe');
    return (err as Error).message;
  }
}

/**
 * The probe reduced to the expressions that plan today: an expression that names a column or table
 * an earlier migration adds (the new nid column) cannot be evaluated, but the statement's others can.
 */
async function compiling(db: Db, p: Probe): Promise<Probe | { reason: string }> {
  const whole = await plans(db, p.sql);
  if (whole === null) return p;
  const kept: string[] = [];
  for (const e of p.expressions) if ((await plans(db, `SELECT ${e} ${p.from}`)) === null) kept.push(e);
  if (!kept.length) return { reason: `${whole}: the statement reads what earlier migrations create` };
  return { ...p, expressions: kept, sql: `SELECT ${kept.join(', ')} ${p.from}` };
}

/** Which of the statement's expressions fails for one row (the first one, in statement order). */
async function failingExpression(db: Db, p: Probe, id: string): Promise<string | null> {
  if (p.expressions.length < 2) return p.expressions[0] ?? null;
  for (const e of p.expressions) {
    const { rows } = await query<{ state: string | null }>(db, 'SELECT state FROM bluegreen_quarantine.preflight_chunk($1, ARRAY[$2::tid])', [`SELECT ${e} ${p.from}`, id]);
    if (rows.length) return e.replace(/\s+/g, ' ');
  }
  return null;
}
