// Constraint pre-flight: read the pending migrations' DDL and derive every constraint they add or
// tighten (foreign keys incl. composite, NOT NULL, UNIQUE / PRIMARY KEY, CHECK, casts of text to
// json/jsonb), with a detection query over today's schema for each, so `plan` can name the rows
// that would make a migration fail before anything runs. It also resolves what a
// `DROP INDEX ... CASCADE` silently drops (from the catalog) and whether a pending migration re-adds
// it or drops its table anyway.

import { checkSqlFragment } from '../config/sql-fragment.ts';
import type { Db } from '../db/connect.ts';
import { ident, qualified, tableKey, type TableRef } from '../db/sql.ts';
import type { Constraint, TypeCast, TypeName } from '@pgsql/types';
import { bodies, findNodes, names, nodeBody, relative, slice, tableOf, tokens, type ParsedFile, type ParsedStatement } from './parse.ts';

/** One constraint a pending migration adds or tightens, with its detection predicate. */
export interface DerivedCheck {
  /** Rule name (`ddl-<kind>:<what>`), also the quarantine rule. */
  name: string;
  /** Which kind of constraint. */
  kind: 'foreign-key' | 'not-null' | 'unique' | 'check' | 'json-cast';
  /** The constraint, for humans. */
  constraint: string;
  /** The table whose rows would fail. */
  table: TableRef;
  /** Predicate over alias `t` matching the failing rows today; null when it cannot be checked before the migration runs. */
  where: string | null;
  /** Why such a row fails. */
  reason: string;
  /** file:line of the statement. */
  origin: string;
  /** Why the check is partial or impossible, when it is. */
  note?: string;
}

/** What one `DROP INDEX ... CASCADE` removes, and whether a later migration puts it back. */
export interface CascadeDrop {
  /** The dropped index. */
  index: string;
  /** file:line. */
  origin: string;
  /** Foreign keys that depend on the index and vanish with it; `droppedBy`: file:line of a pending DROP TABLE that removes their table anyway. */
  dropped: { name: string; table: string; columns: string[]; readdedAs: string | null; droppedBy: string | null }[];
}

type Columns = Map<string, Map<string, string>>;

async function currentColumns(db: Db): Promise<Columns> {
  const { rows } = await db.query<{ s: string; t: string; c: string; type: string }>(
    `SELECT n.nspname AS s, c.relname AS t, a.attname AS c, format_type(a.atttypid, a.atttypmod) AS type
       FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
        AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT LIKE 'bluegreen%'`,
  );
  const out: Columns = new Map();
  for (const r of rows) {
    const key = `${r.s}.${r.t}`;
    if (!out.has(key)) out.set(key, new Map());
    out.get(key)!.set(r.c, r.type);
  }
  return out;
}

const isJsonType = (typeName: TypeName | undefined): boolean => ['json', 'jsonb'].includes(names(typeName?.names).at(-1) ?? '');

/** The text inside the parentheses that follow the first `keyword` token at or after `from`. */
function parenthesized(stmt: ParsedStatement, from: number, keyword: string): string | null {
  const toks = tokens(stmt.bytes);
  const k = toks.findIndex((t) => t.start >= from && t.text.toUpperCase() === keyword);
  if (k < 0 || toks[k + 1]?.text !== '(') return null;
  let depth = 0;
  for (let i = k + 1; i < toks.length; i++) {
    if (toks[i]!.text === '(') depth++;
    if (toks[i]!.text === ')' && --depth === 0) return slice(stmt, toks[k + 1]!.end, toks[i]!.start);
  }
  return null;
}

// Functions a derived JSON check may call as the migration wrote them: built-in, immutable, one value.
const PLAIN_FUNCTIONS = new Set(['coalesce', 'nullif', 'replace', 'concat', 'lower', 'upper', 'trim', 'btrim', 'ltrim', 'rtrim', 'regexp_replace', 'translate', 'substring', 'substr']);

/** The text of a cast's argument: `CAST(<arg> AS type)` or `<arg>::type` (a parenthesized arg whole). */
function castArgument(stmt: ParsedStatement, cast: TypeCast): string | null {
  const toks = tokens(stmt.bytes);
  // An absent location matches no token (NaN), as the arithmetic on it always did.
  const at = relative(stmt, cast.location ?? Number.NaN);
  const k = toks.findIndex((t) => t.start === at);
  if (k < 0) return null;
  if (toks[k]!.text.toUpperCase() === 'CAST' && toks[k + 1]?.text === '(') {
    let depth = 0;
    for (let i = k + 1; i < toks.length; i++) {
      if (toks[i]!.text === '(') depth++;
      else if (toks[i]!.text === ')') depth--;
      else if (depth === 1 && toks[i]!.text.toUpperCase() === 'AS') return slice(stmt, toks[k + 2]!.start, toks[i]!.start).trim();
    }
    return null;
  }
  if (toks[k]!.text !== '::' || toks[k - 1]?.text !== ')') return null;
  let depth = 0;
  for (let i = k - 1; i >= 0; i--) {
    if (toks[i]!.text === ')') depth++;
    else if (toks[i]!.text === '(' && --depth === 0) return slice(stmt, toks[i]!.start, toks[k]!.start).trim();
  }
  return null;
}

