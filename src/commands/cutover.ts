// `migrate cutover [--yes]`: guardrails, lever, the all-or-nothing flip of every configured target,
// then validation and watch; exit 8 when it had to roll back. Also prints the metrics report.

import { identityGuardrails, identityRefusal } from '../cutover/guardrails.ts';
import { kvFromEnv } from '../cutover/kv-env.ts';
import { moreConnections } from '../db/connect.ts';
import { StateError } from '../errors.ts';
import { collectMetrics, metricsMarkdown, metricsText } from '../report/metrics.ts';
import { Journal, latestRun } from '../state/journal.ts';
import { installGreenCapture } from '../replay/capture-green.ts';
import { drain } from '../steps/drain.ts';
import { cutoverVerdict, runCutoverPhase } from '../steps/cutover.ts';
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
    ctx.progress = (text) => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} cutover: ${text}\n`);
    const kv = kvFromEnv();
    const queue = queueFromConfig(ctx.config);
    // Both directions come from the engine the config names: green's capture tables and replay
    // semantics after the flip, blue's semantics for a rollback (src/engines).
    const engine = ctx.config.engine;
    const phase = await runCutoverPhase({
      ctx,
      yes: !!flags.yes,
      kv: kv.kv,
      // After the flip: green's own revocations are captured (for a rollback), then blue's window is replayed into green.
      drain: async () => {
        await installGreenCapture(ctx.green, engine.capture.green);
        const moreTargets = await moreConnections('green', ctx.config.greenDsn, ctx.config.raw.replay.jobs - 1);
        try {
          const stats = await drain({ source: ctx.blue, sourceSide: 'blue', target: ctx.green, moreTargets, profile: engine.replay.green, ...(queue ? { queue } : {}), progress: ctx.progress });
          return { replayed: stats.applied };
        } finally {
          await Promise.all(moreTargets.map((c) => c.end().catch(() => {})));
        }
      },
      replayToBlue: async () => ({ replayed: (await drain({ source: ctx.green, sourceSide: 'green', target: ctx.blue, profile: engine.replay.blue, progress: ctx.progress })).applied }),
    }).finally(() => kv.dispose());
    const metrics = await collectMetrics(ctx, { probesBefore: phase.probesBefore, probesAfter: phase.watch?.probes ?? [] });
    if (flags.reportMd) fs.writeFileSync(flags.reportMd, metricsMarkdown(metrics, { title: 'migrate cutover', cutover: phase.cutover }));
    const exitCode = phase.error?.exitCode ?? 0;
    const lines = [
      table([['target', 'status'], ...phase.cutover.targets.map((t) => [t.name, t.status])]),
      cutoverVerdict(phase),
      phase.lever ? `lever: raised from ${JSON.stringify(phase.lever.saved)}, ${phase.lever.restored ? 'restored' : 'NOT restored'}` : '',
      phase.drained !== null ? `drained: ${phase.drained} revocation(s)` : '',
      ...phase.invariants.map((i) => `invariant ${i.name}: ${i.passed ? 'ok' : `FAILED (${i.message})`}`),
      phase.watch ? `watch: ${phase.watch.rounds} round(s), ${phase.watch.breach ? `BREACH ${phase.watch.breach.reason}` : 'no breach'}` : '',
      metricsText(metrics),
      phase.error ? `error: ${phase.error.message}\nhint: ${phase.error.hint}` : '',
    ].filter(Boolean);
    const json = { ok: !phase.error, exitCode, runId: run.run_id, cutover: phase.cutover, guardrails: phase.guardrails, lever: phase.lever, drained: phase.drained, invariants: phase.invariants, watch: phase.watch, metrics, ...(phase.error ? { error: phase.error.toJSON() } : {}) };
    return { exitCode, json, text: lines.join('\n') };
  });
}
