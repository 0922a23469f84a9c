// Lock-safe rewrites for in-place mode: the same change, taken in steps that never hold a long
// exclusive lock. Each rewrite keeps the statement's meaning (same index, same constraint, same
// rows updated); what cannot be rewritten safely runs as written. The rewrites are computed from the
// parse tree and sliced from the original text, so what the plan prints is what apply runs.

import type { TableRef } from '../db/sql.ts';
import { ident, qualified, tableKey } from '../db/sql.ts';
import type { AlterTableCmd, RangeVar } from '@pgsql/types';
import { alterCommands, bodies, names, nodeBody, relative, slice, tableOf, tokens, type ParsedFile, type ParsedStatement } from './parse.ts';

/** One unit of in-place work. */
export type Unit =
  | { mode: 'tx'; label: string; sql: string[] }
  | { mode: 'outside'; label: string; sql: string; table?: TableRef; indexName?: string }
  | { mode: 'batched'; label: string; table: TableRef; head: string; set: string };

/** A statement the rewriter changed, for the plan and the lint's "safe rewrite". */
export interface Rewrite {
  /** 1-based line of the original statement. */
  line: number;
  /** What was done, one sentence. */
  sentence: string;
  /** The units that replace it. */
  units: Unit[];
}

/** The in-place plan of one migration file. */
export interface MigrationPlan {
  /** Units in order. */
  units: Unit[];
  /** The statements rewritten. */
  rewrites: Rewrite[];
}

/** Tables created by the file itself: DDL on them is cheap (empty, invisible to others). */
export function tablesCreatedIn(pf: ParsedFile): Set<string> {
  const out = new Set<string>();
  for (const s of pf.statements) {
    if (s.kind === 'CreateStmt') out.add(tableKey(tableOf(s.body.relation)));
    if (s.kind === 'CreateTableAsStmt') out.add(tableKey(tableOf(s.body.into?.rel)));
  }
  return out;
}

/** Inserts ` CONCURRENTLY` after the first `INDEX`/`TABLE`/... keyword token of a statement. */
function addConcurrently(stmt: ParsedStatement, after: string[]): string | null {
  const t = tokens(stmt.bytes).find((k) => after.includes(k.text.toUpperCase()));
  if (!t) return null;
  return `${slice(stmt, tokens(stmt.bytes)[0]!.start, t.end)} CONCURRENTLY${slice(stmt, t.end)}`.trim();
}

/** A constraint name for the temporary NOT NULL check (<= 63 bytes, deterministic). */
export function notNullCheckName(table: string, column: string): string {
  const name = `${table}_${column}_not_null`;
  return name.length <= 63 ? name : `${name.slice(0, 50)}_${Buffer.from(name).toString('hex').slice(-8)}_nn`;
}

function rewriteAlter(stmt: ParsedStatement<'AlterTableStmt'>): Rewrite | null {
  const cmds = bodies(stmt.body.cmds, 'AlterTableCmd');
  const rewritable = (c: AlterTableCmd): boolean => {
    const con = nodeBody(c.def, 'Constraint');
    if (c.subtype === 'AT_SetNotNull') return true;
    return c.subtype === 'AT_AddConstraint' && !!con?.conname && (con.contype === 'CONSTR_FOREIGN' || con.contype === 'CONSTR_CHECK') && !con.skip_validation;
  };
  if (!cmds.some(rewritable)) return null;
  const split = alterCommands(stmt);
  if (!split) return null;
  const table = tableOf(stmt.body.relation);
  const units: Unit[] = [];
  let pending: string[] = [];
  const flush = (): void => {
    if (pending.length) units.push({ mode: 'tx', label: 'as written', sql: [`${split.prefix} ${pending.join(', ')}`] });
    pending = [];
  };
  const done: string[] = [];
  cmds.forEach((c, i) => {
    const text = split.commands[i]!;
    if (!rewritable(c)) return void pending.push(text);
    flush();
    if (c.subtype === 'AT_SetNotNull') {
      // SET NOT NULL always names its column; String() keeps the text as the template literals print it.
      const column = String(c.name);
      const check = notNullCheckName(table.name, column);
      units.push(
        { mode: 'tx', label: `check ${column} IS NOT NULL without a scan`, sql: [`${split.prefix} ADD CONSTRAINT ${ident(check)} CHECK (${ident(column)} IS NOT NULL) NOT VALID`] },
        { mode: 'tx', label: 'validate the check (no write lock)', sql: [`${split.prefix} VALIDATE CONSTRAINT ${ident(check)}`] },
        { mode: 'tx', label: 'SET NOT NULL using the validated check, then drop it', sql: [`${split.prefix} ALTER COLUMN ${ident(column)} SET NOT NULL, DROP CONSTRAINT ${ident(check)}`] },
      );
      done.push(`SET NOT NULL on ${column} via CHECK NOT VALID, VALIDATE, SET NOT NULL`);
    } else {
      // rewritable() let only a named constraint through.
      const name = nodeBody(c.def, 'Constraint')?.conname ?? '';
      units.push(
        { mode: 'tx', label: 'add the constraint NOT VALID (brief lock)', sql: [`${split.prefix} ${text} NOT VALID`] },
        { mode: 'tx', label: 'validate it (no write lock)', sql: [`${split.prefix} VALIDATE CONSTRAINT ${ident(name)}`] },
      );
      done.push(`${name} added NOT VALID, then VALIDATE`);
    }
  });
  flush();
  return { line: stmt.line, sentence: done.join('; '), units };
}

