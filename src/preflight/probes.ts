// Static derivation (src/lint/constraints.ts) cannot see everything: an expression inside a SQL
// function, a cast wrapped in three calls, a conversion whose failure depends on the data. So every
// data-carrying statement of the pending migrations (INSERT ... SELECT, UPDATE ... SET, ALTER COLUMN
// ... TYPE ... USING) is turned into a PROBE: a SELECT of the statement's OWN expressions, as written,
// over its own FROM/WHERE, with the driving table narrowed to `ctid = ANY($1)`. Run row set by row
// set on blue (src/preflight/evaluate.ts), it fails exactly where the migration would. libpg-query
// has no deparser, so probes are cut from the statement's text at parser-given token positions.

import type { Node, RangeVar } from '@pgsql/types';
import { alterCommands, bodies, findNodes, nodeBody, tableOf, tokens, type ParsedFile, type ParsedStatement, type Token } from '../lint/parse.ts';
import { ident, qualified, type TableRef } from '../db/sql.ts';

/** One probe: a SELECT that evaluates a statement's expressions for the driving rows in `$1`. */
export interface Probe {
  /** file:line of the statement. */
  origin: string;
  /** The migration file. */
  file: string;
  /** 1-based line of the statement. */
  line: number;
  /** What kind of statement it came from. */
  kind: 'insert-select' | 'update' | 'alter-type';
  /** The table whose rows drive the statement (one probe row per driving row, or none). */
  table: TableRef;
  /** The probe SQL; `$1` is a tid[] of driving rows. */
  sql: string;
  /** The expressions evaluated, for messages. */
  expressions: string[];
  /** The probe's FROM ... WHERE part (restricted), to evaluate one expression alone. */
  from: string;
}

/** Rows cleanup would move out of a table (predicate over alias `t`), or null: the probe does not see them. */
export type Hidden = (t: TableRef) => string | null;

/** A table as the probe sees it: optionally only the driving rows, never the rows cleanup takes. */
function view(t: TableRef, hidden: Hidden, driving: boolean): string | null {
  const h = hidden(t);
  const conds = [...(driving ? ['t.ctid = ANY ($1::tid[])'] : []), ...(h ? [`NOT coalesce((${h}), false)`] : [])];
  return conds.length ? `(SELECT * FROM ${qualified(t.schema, t.name)} t WHERE ${conds.join(' AND ')})` : null;
}

/** Tokens with their paren depth relative to the statement. */
function depths(toks: Token[]): number[] {
  let d = 0;
  return toks.map((t) => {
    if (t.text === ')') d--;
    const here = d;
    if (t.text === '(') d++;
    return here;
  });
}

const textOf = (s: ParsedStatement, from: number, to: number): string => s.bytes.subarray(from, to).toString('utf8');

/** The leftmost plain table of a FROM list (the one a LEFT JOIN chain is driven by). */
function drivingRangeVar(from: Node[] | undefined): RangeVar | null {
  let node = from?.[0];
  for (let join = nodeBody(node, 'JoinExpr'); join; join = nodeBody(node, 'JoinExpr')) node = join.larg;
  return nodeBody(node, 'RangeVar') ?? null;
}

/** The text between two offsets with each listed table reference replaced by its view (aliases kept). */
function rewritten(s: ParsedStatement, toks: Token[], rvs: RangeVar[], driving: RangeVar | null, hidden: Hidden, from: number, to: number): string | null {
  const edits: { start: number; end: number; text: string }[] = [];
  for (const rv of rvs) {
    const t = tableOf(rv);
    const v = view(t, hidden, rv === driving);
    if (!v) continue;
    // An absent location matches no token (NaN), as the arithmetic on it always did.
    const i = toks.findIndex((k) => k.start === (rv.location ?? Number.NaN) - s.baseByte);
    if (i < 0 || toks[i]!.start < from || toks[i]!.end > to) return null;
    let j = i;
    while (toks[j + 1]?.text === '.' && toks[j + 2]) j += 2;
    edits.push({ start: toks[i]!.start, end: toks[j]!.end, text: rv.alias ? v : `${v} AS ${ident(t.name)}` });
  }
  let out = '';
  let at = from;
  for (const e of edits.sort((a, b) => a.start - b.start)) {
    out += textOf(s, at, e.start) + e.text;
    at = e.end;
  }
  return out + textOf(s, at, to);
}

/** Splits `a, b(c, d), e` at top-level commas. */
function splitTopLevel(s: ParsedStatement, toks: Token[], d: number[], from: number, to: number, base: number): string[] {
  const cuts = toks.filter((t, k) => t.start >= from && t.end <= to && t.text === ',' && d[k] === base).map((t) => t.start);
  const bounds = [from, ...cuts.map((c) => c + 1)];
  return bounds.map((b, k) => textOf(s, b, cuts[k] ?? to).trim()).filter((x) => x !== '');
}

