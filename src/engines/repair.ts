// Post-migration repairs: the engine's fixes for values a migration misreads (see PostMigrationRepair).
// They run at the end of the migrate step, one journal unit each, through the same recorded rewrite
// cleanup uses, so the old values sit in `bluegreen_quarantine._rewrites` and `quarantine restore
// --rule repair:<name>` puts them back. The table and columns are checked on green after the last
// migration: a release whose migrations leave another shape gets a skip that says what was missing.

import { listTables } from '../db/catalog.ts';
import type { Db } from '../db/connect.ts';
import { installQuarantine, rewriteRule } from '../db/quarantine.ts';
import { ident, qualified } from '../db/sql.ts';
import type { PostMigrationRepair } from './types.ts';

/** Journal unit (and `_rewrites` rule name) of a repair. */
export const repairUnit = (name: string): string => `repair:${name}`;

/** The statement a repair stands for, as plan prints it (the recorded rewrite runs exactly this SET and WHERE). */
export function repairSql(r: PostMigrationRepair): string {
  const [schema = 'public', name = ''] = r.table.split('.');
  return `UPDATE ${qualified(schema, name)} t SET ${ident(r.column)} = ${r.set}\n WHERE ${r.where}`;
}

/** What a repair did on green: values rewritten, or why it was skipped. */
export type RepairResult = { repaired: number } | { skipped: string };

/** Runs one repair on green (after the migrations); skipped when the table, a column or its primary key is missing. */
export async function runRepair(green: Db, runId: string, r: PostMigrationRepair): Promise<RepairResult> {
  const [schema = 'public', name = ''] = r.table.split('.');
  const table = (await listTables(green)).find((t) => t.schema === schema && t.name === name);
  if (!table) return { skipped: `${r.table} does not exist after the migrations` };
  const missing = r.requires.filter((c) => !table.columns.includes(c));
  if (missing.length) return { skipped: `${r.table} has no ${missing.join(', ')} after the migrations` };
  // Restore finds a row again by its primary key.
  if (!table.primaryKey.length) return { skipped: `${r.table} has no primary key` };
  await installQuarantine(green);
  const repaired = await rewriteRule(green, runId, repairUnit(r.name), {
    table,
    where: r.where,
    reason: r.reason,
    columns: [{ column: r.column, where: r.where, set: r.set }],
    key: table.primaryKey,
  });
  return { repaired };
}
