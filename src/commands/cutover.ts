// `migrate cutover [--yes]`: guardrails and confirmation, then the cutover steps through the runner
// (lever, the all-or-nothing flip, drain, recheck, watch, restore-ttl); exit 8 when it had to roll
// back. Also prints the metrics report.

import { identityGuardrails, identityRefusal } from '../cutover/guardrails.ts';
import { kvFromEnv } from '../cutover/kv-env.ts';
import { StateError } from '../errors.ts';
import { collectMetrics, metricsMarkdown, metricsText } from '../report/metrics.ts';
import { Journal, latestRun } from '../state/journal.ts';
import { runCutover } from '../cutover/phase.ts';
import { cutoverWiring } from '../cutover/wiring.ts';
import { progressSink } from '../report/progress.ts';
import { cutoverVerdict } from '../steps/cutover.ts';
import { queueFromConfig } from '../queue/from-config.ts';
import { table, type CommandResult } from './result.ts';
import { withContext, type CommonOptions } from './session.ts';
import fs from 'node:fs';

/** Flags of `migrate cutover`. */
export interface CutoverFlags extends CommonOptions {
  /** Skip the interactive confirmation (CI). */
  yes?: boolean;
  /** Also write the metrics report as Markdown to this file. */
  reportMd?: string;
}

/** Runs `migrate cutover`. */
export async function cutoverCommand(flags: CutoverFlags): Promise<CommandResult> {
  return withContext({ config: flags.config, lock: 'cutover' }, async (ctx) => {
    const run = await latestRun(ctx.blue, { kind: 'real' });
    if (!run) {
      // Only a rehearsal to offer: say so through the same guardrails instead of "no run".
      const rehearsal = await latestRun(ctx.blue, { kind: 'rehearsal' });
      if (rehearsal) throw identityRefusal('cutover', rehearsal, ctx.config.greenDsn, await identityGuardrails(ctx.green, rehearsal, ctx.config.greenDsn));
    }
    if (!run || run.status !== 'done') throw new StateError(run ? `run ${run.run_id} is ${run.status}` : 'there is no run to cut over', 'finish `migrate apply` first (`migrate status` shows where it stands)');
    ctx.journal = new Journal(ctx.blue, run.run_id);
    const kv = kvFromEnv();
    ctx.cutover = cutoverWiring(ctx.config, { kv: kv.kv, queue: queueFromConfig(ctx.config) });
    const phase = await runCutover(ctx, { yes: !!flags.yes, sink: progressSink(!!flags.json) }).finally(() => kv.dispose());
    const metrics = await collectMetrics(ctx, { probesBefore: phase.probesBefore, probesAfter: phase.watch?.probes ?? [] });
    if (flags.reportMd) fs.writeFileSync(flags.reportMd, metricsMarkdown(metrics, { title: 'migrate cutover', cutover: phase.cutover }));
    const exitCode = phase.error?.exitCode ?? 0;
    const lines = [
      table([['target', 'status'], ...phase.cutover.targets.map((t) => [t.name, t.status])]),
      cutoverVerdict(phase),
      phase.lever ? `lever: raised from ${JSON.stringify(phase.lever.saved)}, ${phase.lever.restored ? 'restored' : 'NOT restored'}` : '',
      phase.drained !== null ? `drained: ${phase.drained} revocation(s)` : '',
      phase.replayedToBlue !== null ? `replayed into blue after the rollback: ${phase.replayedToBlue} revocation(s)` : '',
      ...phase.invariants.map((i) => `invariant ${i.name}: ${i.passed ? 'ok' : `FAILED (${i.message})`}`),
      phase.watch ? `watch: ${phase.watch.rounds} round(s), ${phase.watch.breach ? `BREACH ${phase.watch.breach.reason}` : 'no breach'}` : '',
      metricsText(metrics),
      phase.error ? `error: ${phase.error.message}\nhint: ${phase.error.hint}` : '',
    ].filter(Boolean);
    const json = { ok: !phase.error, exitCode, runId: run.run_id, steps: phase.steps.map(({ name, status, ms, actions }) => ({ name, status, ms, actions })), cutover: phase.cutover, guardrails: phase.guardrails, lever: phase.lever, drained: phase.drained, invariants: phase.invariants, watch: phase.watch, metrics, ...(phase.error ? { error: phase.error.toJSON() } : {}) };
    return { exitCode, json, text: lines.join('\n') };
  });
}
