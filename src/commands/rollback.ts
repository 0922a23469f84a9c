// `migrate rollback`: shows, from the journal, which targets are live on green, and rolls them back
// newest commit first with the values their prepare read; then restores the TTL lever. Refuses
// (exit 3) when green.dsn does not name the green the run cut over to: its sql targets on `green`
// would otherwise be "rolled back" in a database that was never cut over.

import { rollbackTargets } from '../cutover/coordinator.ts';
import { assertGreenIdentity } from '../cutover/guardrails.ts';
import { kvFromEnv } from '../cutover/kv-env.ts';
import { LIVE_STATES, leverRecord, journalTargetLog, targetRecords } from '../cutover/state.ts';
import { ExitCode, StateError, UsageError } from '../errors.ts';
import { Journal, latestRun } from '../state/journal.ts';
import { restoreLever } from '../steps/lever.ts';
import { actionEnv } from '../steps/cutover.ts';
import { table, type CommandResult } from './result.ts';
import { withContext, type CommonOptions } from './session.ts';

/** Runs `migrate rollback [--yes]`: without --yes it only shows what it would undo. */
export async function rollbackCommand(flags: CommonOptions & { yes?: boolean }): Promise<CommandResult> {
  // Only --yes writes; showing the plan must work while a cutover holds the lock.
  return withContext({ config: flags.config, ...(flags.yes ? { lock: 'rollback' } : {}) }, async (ctx) => {
    const run = await latestRun(ctx.blue, { kind: 'real' });
    if (!run) throw new StateError('there is no run to roll back', 'nothing was cut over; `migrate status` shows the state');
    await assertGreenIdentity('rollback', ctx.green, run, ctx.config.greenDsn);
    const journal = new Journal(ctx.blue, run.run_id);
    const records = await targetRecords(journal);
    const live = records.filter((r) => LIVE_STATES.has(r.state)).sort((a, b) => (b.order ?? 0) - (a.order ?? 0));
    const lever = await leverRecord(journal);
    const plan = [...live.map((r) => `roll back ${r.name} (${r.state}, saved ${JSON.stringify(r.saved)})`), ...(lever?.state === 'raised' || lever?.state === 'restore-failed' ? [`restore the TTL lever to ${JSON.stringify(lever.saved)}`] : [])];
    if (!flags.yes) {
      const text = plan.length ? `would undo, in this order:\n  ${plan.join('\n  ')}\nrun again with --yes to do it` : 'nothing to roll back: no target is live on green';
      return { exitCode: ExitCode.ok, json: { ok: true, exitCode: 0, runId: run.run_id, plan, done: false }, text };
    }
    const targets = ctx.config.raw.cutover?.targets ?? [];
    const missing = live.filter((r) => !targets.some((t) => t.name === r.name));
    if (missing.length) throw new UsageError(`targets ${missing.map((m) => m.name).join(', ')} are live but no longer in the config`, 'restore their entries in cutover.targets so their rollback actions are known');
    const kv = kvFromEnv();
    try {
      const env = actionEnv(ctx, kv.kv);
      const byName = new Map(records.map((r) => [r.name, r]));
      const failures = await rollbackTargets(targets, byName, live.map((r) => r.name), env, journalTargetLog(journal));
      const leverAfter = await restoreLever(ctx.config.raw.lever, env, journal);
      const exitCode = failures.length || leverAfter?.state === 'restore-failed' ? ExitCode.cutoverRolledBack : ExitCode.ok;
      const rows = live.map((r) => [r.name, byName.get(r.name)!.state]);
      const text = [rows.length ? table([['target', 'state'], ...rows]) : 'no target was live', leverAfter ? `lever: ${leverAfter.state}` : '', ...failures.map((f) => `ROLLBACK FAILED ${f.target}: ${f.message}`)].filter(Boolean).join('\n');
      return { exitCode, json: { ok: exitCode === 0, exitCode, runId: run.run_id, plan, done: true, targets: live.map((r) => ({ name: r.name, status: byName.get(r.name)!.state })), lever: leverAfter, failures }, text };
    } finally {
      await kv.dispose();
    }
  });
}
