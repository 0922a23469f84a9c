// `migrate rollback`: shows, from the journal, which targets are live on green; with --yes runs the
// cutover steps' rollbacks through the runner (src/cutover/phase.ts): live targets back newest commit
// first with the values their prepare read, green's revocations replayed into blue, then the TTL. Refuses
// (exit 3) when green.dsn does not name the green the run cut over to: its sql targets on `green`
// would otherwise be "rolled back" in a database that was never cut over.

import { rollbackCutover } from '../cutover/phase.ts';
import { cutoverWiring } from '../cutover/wiring.ts';
import { assertGreenIdentity } from '../cutover/guardrails.ts';
import { kvFromEnv } from '../cutover/kv-env.ts';
import { LIVE_STATES, leverRecord, targetRecords } from '../cutover/state.ts';
import { ExitCode, StateError } from '../errors.ts';
import { Journal, latestRun } from '../state/journal.ts';
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
    const kv = kvFromEnv();
    try {
      ctx.journal = journal;
      ctx.cutover = cutoverWiring(ctx.config, { kv: kv.kv });
      ctx.progress = (text) => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} rollback: ${text}\n`);
      const undone = await rollbackCutover(ctx);
      const failures = (undone.cutover?.failures as { target: string; message: string }[] | undefined) ?? [];
      const leverAfter = await leverRecord(journal);
      const exitCode = failures.length || leverAfter?.state === 'restore-failed' ? ExitCode.cutoverRolledBack : ExitCode.ok;
      const after = new Map((await targetRecords(journal)).map((r) => [r.name, r.state]));
      const rows = live.map((r) => [r.name, after.get(r.name) ?? r.state]);
      const replayed = undone.cutover?.replayedToBlue;
      const text = [
        rows.length ? table([['target', 'state'], ...rows]) : 'no target was live',
        leverAfter ? `lever: ${leverAfter.state}` : '',
        typeof replayed === 'number' ? `replayed into blue: ${replayed} revocation(s) green accepted` : '',
        ...failures.map((f) => `ROLLBACK FAILED ${f.target}: ${f.message}`),
      ].filter(Boolean).join('\n');
      return { exitCode, json: { ok: exitCode === 0, exitCode, runId: run.run_id, plan, done: true, targets: live.map((r) => ({ name: r.name, status: after.get(r.name) ?? r.state })), lever: leverAfter, replayedToBlue: replayed ?? null, failures }, text };
    } finally {
      await kv.dispose();
    }
  });
}
