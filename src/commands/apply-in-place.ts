// `migrate apply --in-place`: the pending migrations on blue itself, lock-safe, journalled and
// resumable under the same run lock. Refuses (exit 5) when the constraint pre-flight finds rows on
// blue that a migration would reject: in place there is no green to quarantine them on.

import type { UnitHooks } from '../drill.ts';
import { IN_PLACE_STEPS } from '../inplace/steps.ts';
import { progressSink } from '../report/progress.ts';
import { apply } from '../runner.ts';
import type { ResumeMode } from '../state/journal.ts';
import type { ApplyFlags } from './apply.ts';
import { stepsTable, type CommandResult } from './result.ts';
import { withContext } from './session.ts';

/** Runs `migrate apply --in-place [--no-rewrite] [--resume|--restart]`. */
export async function applyInPlaceCommand(flags: ApplyFlags, mode: ResumeMode, hooks?: UnitHooks): Promise<CommandResult> {
  const run = { resume: mode === 'resume', restart: mode === 'restart', rewrite: flags.rewrite !== false };
  return withContext({ config: flags.config, run, ...(hooks ? { hooks } : {}) }, async (ctx) => {
    const outcome = await apply(ctx, mode, flags.sink ?? progressSink(!!flags.json), IN_PLACE_STEPS);
    const migrate = outcome.results.find((r) => r.name === 'migrate-in-place');
    const exitCode = outcome.error?.exitCode ?? 0;
    const json = {
      ok: !outcome.error,
      exitCode,
      inPlace: true,
      runId: outcome.runId,
      resumed: outcome.resumed,
      steps: outcome.results.map((r) => ({ name: r.name, status: r.status, ms: r.ms })),
      migrate: migrate?.status === 'done' ? migrate.detail : null,
      ...(outcome.error ? { error: outcome.error.toJSON() } : {}),
    };
    const lines = [`in-place run ${outcome.runId}${outcome.resumed ? ' (resumed)' : ''}`, stepsTable(outcome.results)];
    if (migrate?.status === 'done' && migrate.detail) lines.push(`applied: ${(migrate.detail.applied as string[]).join(', ') || 'nothing'}; lock retries: ${String(migrate.detail.retries)}`);
    if (outcome.error) lines.push(`error: ${outcome.error.message}`, `hint: ${outcome.error.hint}`);
    return { exitCode, json, text: lines.join('\n') };
  });
}