function rewriteUpdate(stmt: ParsedStatement<'UpdateStmt'>): Rewrite | null {
  const b = stmt.body;
  // RETURNING would be cut into the batches' SET part; WHERE, FROM and WITH change which rows a batch is.
  if (b.whereClause || b.fromClause?.length || b.withClause || b.returningClause) return null;
  const toks = tokens(stmt.bytes);
  // An absent location matches no token (NaN), as the arithmetic on it always did.
  const relEnd = relative(stmt, b.relation?.location ?? Number.NaN);
  const set = toks.find((t) => t.start > relEnd && t.text.toUpperCase() === 'SET');
  if (!set) return null;
  const table = tableOf(b.relation);
  const head = slice(stmt, toks[0]!.start, set.end).trim();
  const setText = slice(stmt, set.end).trim();
  return { line: stmt.line, sentence: `whole-table UPDATE of ${tableKey(table)} run in primary-key batches, one short transaction each`, units: [{ mode: 'batched', label: 'batched backfill', table, head, set: setText }] };
}

/** The lock-safe replacement of one statement, or null when it runs as written. */
export function rewriteStatement(stmt: ParsedStatement, created: Set<string>): Rewrite | null {
  const onNew = (rv: RangeVar | undefined): boolean => !!rv && created.has(tableKey(tableOf(rv)));
  switch (stmt.kind) {
    case 'IndexStmt': {
      const b = stmt.body;
      if (b.concurrent || onNew(b.relation)) return null;
      const sql = addConcurrently(stmt, ['INDEX']);
      if (!sql) return null;
      const table = tableOf(b.relation);
      return { line: stmt.line, sentence: `index ${b.idxname ?? '(unnamed)'} built CONCURRENTLY outside the transaction`, units: [{ mode: 'outside', label: 'concurrent index build', sql, table, ...(b.idxname ? { indexName: b.idxname } : {}) }] };
    }
    case 'DropStmt': {
      const b = stmt.body;
      if (b.removeType !== 'OBJECT_INDEX' || b.concurrent || b.behavior === 'DROP_CASCADE' || (b.objects ?? []).length !== 1) return null;
      const sql = addConcurrently(stmt, ['INDEX']);
      return sql ? { line: stmt.line, sentence: `index ${names(nodeBody(b.objects?.[0], 'List')?.items).join('.')} dropped CONCURRENTLY outside the transaction`, units: [{ mode: 'outside', label: 'concurrent index drop', sql }] } : null;
    }
    case 'ReindexStmt': {
      if (bodies(stmt.body.params, 'DefElem').some((p) => p.defname === 'concurrently')) return null;
      const sql = addConcurrently(stmt, ['INDEX', 'TABLE', 'SCHEMA', 'DATABASE', 'SYSTEM']);
      return sql ? { line: stmt.line, sentence: 'REINDEX CONCURRENTLY outside the transaction', units: [{ mode: 'outside', label: 'concurrent reindex', sql }] } : null;
    }
    case 'AlterTableStmt':
      return onNew(stmt.body.relation) || stmt.body.objtype !== 'OBJECT_TABLE' ? null : rewriteAlter(stmt);
    case 'UpdateStmt':
      return onNew(stmt.body.relation) ? null : rewriteUpdate(stmt);
    default:
      return null;
  }
}

/**
 * The units of one migration in order. Statements that stay as written keep the file's own
 * transaction grouping (consecutive ones share one transaction); `--no-rewrite` keeps every
 * statement as written. Files with their own BEGIN/COMMIT are never rewritten.
 */
export function planMigration(pf: ParsedFile, rewrite: boolean): MigrationPlan {
  const outside = pf.migration.transaction === 'none';
  const explicitTx = pf.statements.some((s) => s.kind === 'TransactionStmt');
  const created = tablesCreatedIn(pf);
  const units: Unit[] = [];
  const rewrites: Rewrite[] = [];
  for (const stmt of pf.statements) {
    const r = rewrite && !explicitTx ? rewriteStatement(stmt, created) : null;
    if (r) {
      rewrites.push(r);
      units.push(...r.units);
    } else if (outside) {
      units.push({ mode: 'outside', label: 'as written', sql: stmt.text });
    } else {
      const last = units[units.length - 1];
      if (last?.mode === 'tx' && last.label === 'as written') last.sql.push(stmt.text);
      else units.push({ mode: 'tx', label: 'as written', sql: [stmt.text] });
    }
  }
  return { units, rewrites };
}

/** The SQL a unit runs, for the plan (a batched unit as its repeated statement). */
export function unitSql(u: Unit, batchRows: number): string {
  if (u.mode === 'tx') return u.sql.join(';\n');
  if (u.mode === 'outside') return u.sql;
  return `${u.head} ${u.set} WHERE (<primary key>) IN (<next ${batchRows} keys after the last batch>), repeated until no row is left`;
}

/** One batch of a batched backfill: updates the next `rows` rows after the cursor, returns the count and the new cursor. */
export function batchSql(u: Extract<Unit, { mode: 'batched' }>, pk: string[], rows: number, withCursor: boolean): string {
  const cols = pk.map(ident).join(', ');
  const after = withCursor ? ` WHERE (${cols}) > (${pk.map((_, i) => `$${i + 1}`).join(', ')})` : '';
  const rel = qualified(u.table.schema, u.table.name);
  return `WITH batch AS (${u.head} ${u.set} WHERE (${cols}) IN (SELECT ${cols} FROM ${rel}${after} ORDER BY ${cols} LIMIT ${rows}) RETURNING ${cols})
SELECT count(*)::int AS n, (array_agg(json_build_array(${cols}) ORDER BY ${pk.map((c) => `${ident(c)} DESC`).join(', ')}))[1] AS last FROM batch`;
}
