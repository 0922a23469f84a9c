// Migrate: apply the new version's pending migrations on green, one journal unit each. Every file
// is parsed before anything runs, so a syntax error stops the run with no database changed, and a
// folder with nothing pending (empty, or the old version's) is refused then too: copying first and
// finding out in validate cost a whole copy and wrote to both sides.

import crypto from 'node:crypto';
import path from 'node:path';
import { query } from '../db/connect.ts';
import { readMarker } from '../db/green.ts';
import { repairSql, repairUnit, runRepair, type RepairResult } from '../engines/repair.ts';
import { FindingsError, SourceError, StateError } from '../errors.ts';
import { explainDataError } from '../preflight/data-error.ts';
import { rowPreflight, type RowFinding } from '../preflight/evaluate.ts';
import { checkAll } from '../sources/check.ts';
import type { Migration } from '../sources/types.ts';
import type { Action, Step, StepContext, StepInputs } from './step.ts';

/** Journal unit id of a migration. */
export const migrationUnit = (id: string): string => `migration:${id}`;

/**
 * Refuses (exit 6) a source with nothing pending unless `--allow-no-migrations` asked for a pure
 * copy. Pending is measured on blue: its tracking table is what green starts from, and our runs
 * never change it, so the answer is the same on a resume.
 */
export async function assertSomethingPending(ctx: StepContext, all: Migration[]): Promise<void> {
  if (ctx.options.allowNoMigrations || (await ctx.source.pending(ctx.blue)).length > 0) return;
  const where = ctx.source.describe();
  throw new SourceError(
    all.length === 0 ? `no pending migration: no migration file found (${where})` : `no pending migration: ${all.length === 1 ? 'the one migration is' : `all ${all.length} migrations are`} already recorded on blue (${where})`,
    'point migrations.dir at the new version\'s migrations, or pass --allow-no-migrations to copy blue to green without migrating; nothing has been written',
    { migrations: all.length, pending: 0 },
  );
}

/** The refusal of row classes that would make the migrations fail: every one listed, with the rules that take them. */
function refusal(ctx: StepContext, refused: readonly RowFinding[]): FindingsError {
  return new FindingsError(
    `${refused.length} row class(es) on green would make the migrations fail; nothing was migrated:\n${refused.map((f) => `  - ${f.origin}: ${f.rows} ${f.table} row(s), ${f.sqlstate} ${f.message}; e.g. ${f.sample.map((k) => JSON.stringify(k)).join(' ')}`).join('\n')}`,
    `add a cleanup rule for each class to the config (ready to paste: ${JSON.stringify(refused.map((f) => f.suggestedRule))}), then run \`migrate apply --resume --config ${ctx.config.file}\``,
    { findings: refused },
  );
}

