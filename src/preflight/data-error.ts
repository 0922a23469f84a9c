// When a migration still fails on a data error during `apply` (the pre-flight could not see it: a
// table the migrations create, a value that only breaks after an earlier migration changed it), the
// error must say which rows, which class, and give a cleanup rule to paste. Postgres names rows only
// for some errors (23505 / 23503 DETAIL "Key (cols)=(vals)"); for the others we say so.

import { query, type Db } from '../db/connect.ts';
import { ident, literal, tableKey, type TableRef } from '../db/sql.ts';
import { PostgresError } from '../errors.ts';

/** The row classes by SQLSTATE class, for messages. */
const CLASS_NAMES: Record<string, string> = {
  '23505': 'duplicate key (unique violation)',
  '23503': 'reference to a missing row (foreign key violation)',
  '23502': 'NULL in a NOT NULL column',
  '23514': 'CHECK constraint violation',
  '22P02': 'text that does not convert (invalid input syntax)',
  '22001': 'value too long for its column',
};

const KEY_DETAIL = /^Key \((.+?)\)=\((.*)\) (?:already exists|is not present in table "([^"]+)")\.?$/s;

/** Splits `a, b` of a DETAIL key list (values never contain the sequence `, ` unescaped in our cases; best effort). */
const splitList = (s: string): string[] => s.split(', ').map((x) => x.trim());

/**
 * Turns a Postgres data error raised while applying a migration into one that names the rows (where
 * Postgres gives them), the class, and a ready-to-paste cleanup rule; other errors pass unchanged.
 */
export async function explainDataError(green: Db, err: unknown): Promise<unknown> {
  if (!(err instanceof PostgresError)) return err;
  const sqlstate = String(err.detail.sqlstate ?? '');
  if (!/^2[23]/.test(sqlstate)) return err;
  const pgErr = (err.cause ?? {}) as { detail?: string; table?: string; schema?: string; constraint?: string; column?: string };
  const klass = CLASS_NAMES[sqlstate] ?? `data error ${sqlstate}`;
  const m = KEY_DETAIL.exec(pgErr.detail ?? '');
  const table: TableRef | null = pgErr.table ? { schema: pgErr.schema ?? 'public', name: pgErr.table } : null;
  // The migration's transaction was rolled back: a table that exists now existed before the migration.
  const exists = table ? (await query<{ ok: boolean }>(green, 'SELECT to_regclass($1) IS NOT NULL AS ok', [`${ident(table.schema)}.${ident(table.name)}`]).catch(() => null))?.rows[0]?.ok === true : false;
  let rows = 'Postgres names no row for this error; `migrate plan` lists the failing rows of every statement it can evaluate (pre-flight)';
  let rule: Record<string, string> | null = null;
  if (m && table) {
    const cols = splitList(m[1]!);
    const vals = splitList(m[2]!);
    rows = `rows of ${tableKey(table)} with (${cols.join(', ')}) = (${vals.join(', ')})`;
    if (exists && cols.length === vals.length) {
      const match = cols.map((c, i) => `t.${ident(c)} = ${literal(vals[i]!)}`).join(' AND ');
      // A duplicate keeps its oldest physical copy; a dangling reference goes.
      const where = sqlstate === '23505' ? `${match} AND EXISTS (SELECT 1 FROM ${ident(table.schema)}.${ident(table.name)} o WHERE ${cols.map((c) => `o.${ident(c)} = t.${ident(c)}`).join(' AND ')} AND o.ctid < t.ctid)` : match;
      rule = { name: `data-error-${sqlstate}-${pgErr.constraint ?? table.name}`.toLowerCase().replace(/[^a-z0-9]+/g, '-'), table: tableKey(table), where, reason: `${klass} (${pgErr.constraint ?? 'constraint'})` };
    } else if (!exists) {
      rows += `; ${tableKey(table)} is created by the migrations, so the rule belongs on the table its rows come from`;
    }
  } else if (table && pgErr.column) {
    rows = `a row of ${tableKey(table)} (column ${pgErr.column}); Postgres names no key`;
  }
  const paste = rule ? `; ready to paste into cleanup.rules: ${JSON.stringify(rule)}` : '';
  return new PostgresError(`${err.message}\nclass: ${klass}; ${rows}`, `${err.hint}${paste}`, { ...err.detail, rowClass: klass, ...(rule ? { suggestedRule: rule } : {}) }, err.cause);
}
