// Post-migration repairs: the engine's fixes for values a migration misreads (see PostMigrationRepair).
// They run at the end of the migrate step, one journal unit each, through the same recorded rewrite
// cleanup uses, so the old values sit in `bluegreen_quarantine._rewrites` and `quarantine restore
// --rule repair:<name>` puts them back. The table and columns are checked on green after the last
// migration: a release whose migrations leave another shape gets a skip that says what was missing.
// The statement is fixed when migrate plans, before the migrations create the table, so it reads the
// table's primary key from the catalog as it runs; the quarantine schema it records into is installed
// by cleanup's first action, which always runs before migrate.

import { listTables } from '../db/catalog.ts';
import type { Db } from '../db/connect.ts';
import { rewriteStatements, runRuleStatements, type RuleStatement } from '../db/quarantine.ts';
import type { PostMigrationRepair } from './types.ts';

/** Journal unit (and `_rewrites` rule name) of a repair. */
export const repairUnit = (name: string): string => `repair:${name}`;

function splitTable(table: string): { schema: string; name: string } {
  const [schema = 'public', name = ''] = table.split('.');
  return { schema, name };
}

/** The recorded rewrite a repair runs: its SET on the rows of its WHERE, each old value kept in `_rewrites`. */
function repairStatements(r: PostMigrationRepair): RuleStatement[] {
  return rewriteStatements(repairUnit(r.name), { table: splitTable(r.table), where: r.where, reason: r.reason, columns: [{ column: r.column, where: r.where, set: r.set }], key: null });
}

/** The SQL a repair runs, as plan prints it and the journal records it. */
export function repairSql(r: PostMigrationRepair): string {
  return repairStatements(r).map((s) => s.sql).join(';\n');
}

/** What a repair did on green: values rewritten, or why it was skipped. */
export type RepairResult = { repaired: number } | { skipped: string };

/** Runs one repair on green (after the migrations), exactly {@link repairSql}; skipped when the table, a column or its primary key is missing. */
export async function runRepair(green: Db, runId: string, r: PostMigrationRepair): Promise<RepairResult> {
  const { schema, name } = splitTable(r.table);
  const table = (await listTables(green)).find((t) => t.schema === schema && t.name === name);
  if (!table) return { skipped: `${r.table} does not exist after the migrations` };
  const missing = r.requires.filter((c) => !table.columns.includes(c));
  if (missing.length) return { skipped: `${r.table} has no ${missing.join(', ')} after the migrations` };
  // Restore finds a row again by its primary key.
  if (!table.primaryKey.length) return { skipped: `${r.table} has no primary key` };
  return { repaired: (await runRuleStatements(green, runId, repairStatements(r))).rewritten };
}
