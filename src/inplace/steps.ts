// The two steps of `apply --in-place`, which runs the pending migrations on blue itself:
//   constraints: the constraint pre-flight on blue. In place there is no copy to clean, and
//     quarantining production rows without a copy would silently change what the service sees, so
//     any failing row class REFUSES the run (exit 5) and is named, before anything is written;
//   migrate-in-place: every pending migration as lock-safe units (src/lint/rewrite.ts), journalled.

import { listTables } from '../db/catalog.ts';
import { toPostgresError } from '../db/connect.ts';
import { withEphemeralHelpers } from '../db/quarantine.ts';
import { tableKey } from '../db/sql.ts';
import { FindingsError, StateError, UsageError } from '../errors.ts';
import { parseMigration } from '../lint/parse.ts';
import { planMigration, unitSql, type Unit } from '../lint/rewrite.ts';
import { checkAll } from '../sources/check.ts';
import type { Migration } from '../sources/types.ts';
import { countRule, resolveRules } from '../steps/cleanup.ts';
import type { Action, Step, StepContext } from '../steps/step.ts';
import { IN_PLACE_STEP, runUnit, type InPlaceSettings, type RetryStats } from './execute.ts';

/** One failing row class of the pre-flight. */
export interface FailingClass {
  /** Rule name. */
  rule: string;
  /** Table. */
  table: string;
  /** Rows that would fail. */
  rows: number;
  /** Up to five keys. */
  sample: Record<string, unknown>[];
  /** Why they fail. */
  reason: string;
}

/** Evaluates every cleanup rule (configured, FK orphans, DDL-derived) on blue, read-only. */
export async function failingClasses(ctx: StepContext): Promise<FailingClass[]> {
  const pk = new Map((await listTables(ctx.blue)).map((t) => [tableKey(t), t.primaryKey]));
  return withEphemeralHelpers(ctx.blue, async () => {
    const out: FailingClass[] = [];
    for (const rule of await resolveRules(ctx, ctx.blue)) {
      const found = await countRule(ctx.blue, rule, pk.get(tableKey(rule.table)) ?? []);
      if (found.rows) out.push({ rule: rule.name, table: tableKey(rule.table), rows: found.rows, sample: found.sample, reason: rule.reason });
    }
    return out;
  });
}

/** The in-place settings from the config plus the --no-rewrite flag. */
export function inPlaceSettings(ctx: StepContext): InPlaceSettings & { rewrite: boolean } {
  const c = ctx.config.raw.inPlace;
  return { lockTimeoutMs: c.lockTimeoutMs, retries: c.retries, backfillBatchRows: c.backfillBatchRows, rewrite: ctx.options.rewrite !== false };
}

/** The in-place pre-flight step. */
export const constraintsStep = {
  name: 'constraints',
  purpose: 'check on blue that no row breaks a constraint the migrations add (in place nothing is quarantined: failing rows refuse the run)',
  async validate(ctx) {
    if (ctx.source.kind === 'command') throw new UsageError('in-place mode needs SQL migrations (pop or postgres-migrations), not a command', 'run the blue-green `migrate apply`, or point migrations at the SQL folder');
    const failing = await failingClasses(ctx);
    if (failing.length) {
      const lines = failing.map((f) => `  - ${f.rule}: ${f.rows} row(s) of ${f.table} (${f.reason}); e.g. ${f.sample.map((k) => JSON.stringify(k)).join(' ')}`);
      throw new FindingsError(
        `${failing.length} row class(es) on blue would make the migrations fail:\n${lines.join('\n')}`,
        'fix or move these rows on blue yourself, or use the blue-green `migrate apply`, which quarantines them on green; in-place mode never removes production rows',
        { failing },
      );
    }
  },
  async plan() {
    return [{ id: 'checks', sentence: 'every derived and configured constraint check finds no failing row on blue', side: 'blue' }];
  },
  async run() {
    return { failing: 0 };
  },
  async verify() {},
} satisfies Step;

/** Journal unit key of unit `i` of migration `id`. */
export const unitKey = (id: string, i: number): string => `${id}:${i}`;

async function unitsOf(m: Migration, rewrite: boolean): Promise<Unit[]> {
  return planMigration(await parseMigration(m), rewrite).units;
}

/** The in-place migrate step. */
export const migrateInPlace = {
  name: 'migrate-in-place',
  purpose: 'apply the pending migrations on blue, lock-safe: rewritten where the meaning is kept, every statement under lock_timeout with retries',
  async validate(ctx) {
    await checkAll(await ctx.source.all());
  },
  async plan(ctx) {
    const s = inPlaceSettings(ctx);
    const actions: Action[] = [];
    for (const m of await ctx.source.pending(ctx.blue)) {
      const pf = await parseMigration(m);
      const { units, rewrites } = planMigration(pf, s.rewrite);
      units.forEach((u, i) =>
        actions.push({ id: unitKey(m.id, i), sentence: `${m.id}_${m.name}: ${u.label}${u.mode === 'outside' ? ' (outside a transaction)' : ''}`, side: 'blue', sql: unitSql(u, s.backfillBatchRows), facts: { mode: u.mode } }),
      );
      actions.push({ id: unitKey(m.id, units.length), sentence: `${m.id}_${m.name}: record it as applied`, side: 'blue', facts: { rewrites: rewrites.map((r) => `line ${r.line}: ${r.sentence}`) } });
    }
    return actions;
  },
  async run(ctx) {
    const s = inPlaceSettings(ctx);
    const journal = ctx.journal!;
    const stats: RetryStats = { retries: 0 };
    const applied: string[] = [];
    try {
      for (const m of await ctx.source.pending(ctx.blue)) {
        const done = await journal.done(IN_PLACE_STEP);
        const units = await unitsOf(m, s.rewrite);
        for (const [i, u] of units.entries()) {
          const key = unitKey(m.id, i);
          if (done.has(key)) continue;
          ctx.progress(`${m.id}_${m.name}: ${u.label}`);
          await journal.start(IN_PLACE_STEP, key);
          try {
            await runUnit(u, { db: ctx.blue, journal, key, isolation: m.transaction === 'serializable' ? 'serializable' : 'default', settings: s, stats, note: (t) => ctx.progress(`${m.id}: ${t}`), done, ...(ctx.hooks ? { hooks: ctx.hooks } : {}) });
          } catch (err) {
            throw toPostgresError(err, { ...(m.file ? { file: m.file } : {}), side: 'blue' });
          }
        }
        // The tracking row alone, through the source (same table, same bookkeeping as a normal run).
        await ctx.source.apply(ctx.blue, m, { recordOnly: true });
        await journal.finish(IN_PLACE_STEP, unitKey(m.id, units.length), { recorded: true });
        applied.push(m.id);
      }
    } finally {
      await ctx.blue.query('RESET lock_timeout').catch(() => {});
    }
    return { applied, retries: stats.retries, rewrite: s.rewrite, lockTimeoutMs: s.lockTimeoutMs };
  },
  async verify(ctx) {
    const left = await ctx.source.pending(ctx.blue);
    if (left.length) throw new StateError(`migrations still pending on blue: ${left.map((m) => m.id).join(', ')}`, 'rerun `migrate apply --in-place --resume`');
  },
} satisfies Step;

/** The steps of an in-place run, in order. */
export const IN_PLACE_STEPS: readonly Step[] = [constraintsStep, migrateInPlace];