/** The migrate step. */
export const migrate = {
  name: 'migrate',
  purpose: 'apply the pending migrations of the new version on green',
  async validate(ctx) {
    const all = await ctx.source.all();
    await checkAll(all);
    await assertSomethingPending(ctx, all);
  },
  async plan(ctx) {
    // Before the copy, blue's tracking table is what green will have.
    const marker = await readMarker(ctx.green);
    const db = marker?.loaded_at ? ctx.green : ctx.blue;
    const pending = await ctx.source.pending(db);
    // Row classes no cleanup rule takes that would still fail a migration: listed first, one action
    // each (callers find them by the `preflight:` id prefix); the first refuses them all, so nothing migrates.
    const { findings, notEvaluable } = await rowPreflight(ctx, db);
    const refusals = findings.map((f): Action => ({
      id: f.id,
      sentence: `REFUSE: ${f.rows} ${f.table} row(s) would fail ${f.origin} with ${f.sqlstate} (${f.message})${f.expression ? ` in ${f.expression}` : ''}; no cleanup rule takes them`,
      side: 'green',
      facts: { ...f },
      execute: async ({ ctx: c }) => {
        throw refusal(c, findings);
      },
    }));
    // The engine's fixes for values the migrations misread run last; whether their table exists is known only then.
    const repairs = ctx.config.engine.repairs.map((r): Action => ({
      id: repairUnit(r.name),
      sentence: `after the migrations, repair ${r.table}.${r.column}: ${r.reason} (old values kept in bluegreen_quarantine._rewrites; skipped if the table or a column is missing)`,
      side: 'green',
      sql: repairSql(r),
      facts: { table: r.table, column: r.column, requires: r.requires },
      execute: async ({ ctx: c, lane }) => {
        const result = await runRepair(lane.green, c.journal!.runId, r);
        c.progress(`${repairUnit(r.name)}: ${'skipped' in result ? `skipped (${result.skipped})` : `${result.repaired} ${r.table}.${r.column} value(s) repaired; old values in bluegreen_quarantine._rewrites`}`);
        return { ...result };
      },
    }));
    return [...refusals, ...pending.map((m): Action => {
      // Statements the row pre-flight could not evaluate (they read what earlier migrations create), per file.
      const blind = notEvaluable.filter((n) => m.file !== null && n.origin.startsWith(`${m.file}:`));
      return {
        id: migrationUnit(m.id),
        sentence: `apply ${m.id}_${m.name}${m.transaction === 'none' ? ' (outside a transaction)' : m.transaction === 'serializable' ? ' (SERIALIZABLE)' : ''}`,
        side: 'green',
        sql: m.sql,
        facts: { file: m.file, ...(blind.length ? { notEvaluable: blind } : {}) },
        // The source runs m.sql (this action's sql) and its tracking row, as one unit.
        execute: async ({ ctx: c, lane }) => {
          c.progress(`applying ${m.id}_${m.name}`);
          await c.source.apply(lane.green, m).catch(async (err: unknown) => Promise.reject(await explainDataError(lane.green, err)));
          return { file: m.file };
        },
      };
    }), ...repairs];
  },
  async summarize(ctx, details) {
    const applied = (await ctx.source.all()).filter((m) => details.has(migrationUnit(m.id))).map((m) => m.id);
    const repaired: Record<string, RepairResult> = {};
    for (const r of ctx.config.engine.repairs) {
      const d = details.get(repairUnit(r.name));
      if (d) repaired[r.name] = 'skipped' in d ? { skipped: String(d.skipped) } : { repaired: Number(d.repaired) };
    }
    const { rows } = await query<{ v: string }>(ctx.green, `SELECT current_setting('server_version') AS v`);
    return { applied, ...(ctx.config.engine.repairs.length ? { repaired } : {}), greenServer: rows[0]?.v };
  },
  async inputs(ctx): Promise<StepInputs> {
    // Pending on blue (green started from its tracking table). A file green already ran cannot be
    // un-run: changing or removing it refuses the resume; a new file runs only after every applied one.
    const units = new Map((await ctx.source.pending(ctx.blue)).map((m) => {
      const file = m.file ? path.basename(m.file) : m.name;
      const sha256 = crypto.createHash('sha256').update(m.sql).digest('hex');
      return [migrationUnit(m.id), { value: { file, sha256 }, summary: `${file} sha256 ${sha256.slice(0, 12)}`, whenChanged: 'refuse' as const }];
    }));
    const hint = `put the migration files back as green ran them (and any change in a new file that sorts last), or run \`migrate apply --restart --config ${ctx.config.file}\` to copy again and run the folder as it is now`;
    return { units, whenAdded: 'refuse-before-finished', whenRemoved: 'refuse', refuseHint: hint };
  },
  async verify(ctx) {
    const left = await ctx.source.pending(ctx.green);
    if (left.length) throw new StateError(`migrations still pending on green: ${left.map((m) => m.id).join(', ')}`, 'rerun `migrate apply --resume`');
  },
} satisfies Step;
