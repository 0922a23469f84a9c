// The seeds' deserialization trap: application code that reads `SELECT *` (or `t.*`) from a table
// whose columns a pending migration adds, drops, retypes or renames gets a different row shape the
// moment the migration commits. Given the application's queries, flag exactly those.

import { parse } from 'libpg-query';
import { tableKey } from '../db/sql.ts';
import { LINT_RULES, type Finding } from './rules.ts';
import type { Node } from '@pgsql/types';
import { bodies, findNodes, names, nodeBody, tableOf, type ParsedFile } from './parse.ts';

/** Tables whose row shape the migrations change, with what changes. */
export function changedTables(files: readonly ParsedFile[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const note = (table: string, what: string): void => void out.set(table, [...(out.get(table) ?? []), what]);
  for (const pf of files) {
    for (const s of pf.statements) {
      if (s.kind === 'AlterTableStmt' && s.body.objtype === 'OBJECT_TABLE') {
        for (const c of bodies(s.body.cmds, 'AlterTableCmd')) {
          const t = tableKey(tableOf(s.body.relation));
          if (c.subtype === 'AT_AddColumn') note(t, `adds ${nodeBody(c.def, 'ColumnDef')?.colname} (${pf.migration.id})`);
          if (c.subtype === 'AT_DropColumn') note(t, `drops ${c.name} (${pf.migration.id})`);
          if (c.subtype === 'AT_AlterColumnType') note(t, `retypes ${c.name} (${pf.migration.id})`);
        }
      }
      if (s.kind === 'RenameStmt' && s.body.renameType === 'OBJECT_COLUMN') note(tableKey(tableOf(s.body.relation)), `renames ${s.body.subname} to ${s.body.newname} (${pf.migration.id})`);
      if (s.kind === 'DropStmt' && s.body.removeType === 'OBJECT_TABLE') {
        for (const o of s.body.objects ?? []) {
          const parts = names(nodeBody(o, 'List')?.items);
          note(tableKey({ schema: parts.length > 1 ? parts[0]! : 'public', name: parts.at(-1)! }), `drops the table (${pf.migration.id})`);
        }
      }
    }
  }
  return out;
}

/** Splits a queries file into statements with their 1-based lines: parsed as SQL, else one per line. */
async function queriesOf(text: string): Promise<{ line: number; tree: Node | undefined; sql: string }[]> {
  const bytes = Buffer.from(text, 'utf8');
  try {
    const tree = await parse(text);
    return (tree.stmts ?? []).map((s) => {
      const start = s.stmt_location ?? 0;
      const sql = bytes.subarray(start, s.stmt_len ? start + s.stmt_len : bytes.length).toString('utf8');
      const lead = sql.length - sql.trimStart().length;
      return { line: bytes.subarray(0, start).toString('utf8').split('\n').length + sql.slice(0, lead).split('\n').length - 1, tree: s.stmt, sql: sql.trim() };
    });
  } catch {
    const out: { line: number; tree: Node | undefined; sql: string }[] = [];
    for (const [i, l] of text.split('\n').entries()) {
      if (!l.trim() || l.trim().startsWith('--')) continue;
      try {
        out.push(...((await parse(l)).stmts ?? []).map((s) => ({ line: i + 1, tree: s.stmt, sql: l.trim() })));
      } catch {
        // not SQL the parser knows (a template placeholder, a comment): nothing to check
      }
    }
    return out;
  }
}

/** `SELECT *` / `t.*` findings in the application's queries against the tables `changed` lists. */
export async function selectStarFindings(file: string, text: string, changed: Map<string, string[]>): Promise<Finding[]> {
  const findings: Finding[] = [];
  for (const q of await queriesOf(text)) {
    for (const sel of findNodes(q.tree, 'SelectStmt')) {
      const from = findNodes(sel.fromClause ?? [], 'RangeVar');
      const hits = new Set<string>();
      for (const rt of sel.targetList ?? []) {
        const fields = nodeBody(nodeBody(rt, 'ResTarget')?.val, 'ColumnRef')?.fields;
        if (!fields?.some((f) => nodeBody(f, 'A_Star') !== undefined)) continue;
        const alias = fields.length > 1 ? String(nodeBody(fields[fields.length - 2], 'String')?.sval) : null;
        for (const rv of from) if (alias === null || alias === (rv.alias?.aliasname ?? rv.relname)) hits.add(tableKey(tableOf(rv)));
      }
      for (const t of hits) {
        const what = changed.get(t);
        if (!what) continue;
        const shown = q.sql.replace(/\s+/g, ' ');
        findings.push({ rule: 'select-star', why: `${LINT_RULES['select-star'].why}: ${t} ${what.join(', ')}`, file, line: q.line, statement: shown.length > 100 ? `${shown.slice(0, 99)}…` : shown, rewrite: LINT_RULES['select-star'].fix });
      }
    }
  }
  return findings;
}
