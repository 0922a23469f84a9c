// Migrate: apply the new version's pending migrations on green, one journal unit each. Every file
// is parsed before anything runs, so a syntax error stops the run with no database changed.

import { query } from '../db/connect.ts';
import { readMarker } from '../db/green.ts';
import { StateError } from '../errors.ts';
import { checkAll } from '../sources/check.ts';
import { unitOnce, type Action, type Step } from './step.ts';

/** Journal unit id of a migration. */
export const migrationUnit = (id: string): string => `migration:${id}`;

/** The migrate step. */
export const migrate = {
  name: 'migrate',
  purpose: 'apply the pending migrations of the new version on green',
  async validate(ctx) {
    await checkAll(await ctx.source.all());
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
