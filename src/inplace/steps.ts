// The two steps of `apply --in-place`, which runs the pending migrations on blue itself:
//   constraints: the constraint pre-flight on blue. In place there is no copy to clean, and
//     quarantining production rows without a copy would silently change what the service sees, so
//     any failing row class REFUSES the run (exit 5) and is named, before anything is written;
//   migrate-in-place: every pending migration as lock-safe units (src/lint/rewrite.ts), one action
//     (journal unit) each, plus one action per migration that records it as applied.

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
import type { Journal } from '../state/journal.ts';
import type { Action, Step, StepContext } from '../steps/step.ts';
import { runUnit, type InPlaceSettings, type RetryStats } from './execute.ts';

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

/** Refuses (FindingsError, exit 5) when a row class on blue would make the migrations fail. */
async function refuseFailingRows(ctx: StepContext): Promise<void> {
  const failing = await failingClasses(ctx);
  if (!failing.length) return;
  const lines = failing.map((f) => `  - ${f.rule}: ${f.rows} row(s) of ${f.table} (${f.reason}); e.g. ${f.sample.map((k) => JSON.stringify(k)).join(' ')}`);
  throw new FindingsError(
    `${failing.length} row class(es) on blue would make the migrations fail:\n${lines.join('\n')}`,
    'fix or move these rows on blue yourself, or use the blue-green `migrate apply`, which quarantines them on green; in-place mode never removes production rows',
    { failing },
  );
}

/** The in-place pre-flight step. */
export const constraintsStep = {
  name: 'constraints',
  purpose: 'check on blue that no row breaks a constraint the migrations add (in place nothing is quarantined: failing rows refuse the run)',
  async validate(ctx) {
    if (ctx.source.kind === 'command') throw new UsageError('in-place mode needs SQL migrations (pop or postgres-migrations), not a command', 'run the blue-green `migrate apply`, or point migrations at the SQL folder');
    // Here, not in the action: apply validates before it installs its state on blue, so a refused
    // in-place run leaves blue exactly as it was (read-only, rolled back; test/constraints.test.ts).
    await refuseFailingRows(ctx);
  },
  async plan() {
    return [{ id: 'checks', sentence: 'every derived and configured constraint check finds no failing row on blue', side: 'blue' }];
  },
  async summarize() {
    return { failing: 0 };
  },
  async verify() {},
} satisfies Step;

/** Journal unit key of unit `i` of migration `id`. */
export const unitKey = (id: string, i: number): string => `${id}:${i}`;

/** The journal of the run an action executes in (the runner sets it before any action runs). */
function journalOf(ctx: StepContext): Journal {
  if (!ctx.journal) throw new StateError('an in-place unit ran without a run journal', 'run it through `migrate apply --in-place`');
  return ctx.journal;
}

/**
 * The action that runs unit `i` of `m` under lock_timeout with retries: the statements of `unitSql(u)`
 * as `plan` prints them (a batched backfill's text describes its batches; runUnit runs them).
 */
function unitAction(m: Migration, u: Unit, i: number, s: InPlaceSettings): Action {
  const key = unitKey(m.id, i);
  return {
    id: key,
    sentence: `${m.id}_${m.name}: ${u.label}${u.mode === 'outside' ? ' (outside a transaction)' : ''}`,
    side: 'blue',
    sql: unitSql(u, s.backfillBatchRows),
    facts: { mode: u.mode },
    execute: async ({ ctx, details }) => {
      ctx.progress(`${m.id}_${m.name}: ${u.label}`);
      const stats: RetryStats = { retries: 0 };
      const isolation = m.transaction === 'serializable' ? 'serializable' : 'default';
      try {
        const figures = await runUnit(u, { db: ctx.blue, journal: journalOf(ctx), key, isolation, settings: s, stats, note: (t) => ctx.progress(`${m.id}: ${t}`), done: details });
        return { ...figures, retries: stats.retries };
      } catch (err) {
        throw toPostgresError(err, { ...(m.file ? { file: m.file } : {}), side: 'blue' });
      }
    },
  };
}

/** Ids of the migrations whose tracking row an action of this step wrote, from their journalled detail. */
function recordedIds(details: ReadonlyMap<string, Record<string, unknown>>): Set<string> {
  return new Set([...details].filter(([, d]) => d.recorded === true).map(([key]) => key.slice(0, key.lastIndexOf(':'))));
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
      const { units, rewrites } = planMigration(await parseMigration(m), s.rewrite);
      units.forEach((u, i) => actions.push(unitAction(m, u, i, s)));
      actions.push({
        id: unitKey(m.id, units.length),
        sentence: `${m.id}_${m.name}: record it as applied`,
        side: 'blue',
        facts: { rewrites: rewrites.map((r) => `line ${r.line}: ${r.sentence}`) },
        // The tracking row alone, through the source (same table, same bookkeeping as a normal run).
        execute: async ({ ctx }) => {
          await ctx.source.apply(ctx.blue, m, { recordOnly: true });
          return { recorded: true };
        },
      });
    }
    return actions;
  },
  async open(ctx) {
    // runOutside sets lock_timeout for the session (CONCURRENTLY cannot run in a transaction): undo it.
    return { close: () => ctx.blue.query('RESET lock_timeout').then(() => undefined, () => undefined) };
  },
  async summarize(ctx, details) {
    const s = inPlaceSettings(ctx);
    const recorded = recordedIds(details);
    // In run order (the journal's rows have none), every migration this run recorded, earlier attempts included.
    const applied = (await ctx.source.all()).map((m) => m.id).filter((id) => recorded.has(id));
    const retries = [...details.values()].reduce((n, d) => n + (typeof d.retries === 'number' ? d.retries : 0), 0);
    return { applied, retries, rewrite: s.rewrite, lockTimeoutMs: s.lockTimeoutMs };
  },
  async verify(ctx) {
    const left = await ctx.source.pending(ctx.blue);
    if (left.length) throw new StateError(`migrations still pending on blue: ${left.map((m) => m.id).join(', ')}`, 'rerun `migrate apply --in-place --resume`');
  },
} satisfies Step;

/** The steps of an in-place run, in order. */
export const IN_PLACE_STEPS: readonly Step[] = [constraintsStep, migrateInPlace];