function insertSelect(s: ParsedStatement<'InsertStmt'>, hidden: Hidden): Probe | null {
  const sel = nodeBody(s.body.selectStmt, 'SelectStmt');
  if (!sel || sel.valuesLists || sel.op !== 'SETOP_NONE' || s.body.withClause || sel.withClause || !sel.fromClause) return null;
  const rv = drivingRangeVar(sel.fromClause);
  if (!rv) return null;
  const toks = tokens(s.bytes);
  const d = depths(toks);
  const k = toks.findIndex((t, n) => d[n] === 0 && t.text.toUpperCase() === 'SELECT');
  const f = toks.findIndex((t, n) => n > k && d[n] === 0 && t.text.toUpperCase() === 'FROM');
  if (k < 0 || f < 0) return null;
  const stop = toks.findIndex((t, n) => n > f && d[n] === 0 && (t.text.toUpperCase() === 'RETURNING' || (t.text.toUpperCase() === 'ON' && toks[n + 1]?.text.toUpperCase() === 'CONFLICT')));
  const end = stop >= 0 ? toks[stop]!.start : s.endByte;
  const rest = rewritten(s, toks, findNodes(sel.fromClause, 'RangeVar'), rv, hidden, toks[f]!.start, end);
  if (!rest) return null;
  const targets = textOf(s, toks[k]!.end, toks[f]!.start);
  return { origin: '', file: '', line: s.line, kind: 'insert-select', table: tableOf(rv), sql: `SELECT ${targets} ${rest}`, expressions: splitTopLevel(s, toks, d, toks[k]!.end, toks[f]!.start, 0), from: rest };
}

function update(s: ParsedStatement<'UpdateStmt'>, hidden: Hidden): Probe | null {
  const b = s.body;
  if (b.withClause || findMulti(b.targetList)) return null;
  const toks = tokens(s.bytes);
  const d = depths(toks);
  const set = toks.findIndex((t, n) => d[n] === 0 && t.text.toUpperCase() === 'SET');
  if (set < 0) return null;
  const next = toks.findIndex((t, n) => n > set && d[n] === 0 && ['FROM', 'WHERE', 'RETURNING'].includes(t.text.toUpperCase()));
  const setEnd = next >= 0 ? toks[next]!.start : s.endByte;
  const exprs = splitTopLevel(s, toks, d, toks[set]!.end, setEnd, 0).map((a) => a.replace(/^[^=]*=/, '').trim());
  const rowDependent = JSON.stringify(b.targetList ?? []).includes('"ColumnRef"');
  if (!rowDependent) return null;
  const ret = toks.findIndex((t, n) => n > set && d[n] === 0 && t.text.toUpperCase() === 'RETURNING');
  const end = ret >= 0 ? toks[ret]!.start : s.endByte;
  let rest = next >= 0 && next !== ret ? rewritten(s, toks, findNodes(b.fromClause ?? [], 'RangeVar'), null, hidden, toks[next]!.start, end) : '';
  if (rest === null) return null;
  if (/^from\b/i.test(rest)) rest = `, ${rest.slice(4)}`;
  const t = tableOf(b.relation);
  const from = `FROM ${view(t, hidden, true)} AS ${ident(b.relation?.alias?.aliasname ?? t.name)} ${rest}`;
  return { origin: '', file: '', line: s.line, kind: 'update', table: t, sql: `SELECT ${exprs.map((e) => `(${e})`).join(', ')} ${from}`, expressions: exprs, from };
}

const findMulti = (list: Node[] | undefined): boolean => JSON.stringify(list ?? []).includes('MultiAssignRef');

function alterType(s: ParsedStatement<'AlterTableStmt'>, hidden: Hidden): Probe | null {
  const b = s.body;
  if (b.objtype !== 'OBJECT_TABLE') return null;
  const all = bodies(b.cmds, 'AlterTableCmd');
  if (!all.some((c) => c.subtype === 'AT_AlterColumnType')) return null;
  const split = alterCommands(s);
  if (!split) return null;
  const exprs: string[] = [];
  for (const [i, c] of all.entries()) {
    if (c.subtype !== 'AT_AlterColumnType') continue;
    const m = /\bTYPE\s+([\s\S]*?)(?:\s+USING\s+([\s\S]*))?$/i.exec(split.commands[i] ?? '');
    if (!m) return null;
    // ALTER COLUMN TYPE always names its column.
    exprs.push(`CAST((${m[2] ?? ident(String(c.name))}) AS ${m[1]})`);
  }
  const t = tableOf(b.relation);
  const from = `FROM ${view(t, hidden, true)} AS ${ident(t.name)}`;
  return { origin: '', file: '', line: s.line, kind: 'alter-type', table: t, sql: `SELECT ${exprs.join(', ')} ${from}`, expressions: exprs, from };
}

/** Probes for every data-carrying statement of the files, in run order. */
export function buildProbes(files: readonly ParsedFile[], hidden: Hidden): Probe[] {
  const out: Probe[] = [];
  for (const pf of files) {
    for (const s of pf.statements) {
      const origin = `${pf.file}:${s.line}`;
      const p = s.kind === 'InsertStmt' ? insertSelect(s, hidden) : s.kind === 'UpdateStmt' ? update(s, hidden) : s.kind === 'AlterTableStmt' ? alterType(s, hidden) : null;
      if (p) out.push({ ...p, origin, file: pf.file });
    }
  }
  return out;
}

/** The text of every CREATE FUNCTION / PROCEDURE of the files: created (and rolled back) before probing, so probes can call them. */
export function createdFunctions(files: readonly ParsedFile[]): string[] {
  return files.flatMap((pf) => pf.statements.filter((s) => s.kind === 'CreateFunctionStmt').map((s) => s.text));
}