/** Derives the checks and cascades of the pending migrations against `db`'s current schema. */
export async function deriveChecks(db: Db, files: readonly ParsedFile[]): Promise<{ checks: DerivedCheck[]; cascades: CascadeDrop[] }> {
  const cols = await currentColumns(db);
  const has = (t: TableRef, c: string): boolean => cols.get(tableKey(t))?.has(c) ?? false;
  const checks: DerivedCheck[] = [];
  const cascades: CascadeDrop[] = [];
  const notValid = new Map<string, () => void>();
  const fkAdds: { table: string; columns: string[]; name: string }[] = [];
  const tableDrops = new Map<string, string>();

  for (const pf of files) {
    const created = new Set<string>();
    for (const s of pf.statements) {
      const origin = `${pf.file}:${s.line}`;
      if (s.kind === 'CreateStmt') created.add(tableKey(tableOf(s.body.relation)));
      if (s.kind === 'DropStmt' && s.body.removeType === 'OBJECT_TABLE') {
        for (const o of s.body.objects ?? []) {
          const parts = names(nodeBody(o, 'List')?.items);
          tableDrops.set(tableKey({ schema: parts.length > 1 ? parts[0]! : 'public', name: parts.at(-1) ?? '' }), origin);
        }
      }
      const existing = (t: TableRef): boolean => cols.has(tableKey(t)) && !created.has(tableKey(t));

      const foreignKey = (t: TableRef, con: Constraint): void => {
        const parent = tableOf(con.pktable);
        const child = names(con.fk_attrs);
        const parentCols = names(con.pk_attrs);
        const name = con.conname ?? `${t.name}_${child.join('_')}_fkey`;
        fkAdds.push({ table: tableKey(t), columns: child, name });
        const constraint = `FOREIGN KEY ${tableKey(t)}(${child.join(', ')}) REFERENCES ${tableKey(parent)}(${parentCols.join(', ') || 'primary key'})`;
        const base = { name: `ddl-fk:${name}`, kind: 'foreign-key' as const, constraint, table: t, reason: `points to no ${tableKey(parent)} row (foreign key ${name} added by ${origin})`, origin };
        if (!existing(parent)) return void checks.push({ ...base, where: null, note: `${tableKey(parent)} does not exist yet; the migrations create it` });
        const pairs = child.map((c, i) => [c, parentCols[i] ?? c] as const).filter(([c, p]) => has(t, c) && has(parent, p));
        if (!pairs.length || !parentCols.length) return void checks.push({ ...base, where: null, note: 'its columns are added by the migrations' });
        const skipped = child.filter((c) => !pairs.some(([k]) => k === c));
        const where = `${pairs.map(([c]) => `t.${ident(c)} IS NOT NULL`).join(' AND ')} AND NOT EXISTS (SELECT 1 FROM ${qualified(parent.schema, parent.name)} p WHERE ${pairs.map(([c, p]) => `p.${ident(p)} = t.${ident(c)}`).join(' AND ')})`;
        checks.push({ ...base, where, ...(skipped.length ? { note: `checked on (${pairs.map(([c]) => c).join(', ')}); ${skipped.join(', ')} added by the migrations` } : {}) });
      };

      const unique = (t: TableRef, keys: string[], name: string, primary: boolean): void => {
        const constraint = `${primary ? 'PRIMARY KEY' : 'UNIQUE'} ${tableKey(t)}(${keys.join(', ')})`;
        const base = { name: `ddl-unique:${name}`, kind: 'unique' as const, constraint, table: t, reason: `duplicates another row on (${keys.join(', ')}) (${name} added by ${origin}); the oldest copy stays`, origin };
        if (!keys.length || !keys.every((k) => has(t, k))) return void checks.push({ ...base, where: null, note: 'an expression or a column the migrations add' });
        const dup = `${keys.map((k) => `t.${ident(k)} IS NOT NULL`).join(' AND ')} AND EXISTS (SELECT 1 FROM ${qualified(t.schema, t.name)} o WHERE ${keys.map((k) => `o.${ident(k)} = t.${ident(k)}`).join(' AND ')} AND o.ctid < t.ctid)`;
        checks.push({ ...base, where: primary ? `(${dup}) OR ${keys.map((k) => `t.${ident(k)} IS NULL`).join(' OR ')}` : dup });
      };

      const jsonCast = (t: TableRef, exprs: { text: string; columns: string[] }[], line: string): void => {
        const ok = exprs.filter((e) => e.columns.length && e.columns.every((c) => has(t, c)) && !e.columns.every((c) => /json/.test(cols.get(tableKey(t))?.get(c) ?? '')));
        if (!ok.length) return;
        checks.push({
          name: `ddl-json:${t.name}:${line}`,
          kind: 'json-cast',
          constraint: `cast to json(b) of ${tableKey(t)}: ${ok.map((e) => e.text.replace(/\s+/g, ' ')).join('; ')}`,
          table: t,
          where: ok.map((e) => `NOT bluegreen_quarantine.is_json((${e.text})::text)`).join(' OR '),
          reason: `text that is not valid JSON; ${origin} casts it to json(b)`,
          origin,
        });
      };

      if (s.kind === 'AlterTableStmt' && s.body.objtype === 'OBJECT_TABLE') {
        const t = tableOf(s.body.relation);
        if (!existing(t)) continue;
        const jsonExprs: { text: string; columns: string[] }[] = [];
        for (const c of bodies(s.body.cmds, 'AlterTableCmd')) {
          const con = nodeBody(c.def, 'Constraint');
          if (c.subtype === 'AT_AddConstraint' && con) {
            const add = con.contype === 'CONSTR_FOREIGN' ? () => foreignKey(t, con) : con.contype === 'CONSTR_CHECK' ? () => checkConstraint(t, con, s, origin) : null;
            if (add && con.skip_validation && con.conname) notValid.set(`${tableKey(t)}.${con.conname}`, add);
            else if (add) add();
            if ((con.contype === 'CONSTR_PRIMARY' || con.contype === 'CONSTR_UNIQUE') && !con.indexname) unique(t, names(con.keys), con.conname ?? `${t.name}_${names(con.keys).join('_')}_key`, con.contype === 'CONSTR_PRIMARY');
          }
          if (c.subtype === 'AT_ValidateConstraint') notValid.get(`${tableKey(t)}.${c.name}`)?.();
          // SET NOT NULL and ALTER COLUMN TYPE always name their column; String() prints it as the templates do.
          const column = String(c.name);
          if (c.subtype === 'AT_SetNotNull') {
            const base = { name: `ddl-not-null:${t.name}.${column}`, kind: 'not-null' as const, constraint: `NOT NULL ${tableKey(t)}.${column}`, table: t, reason: `${column} is NULL; ${origin} sets it NOT NULL`, origin };
            checks.push(has(t, column) ? { ...base, where: `t.${ident(column)} IS NULL` } : { ...base, where: null, note: `${column} is added by the migrations (the backfill decides)` });
          }
          const colDef = nodeBody(c.def, 'ColumnDef');
          if (c.subtype === 'AT_AlterColumnType' && isJsonType(colDef?.typeName)) {
            const using = colDef?.raw_default;
            const usingCast = nodeBody(using, 'TypeCast');
            if (usingCast && isJsonType(usingCast.typeName)) {
              const castAt = relative(s, usingCast.location ?? Number.NaN);
              const kw = tokens(s.bytes).filter((k) => k.end <= castAt && k.text.toUpperCase() === 'USING').at(-1);
              if (kw) jsonExprs.push({ text: slice(s, kw.end, castAt).trim(), columns: findNodes(using, 'ColumnRef').map((r) => names(r.fields).at(-1) ?? '') });
            } else if (!using) jsonExprs.push({ text: ident(column), columns: [column] });
          }
        }
        jsonCast(t, jsonExprs, String(s.line));
      } else if (s.kind === 'IndexStmt' && s.body.unique) {
        const t = tableOf(s.body.relation);
        if (!existing(t)) continue;
        const keys = (s.body.indexParams ?? []).map((p) => nodeBody(p, 'IndexElem')?.name).filter((n) => typeof n === 'string');
        if (keys.length === (s.body.indexParams ?? []).length && !s.body.whereClause) unique(t, keys, s.body.idxname ?? `${t.name}_${keys.join('_')}_idx`, false);
      } else if (s.kind === 'DropStmt' && s.body.removeType === 'OBJECT_INDEX' && s.body.behavior === 'DROP_CASCADE') {
        for (const o of s.body.objects ?? []) {
          const parts = names(nodeBody(o, 'List')?.items);
          const index = `${parts.length > 1 ? parts[0] : 'public'}.${parts.at(-1)}`;
          cascades.push({ index, origin, dropped: await dependentForeignKeys(db, index) });
        }
      } else {
        // A cast to json(b) inside INSERT ... SELECT, UPDATE, CREATE TABLE AS: of a bare column, or of an
        // expression (COALESCE, CASE, string pasting, nested casts) whose columns all come from one table
        // that exists today. The expression runs as written, with its own qualifier bound to the row.
        const rvs = findNodes(s.body, 'RangeVar');
        const byTable = new Map<string, { t: TableRef; exprs: { text: string; columns: string[] }[] }>();
        for (const cast of findNodes(s.body, 'TypeCast')) {
          if (!isJsonType(cast.typeName)) continue;
          const refs = findNodes(cast.arg, 'ColumnRef').map((r) => names(r.fields));
          if (!refs.length || findNodes(cast.arg, 'SubLink').length || findNodes(cast.arg, 'FuncCall').some((f) => !PLAIN_FUNCTIONS.has(names(f.funcname).at(-1)?.toLowerCase() ?? ''))) continue;
          const qualifiers = new Set(refs.map((parts) => (parts.length > 1 ? parts.at(-2) : '')));
          if (qualifiers.size !== 1) continue;
          const q = [...qualifiers][0]!;
          const rv = q ? rvs.find((r) => (r.alias?.aliasname ?? r.relname) === q) : rvs.length === 1 ? rvs[0] : undefined;
          if (!rv) continue;
          const t = tableOf(rv);
          if (!existing(t)) continue;
          const columns = refs.map((parts) => parts.at(-1)!);
          const bare = nodeBody(cast.arg, 'ColumnRef') !== undefined;
          const text = bare ? `t.${ident(columns[0]!)}` : castArgument(s, cast);
          if (text === null) continue;
          const entry = byTable.get(tableKey(t)) ?? { t, exprs: [] };
          const expr = bare ? text : `(SELECT (${text}) FROM (SELECT t.*) AS ${ident(q || t.name)})`;
          if (!entry.exprs.some((e) => e.text === expr)) entry.exprs.push({ text: expr, columns });
          byTable.set(tableKey(t), entry);
        }
        for (const { t, exprs } of byTable.values()) jsonCast(t, exprs, String(s.line));
      }
    }
  }
  for (const c of cascades) {
    for (const d of c.dropped) {
      const again = fkAdds.find((a) => a.table === d.table && d.columns.every((col) => a.columns.includes(col)));
      d.readdedAs = again?.name ?? null;
      d.droppedBy = tableDrops.get(d.table) ?? null;
    }
  }
  return { checks: checks.map(plainPredicate), cascades };

  function checkConstraint(t: TableRef, con: Constraint, s: ParsedStatement, origin: string): void {
    const expr = parenthesized(s, relative(s, con.location ?? Number.NaN), 'CHECK');
    const name = con.conname ?? `${t.name}_check`;
    const base = { name: `ddl-check:${name}`, kind: 'check' as const, constraint: `CHECK ${tableKey(t)} (${expr ?? '?'})`, table: t, reason: `violates CHECK (${expr}) added by ${origin}`, origin };
    const refs = findNodes(con.raw_expr, 'ColumnRef').map((r) => names(r.fields).at(-1) ?? '');
    if (!expr || !refs.every((c) => has(t, c))) return void checks.push({ ...base, where: null, note: 'its columns are added by the migrations' });
    checks.push({ ...base, where: `(${expr}) IS FALSE` });
  }
}

/**
 * A check's SQL partly comes from the migration's text (a CHECK expression, a USING clause) and is
 * evaluated on blue; one that is not a single plain predicate (a comment, a side-effecting call) is
 * reported as not checkable instead of being run.
 */
function plainPredicate(c: DerivedCheck): DerivedCheck {
  if (c.where === null) return c;
  const verdict = checkSqlFragment(c.where, 'predicate');
  return verdict.ok ? c : { ...c, where: null, note: `its SQL, taken from the migration, is not one plain predicate: it ${verdict.problem}` };
}

/** Foreign keys that depend on an index (they go with it on CASCADE). */
async function dependentForeignKeys(db: Db, index: string): Promise<CascadeDrop['dropped']> {
  const [schema = 'public', name = ''] = index.split('.');
  const { rows } = await db.query<{ name: string; table: string; columns: string[] }>(
    `SELECT con.conname AS name, n.nspname || '.' || c.relname AS table,
            (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum) AS columns
       FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE con.contype = 'f' AND con.conindid = to_regclass($1) ORDER BY 1`,
    [qualified(schema, name)],
  );
  return rows.map((r) => ({ ...r, readdedAs: null, droppedBy: null }));
}
