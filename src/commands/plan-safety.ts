// The safety part of `migrate plan`: lock-hazard lint findings on the pending migrations, the
// constraint pre-flight (per row class: constraint, table, rows that would fail, sample keys), the
// derived constraints that cannot be checked before the migrations run, and what each
// `DROP INDEX ... CASCADE` silently drops. A blue-green green serves no traffic while it migrates,
// so there its lock findings are counted in one line (listed with --lint-details); in place they
// are listed in full, as `migrate lint` does. `--json` always carries the full list.

import path from 'node:path';
import { failingClasses, type FailingClass } from '../inplace/steps.ts';
import { findingLines, lintMigrations } from '../lint/index.ts';
import { pendingChecks } from '../lint/preflight.ts';
import { LINT_RULES, type Finding, type LintRuleId } from '../lint/rules.ts';
import type { CascadeDrop, DerivedCheck } from '../lint/constraints.ts';
import type { StepContext } from '../steps/step.ts';

/** What the safety section holds (also the `--json` shape). */
export interface SafetyReport {
  /** Lint findings on the pending migrations (and the queries file), every one except a CASCADE the catalog shows loses nothing. */
  lint: Finding[];
  /** How many of them are lock findings, by rule, most frequent first. */
  lockCounts: Partial<Record<LintRuleId, number>>;
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
  const { findings } = await lintMigrations(pending, { ignore: ctx.config.raw.lint.ignore, batchRows: ctx.config.raw.inPlace.backfillBatchRows, ...(queriesFile ? { queriesFile } : {}) });
  const { checks, cascades } = await pendingChecks(ctx, ctx.blue);
  const byName = new Map(checks.map((c) => [c.name, c.constraint]));
  const failing = await failingClasses(ctx);
  // The catalog knows what the lint cannot: a CASCADE whose dependent foreign keys all sit on tables
  // the pending migrations drop anyway loses nothing silently, so it is no finding here.
  const harmless = new Set(cascades.filter((c) => c.dropped.every((d) => d.droppedBy)).map((c) => c.origin));
  const lint = findings.filter((f) => !(f.rule === 'drop-index-cascade' && harmless.has(`${f.file}:${f.line}`)));
  return {
    lint,
    lockCounts: lockCounts(lint),
    preflight: failing.map((f) => ({ ...f, constraint: byName.get(f.rule) ?? (f.rule.startsWith('fk-orphans:') ? `FOREIGN KEY ${f.rule.slice('fk-orphans:'.length)} (catalog)` : `configured rule ${f.rule}`) })),
    unchecked: checks.filter((c) => c.where === null).map((c) => ({ name: c.name, constraint: c.constraint, origin: c.origin, ...(c.note ? { note: c.note } : {}) })),
    cascades,
  };
}

/** Lock findings counted by rule, most frequent first (ties by rule id). */
function lockCounts(findings: readonly Finding[]): Partial<Record<LintRuleId, number>> {
  const counts = new Map<LintRuleId, number>();
  for (const f of findings) if (LINT_RULES[f.rule].lock) counts.set(f.rule, (counts.get(f.rule) ?? 0) + 1);
  return Object.fromEntries([...counts].sort(([a, x], [b, y]) => y - x || a.localeCompare(b)));
}

/** How `safetyLines` shows lock findings. */
export interface SafetyLineOptions {
  /** List every lock finding (in place, or --lint-details); otherwise one line counts them. */
  lockDetails: boolean;
}

function lintLines(r: SafetyReport, opts: SafetyLineOptions): string[] {
  if (opts.lockDetails) return [`lint: ${r.lint.length} finding(s) in the pending migrations`, ...findingLines(r.lint).map((l) => `  ${l}`)];
  const counts = Object.entries(r.lockCounts);
  const others = r.lint.filter((f) => !LINT_RULES[f.rule].lock);
  const lines: string[] = [];
  if (counts.length) {
    lines.push(`lint: lock findings on green (serves no traffic while it migrates): ${counts.map(([rule, n]) => `${n} ${rule}`).join(', ')}; run with --lint-details to list them`);
  }
  if (others.length || !counts.length) lines.push(`lint: ${others.length} finding(s) that matter on green too`, ...findingLines(others).map((l) => `  ${l}`));
  return lines;
}

function cascadeLines(c: CascadeDrop): string[] {
  const surviving = c.dropped.filter((d) => !d.droppedBy);
  const gone = c.dropped.filter((d) => d.droppedBy);
  const goneText = gone.map((d) => `${d.name} on ${d.table} (table dropped at ${d.droppedBy})`).join(', ');
  if (!c.dropped.length) return [`  DROP INDEX ${c.index} CASCADE at ${c.origin}: no foreign key depends on it today`];
  // Every dependent table is dropped by the pending migrations themselves: nothing is lost silently.
  if (!surviving.length) return [`  DROP INDEX ${c.index} CASCADE at ${c.origin}: its ${gone.length} dependent foreign key(s) belong to tables the pending migrations drop anyway: ${goneText}`];
  const lines = [`  DROP INDEX ${c.index} CASCADE at ${c.origin} silently drops ${surviving.length} foreign key(s) of tables that survive the migrations:`];
  for (const d of surviving) lines.push(`      ${d.name} on ${d.table}(${d.columns.join(', ')}): ${d.readdedAs ? `re-added later as ${d.readdedAs}` : 'NOT re-added by any later migration'}`);
  if (gone.length) lines.push(`      (also ${gone.length} on tables the pending migrations drop anyway: ${goneText})`);
  return lines;
}

/** The report as text lines. */
export function safetyLines(r: SafetyReport, opts: SafetyLineOptions): string[] {
  const lines = lintLines(r, opts);
  lines.push(`constraint pre-flight: ${r.preflight.length} row class(es) would fail`);
  for (const p of r.preflight) {
    lines.push(`  - ${p.constraint}`, `      table ${p.table}: ${p.rows} row(s) would fail (${p.reason})`, `      sample keys: ${p.sample.map((k) => JSON.stringify(k)).join(' ')}`);
  }
  for (const u of r.unchecked) lines.push(`  (not checkable before the migrations run) ${u.constraint} at ${u.origin}: ${u.note ?? ''}`);
  for (const c of r.cascades) lines.push(...cascadeLines(c));
  return lines;
}
