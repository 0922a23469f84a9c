// `migrate plan`: every action `apply` would run, computed by the same step code, read-only. With an
// unfinished run on blue, it shows what `apply --resume` would still do: per step done, remaining,
// re-opened (its inputs changed) or refused, judged by the runner's own resumeState. With
// `--through cutover` it also lists the steps `migrate cutover` runs after the apply.

import { migrateInPlace } from '../inplace/steps.ts';
import type { ResolvedConfig } from '../config/load.ts';
import { CUTOVER_STEPS } from '../cutover/phase.ts';
import { cutoverWiring } from '../cutover/wiring.ts';
import { applySteps, planAll, type ReportedAction } from '../runner.ts';
import { remainingUnits, resumeState, type ResumeStatus } from '../state/resume.ts';
import { safetyLines, safetyReport } from './plan-safety.ts';
import { Journal, latestRun } from '../state/journal.ts';
import { accessChangeLines, accessChangesOf } from '../engines/access.ts';
import type { CommandResult } from './result.ts';
import { withContext, type CommonOptions } from './session.ts';

/** Runs `migrate plan`; a migrations folder `apply` would refuse (nothing pending, misnamed files) fails it the same way (exit 6). */
export async function planCommand(flags: Omit<CommonOptions, 'config'> & { config: string | ResolvedConfig; inPlace?: boolean; rewrite?: boolean; queries?: string; allowNoMigrations?: boolean; lintDetails?: boolean; through?: 'apply' | 'cutover' }): Promise<CommandResult> {
  return withContext({ config: flags.config, run: { rewrite: flags.rewrite !== false, allowNoMigrations: !!flags.allowNoMigrations } }, async (ctx) => {
    const last = await latestRun(ctx.blue);
    ctx.options.resume = last?.status === 'running' || last?.status === 'failed';
    // The judgement apply --resume acts on (same function): steps it skips are not planned either.
    const resuming = ctx.options.resume && !flags.inPlace && last ? last : null;
    if (resuming) ctx.journal = new Journal(ctx.blue, resuming.run_id);
    const states = new Map((resuming && ctx.journal ? await resumeState(ctx, ctx.journal, applySteps(ctx.config)) : []).map((r) => [r.step, r]));
    const skipped = new Set([...states.values()].filter((r) => r.status === 'done' || r.status === 'refused').map((r) => r.step));
    // In place, the pre-flight's failing rows are shown below instead of stopping the plan.
    const planned = await planAll(ctx, flags.inPlace ? [migrateInPlace] : applySteps(ctx.config), skipped);
    // The cutover's steps, as `migrate cutover` would plan them after this apply (read-only, nothing is probed).
    if (flags.through === 'cutover' && !flags.inPlace) {
      ctx.cutover = cutoverWiring(ctx.config);
      planned.push(...(await planAll(ctx, CUTOVER_STEPS)));
    }
    const steps = planned.map((s) => {
      const r = states.get(s.step);
      return r ? { ...s, status: r.status, doneUnits: r.doneUnits.length - r.reopenedUnits.length, remainingUnits: remainingUnits(r, s.actions), ...(r.reason ? { reason: r.reason } : {}), ...(r.hint ? { hint: r.hint } : {}) } : s;
    });
    const refused = [...states.values()].find((r) => r.status === 'refused');
    const safety = await safetyReport(ctx, flags.queries);
    const lines: string[] = ctx.options.resume ? [`run ${last?.run_id} is unfinished: this is what \`migrate apply --resume\` would still check and run`] : [];
    if (refused) lines.push(`\`migrate apply --resume\` would be refused (exit 3): the ${refused.step} step's inputs changed after it ran`);
    // Said first: with --allow-no-migrations a folder with nothing pending passes, and apply only copies.
    const pureCopy = !flags.inPlace && (await ctx.source.pending(ctx.blue)).length === 0;
    if (pureCopy) lines.unshift(`no pending migration (${ctx.source.describe()}): --allow-no-migrations, so apply copies blue to green and migrates nothing`);
    for (const s of steps) {
      lines.push(`${s.step}: ${s.purpose}`);
      const r = states.get(s.step);
      if (r) {
        lines.push(...resumeLines(r, s.actions));
        continue;
      }
      if (!s.actions.length) lines.push('  (nothing to do)');
      for (const a of s.actions) {
        lines.push(`  - [${a.id}] ${a.sentence}`);
        const sample = a.facts?.sample as unknown[] | undefined;
        if (sample?.length) lines.push(`      sample keys: ${sample.map((k) => JSON.stringify(k)).join(' ')}`);
        if (a.facts?.mode) lines.push(...String(a.sql ?? '').split('\n').map((l) => `      ${l}`));
      }
    }
    // What users would lose, before anything runs (cleanup's quarantine rules, dependents included).
    const accessChanges = accessChangesOf(steps);
    lines.push(...accessChangeLines(accessChanges, 'would lose'));
    // Lock findings matter on a blue serving traffic (in place); on green they are counted unless asked for.
    lines.push(...safetyLines(safety, { lockDetails: !!flags.inPlace || !!flags.lintDetails }));
    return { exitCode: 0, json: { ok: true, exitCode: 0, resume: ctx.options.resume, ...(pureCopy ? { noPendingMigrations: true } : {}), ...(flags.inPlace ? { inPlace: true } : {}), steps, accessChanges, safety }, text: lines.join('\n') };
  });
}

/** One step of an unfinished run: what is done (counted), what would still run (listed), or why it is re-opened or refused. */
function resumeLines(r: ResumeStatus, actions: readonly ReportedAction[]): string[] {
  const done = r.doneUnits.length - r.reopenedUnits.length;
  if (r.status === 'refused') return [`  refused: ${r.reason}`, `  hint: ${r.hint}`];
  const out = r.status === 'reopened' ? [`  re-opened: ${r.reason}`] : r.reason ? [`  note: ${r.reason}`] : [];
  if (r.status === 'done') return [`  done (${done} unit(s) finished)`, ...out];
  const remaining = new Set(remainingUnits(r, actions));
  out.push(`  done: ${done} unit(s); would still run: ${remaining.size} unit(s)`);
  for (const a of actions.filter((x) => remaining.has(x.id))) {
    out.push(`  - [${a.id}] ${a.sentence} (would still run)`);
    const sample = a.facts?.sample as unknown[] | undefined;
    if (sample?.length) out.push(`      sample keys: ${sample.map((k) => JSON.stringify(k)).join(' ')}`);
  }
  return out;
}
