// `migrate finish [--yes] [--abandon]`: the last command of an upgrade. After a cutover that passed its
// watch window, the capture on both sides and migrate's state are no longer needed; after an upgrade
// abandoned before any target went live, neither are they. Without --yes it shows what it would
// remove; with --yes it removes it (green first, then blue, where the journal lives) and keeps the
// quarantine. Refuses (exit 3) while a rollback may still need the capture.

import { cutoverStands } from '../cutover/phase.ts';
import { LIVE_STATES, targetRecords } from '../cutover/state.ts';
import { ExitCode, StateError } from '../errors.ts';
import { Journal, latestRun } from '../state/journal.ts';
import { runSqlActions } from '../run-step.ts';
import { DROP_QUARANTINE_HINT, finishActions, keptQuarantine } from '../steps/finish.ts';
import { table, type CommandResult } from './result.ts';
import { withContext, type CommonOptions } from './session.ts';

/** Flags of `migrate finish`. */
export interface FinishFlags extends CommonOptions {
  /** Remove (without it: show what would be removed). */
  yes?: boolean;
  /** Finish an upgrade that was never cut over (no target may be live on green). */
  abandon?: boolean;
}

/** Refuses while the capture may still be needed: no cutover that passed its watch, or a target still live on an abandoned run. */
async function assertFinishable(journal: Journal | null, abandon: boolean): Promise<void> {
  if (!journal) return;
  const cutoverDone = await cutoverStands(journal);
  const live = (await targetRecords(journal)).filter((t) => LIVE_STATES.has(t.state));
  if (abandon && live.length && !cutoverDone) {
    throw new StateError(`targets ${live.map((t) => t.name).join(', ')} are still live on green`, 'roll them back first (`migrate rollback --yes`), then `migrate finish --abandon --yes`');
  }
  if (!abandon && !cutoverDone) {
    throw new StateError(
      `run ${journal.runId} has no cutover that passed its watch window: a rollback may still need the capture on blue and green`,
      'finish after `migrate cutover` succeeds; to give up an upgrade that never went live, `migrate finish --abandon --yes`',
    );
  }
}

/** Runs `migrate finish`. */
export async function finishCommand(flags: FinishFlags): Promise<CommandResult> {
  return withContext({ config: flags.config, ...(flags.yes ? { lock: 'finish' } : {}) }, async (ctx) => {
    const run = await latestRun(ctx.blue, { kind: 'real' });
    await assertFinishable(run ? new Journal(ctx.blue, run.run_id) : null, !!flags.abandon);
    const actions = [...(await finishActions(ctx.green, 'green')), ...(await finishActions(ctx.blue, 'blue'))];
    const kept = await keptQuarantine(ctx.green);
    const keptLines = kept.length ? [`kept on green (rows of real data, never dropped by migrate): ${kept.map((k) => `${k.table} (${k.rows} rows)`).join(', ')}; ${DROP_QUARANTINE_HINT}`] : [];
    const listing = actions.length ? table([['side', 'object'], ...actions.map((a) => [String(a.side), a.sentence.replace(/^remove /, '').replace(/ from (blue|green)$/, '')])]) : 'nothing of migrate is left on blue or green';
    if (!flags.yes) {
      const text = [actions.length ? `would remove:\n${listing}\nrun again with --yes to do it` : listing, ...keptLines].join('\n');
      return { exitCode: ExitCode.ok, json: { ok: true, exitCode: 0, runId: run?.run_id ?? null, done: false, remove: actions, kept }, text };
    }
    await runSqlActions(ctx.green, 'green', actions.filter((a) => a.side === 'green'));
    await runSqlActions(ctx.blue, 'blue', actions.filter((a) => a.side === 'blue'));
    const text = [actions.length ? `removed:\n${listing}` : listing, ...keptLines].join('\n');
    return { exitCode: ExitCode.ok, json: { ok: true, exitCode: 0, runId: run?.run_id ?? null, done: true, removed: actions, kept }, text };
  });
}
