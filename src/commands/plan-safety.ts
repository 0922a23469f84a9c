// The safety part of `migrate plan`: lock-hazard lint findings on the pending migrations, the
// constraint pre-flight (per row class: constraint, table, rows that would fail, sample keys), the
// derived constraints that cannot be checked before the migrations run, and what each
// `DROP INDEX ... CASCADE` silently drops.

import path from 'node:path';
import { failingClasses, type FailingClass } from '../inplace/steps.ts';
import { findingLines, lintMigrations } from '../lint/index.ts';
import { pendingChecks } from '../lint/preflight.ts';
import type { Finding } from '../lint/rules.ts';
import type { CascadeDrop, DerivedCheck } from '../lint/constraints.ts';
import type { StepContext } from '../steps/step.ts';

/** What the safety section holds (also the `--json` shape). */
export interface SafetyReport {
  /** Lint findings on the pending migrations (and the queries file). */
  lint: Finding[];
  /** Row classes on blue that a migration would reject. */
  preflight: (FailingClass & { constraint: string })[];
  /** Derived constraints that cannot be checked today, with why. */
  unchecked: Pick<DerivedCheck, 'name' | 'constraint' | 'origin' | 'note'>[];
  /** Constraints dropped by `DROP INDEX ... CASCADE`. */
  cascades: CascadeDrop[];
}

/** Computes the safety report on blue, read-only. */
export async function safetyReport(ctx: StepContext, queries?: string): Promise<SafetyReport> {
  const fromConfig = ctx.config.raw.lint.queriesFile ? path.resolve(path.dirname(ctx.config.file), ctx.config.raw.lint.queriesFile) : undefined;
  const queriesFile = queries ?? fromConfig;
  const pending = await ctx.source.pending(ctx.blue);
  const { findings } = await lintMigrations(pending, { ignore: ctx.config.raw.lint.ignore, ...(queriesFile ? { queriesFile } : {}) });
  const { checks, cascades } = await pendingChecks(ctx, ctx.blue);
  const byName = new Map(checks.map((c) => [c.name, c.constraint]));
  const failing = await failingClasses(ctx);
  return {
    lint: findings,
    preflight: failing.map((f) => ({ ...f, constraint: byName.get(f.rule) ?? (f.rule.startsWith('fk-orphans:') ? `FOREIGN KEY ${f.rule.slice('fk-orphans:'.length)} (catalog)` : `configured rule ${f.rule}`) })),
    unchecked: checks.filter((c) => c.where === null).map((c) => ({ name: c.name, constraint: c.constraint, origin: c.origin, ...(c.note ? { note: c.note } : {}) })),
    cascades,
  };
}

/** The report as text lines. */
export function safetyLines(r: SafetyReport): string[] {
  const lines = [`lint: ${r.lint.length} finding(s) in the pending migrations`, ...findingLines(r.lint).map((l) => `  ${l}`)];
  lines.push(`constraint pre-flight: ${r.preflight.length} row class(es) would fail`);
  for (const p of r.preflight) {
    lines.push(`  - ${p.constraint}`, `      table ${p.table}: ${p.rows} row(s) would fail (${p.reason})`, `      sample keys: ${p.sample.map((k) => JSON.stringify(k)).join(' ')}`);
  }
  for (const u of r.unchecked) lines.push(`  (not checkable before the migrations run) ${u.constraint} at ${u.origin}: ${u.note ?? ''}`);
  for (const c of r.cascades) {
    lines.push(`  DROP INDEX ${c.index} CASCADE at ${c.origin} silently drops ${c.dropped.length} foreign key(s):`);
    for (const d of c.dropped) lines.push(`      ${d.name} on ${d.table}(${d.columns.join(', ')}): ${d.readdedAs ? `re-added later as ${d.readdedAs}` : 'NOT re-added by any later migration'}`);
  }
  return lines;
}
