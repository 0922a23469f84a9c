// Migrate: apply the new version's pending migrations on green, one journal unit each. Every file
// is parsed before anything runs, so a syntax error stops the run with no database changed, and a
// folder with nothing pending (empty, or the old version's) is refused then too: copying first and
// finding out in validate cost a whole copy and wrote to both sides.

import { query } from '../db/connect.ts';
import { readMarker } from '../db/green.ts';
import { SourceError, StateError } from '../errors.ts';
import { checkAll } from '../sources/check.ts';
import type { Migration } from '../sources/types.ts';
import { unitOnce, type Action, type Step, type StepContext } from './step.ts';

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
    return pending.map((m): Action => ({
      id: migrationUnit(m.id),
      sentence: `apply ${m.id}_${m.name}${m.transaction === 'none' ? ' (outside a transaction)' : m.transaction === 'serializable' ? ' (SERIALIZABLE)' : ''}`,
      side: 'green',
      sql: m.sql,
      facts: { file: m.file },
    }));
  },
  async run(ctx) {
    const done = await ctx.journal!.done('migrate');
    const pending = await ctx.source.pending(ctx.green);
    const applied: string[] = [];
    for (const m of pending) {
      const started = Date.now();
      await unitOnce(ctx, 'migrate', migrationUnit(m.id), async () => {
        ctx.progress(`applying ${m.id}_${m.name}`);
        await ctx.source.apply(ctx.green, m);
        return { file: m.file, ms: Date.now() - started };
      }, done);
      applied.push(m.id);
    }
    const { rows } = await query<{ v: string }>(ctx.green, `SELECT current_setting('server_version') AS v`);
    return { applied, greenServer: rows[0]?.v };
  },
  async verify(ctx) {
    const left = await ctx.source.pending(ctx.green);
    if (left.length) throw new StateError(`migrations still pending on green: ${left.map((m) => m.id).join(', ')}`, 'rerun `migrate apply --resume`');
  },
} satisfies Step;
