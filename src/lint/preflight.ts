// Glue between the constraint derivation and cleanup: the pending migrations (on the database being
// inspected) are parsed once, their derived constraints become quarantine rules, and a derived rule
// never re-lists rows an earlier rule (configured or foreign-key orphan) on the same table takes.

import type { Db } from '../db/connect.ts';
import { tableKey } from '../db/sql.ts';
import type { ResolvedRule } from '../steps/cleanup.ts';
import type { StepContext } from '../steps/step.ts';
import { deriveChecks, type CascadeDrop, type DerivedCheck } from './constraints.ts';
import { parseMigration } from './parse.ts';

/** The checks and cascades of the migrations still pending on `db`. */
export async function pendingChecks(ctx: Pick<StepContext, 'source'>, db: Db): Promise<{ checks: DerivedCheck[]; cascades: CascadeDrop[] }> {
  const files = [];
  for (const m of await ctx.source.pending(db)) files.push(await parseMigration(m));
  return deriveChecks(db, files);
}

/** Quarantine rules for every derived constraint that can be checked today. */
export async function derivedRules(ctx: Pick<StepContext, 'source'>, db: Db): Promise<(ResolvedRule & { constraint: string; origin: string })[]> {
  const { checks } = await pendingChecks(ctx, db);
  const seen = new Set<string>();
  const out: (ResolvedRule & { constraint: string; origin: string })[] = [];
  for (const c of checks) {
    if (c.where === null || seen.has(c.name)) continue;
    seen.add(c.name);
    out.push({ name: c.name, table: c.table, where: c.where, reason: c.reason, constraint: c.constraint, origin: c.origin });
  }
  return out;
}

/** Each rule, narrowed to rows no earlier rule on the same table matches (in order, derived rules included). */
export function excludingEarlier<R extends ResolvedRule>(earlier: readonly ResolvedRule[], rules: readonly R[]): R[] {
  const before: ResolvedRule[] = [...earlier];
  return rules.map((r) => {
    const same = before.filter((e) => tableKey(e.table) === tableKey(r.table));
    before.push(r);
    if (!same.length) return r;
    return { ...r, where: `(${r.where}) AND NOT (${same.map((e) => `coalesce((${e.where}), false)`).join(' OR ')})` };
  });
}
