// `migrate plan`: every action `apply` would run, computed by the same step code, read-only. With an
// unfinished run on blue, it shows what `apply --resume` would still do.

import { migrateInPlace } from '../inplace/steps.ts';
import { planAll, STEPS } from '../runner.ts';
import { safetyLines, safetyReport } from './plan-safety.ts';
import { latestRun } from '../state/journal.ts';
import type { CommandResult } from './result.ts';
import { withContext, type CommonOptions } from './session.ts';

/** Runs `migrate plan`; a migrations folder `apply` would refuse (nothing pending, misnamed files) fails it the same way (exit 6). */
export async function planCommand(flags: CommonOptions & { inPlace?: boolean; rewrite?: boolean; queries?: string; allowNoMigrations?: boolean }): Promise<CommandResult> {
  return withContext({ config: flags.config, run: { rewrite: flags.rewrite !== false, allowNoMigrations: !!flags.allowNoMigrations } }, async (ctx) => {
    const last = await latestRun(ctx.blue);
    ctx.options.resume = last?.status === 'running' || last?.status === 'failed';
    // In place, the pre-flight's failing rows are shown below instead of stopping the plan.
    const steps = await planAll(ctx, flags.inPlace ? [migrateInPlace] : STEPS);
    const safety = await safetyReport(ctx, flags.queries);
    const lines: string[] = ctx.options.resume ? [`run ${last?.run_id} is unfinished: this is what \`migrate apply --resume\` would still check and run`] : [];
    // Said first: with --allow-no-migrations a folder with nothing pending passes, and apply only copies.
    const pureCopy = !flags.inPlace && (await ctx.source.pending(ctx.blue)).length === 0;
    if (pureCopy) lines.unshift(`no pending migration (${ctx.source.describe()}): --allow-no-migrations, so apply copies blue to green and migrates nothing`);
    for (const s of steps) {
      lines.push(`${s.step}: ${s.purpose}`);
      if (!s.actions.length) lines.push('  (nothing to do)');
      for (const a of s.actions) {
        lines.push(`  - [${a.id}] ${a.sentence}`);
        const sample = a.facts?.sample as unknown[] | undefined;
        if (sample?.length) lines.push(`      sample keys: ${sample.map((k) => JSON.stringify(k)).join(' ')}`);
        if (a.facts?.mode) lines.push(...String(a.sql ?? '').split('\n').map((l) => `      ${l}`));
      }
    }
    lines.push(...safetyLines(safety));
    return { exitCode: 0, json: { ok: true, exitCode: 0, resume: ctx.options.resume, ...(pureCopy ? { noPendingMigrations: true } : {}), ...(flags.inPlace ? { inPlace: true } : {}), steps, safety }, text: lines.join('\n') };
  });
}
