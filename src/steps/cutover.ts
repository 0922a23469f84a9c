// The cutover step: capture on green, a catch-up of the outbox, then the two-phase flip of every
// target, all or nothing. Its rollback puts every live target back (newest commit first, with the
// value its prepare read) and replays the revocations green accepted meanwhile into blue. The
// guardrails every cutover must pass, the confirmation and the report's verdict live here too.

import { createInterface } from 'node:readline/promises';
import { describeAction } from '../cutover/actions.ts';
import { flipOrder, isFencing, rollbackTargets, twoPhaseCutover, type CutoverFailure, type TargetRecord } from '../cutover/coordinator.ts';
import { checkGuardrails, identityRefusal, isIdentityGuardrail, outboxBacklog, type BacklogFn, type Guardrail } from '../cutover/guardrails.ts';
import { actionOf, type TargetSpec } from '../cutover/schema.ts';
import { journalTargetLog, LIVE_STATES, targetRecords } from '../cutover/state.ts';
import { wiringOf } from '../cutover/wiring.ts';
import { query, type Db } from '../db/connect.ts';
import { ExitCode, FindingsError, OperatorError, StateError, UsageError } from '../errors.ts';
import { installGreenCapture } from '../replay/capture-green.ts';
import { drain } from '../replay/drain.ts';
import type { InvariantResult } from '../validate/invariants.ts';
import type { Action, Step, StepContext } from './step.ts';
import { catchUpNow, streamActions } from './stream.ts';
import type { ProbeStats, WatchResult } from './watch.ts';

/** The cutover did not stick: every committed target was rolled back (exit 8). */
export class CutoverRolledBackError extends OperatorError {
  constructor(failure: CutoverFailure | { target: string; phase: string; message: string }, detail: Record<string, unknown>, rollbackFailures: { target: string; message: string }[]) {
    const manual = rollbackFailures.length ? ` ROLLBACK FAILED for ${rollbackFailures.map((f) => f.target).join(', ')}: these need a human.` : '';
    super(`cutover rolled back: ${failure.phase} of ${failure.target} failed: ${failure.message}.${manual}`, {
      hint: rollbackFailures.length
        ? 'run `migrate rollback --yes` to retry the failed rollbacks, then check each target by hand (runbooks/rollback.md)'
        : 'blue is serving again (the lever line says whether the TTL was restored); fix the named target and run `migrate cutover` again (runbooks/exit-codes/8.md)',
      exitCode: ExitCode.cutoverRolledBack,
      detail: { failure, rollbackFailures, ...detail },
    });
  }
}

/** Per-target line of the report. */
export interface TargetStatus {
  /** Target name. */
  name: string;
  /** committed, rolled-back, rollback-failed, prepared, failed or pending. */
  status: TargetRecord['state'];
}

/** Everything the cutover phase did. */
export interface CutoverPhaseResult {
  /** The demo's `cutover` JSON. */
  cutover: { targets: TargetStatus[]; rolledBack: boolean; failure: CutoverFailure | { target: string; phase: string; message: string } | null; rollbackOrder: string[]; ms: number };
  /** Guardrail verdicts. */
  guardrails: Guardrail[];
  /** Lever state at the end. */
  lever: { raised: boolean; restored: boolean; saved: string | null } | null;
  /** Drained revocations (null when no drain was wired). */
  drained: number | null;
  /** Invariants after the drain. */
  invariants: InvariantResult[];
  /** Watch outcome. */
  watch: WatchResult | null;
  /** Probe latency before the cutover. */
  probesBefore: ProbeStats[];
  /** Revocations replayed into blue after a rollback. */
  replayedToBlue: number | null;
  /** The error that ended the phase (exit 8 after a rollback), or null. */
  error: OperatorError | null;
}

async function confirm(targets: readonly TargetSpec[]): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(`cut over ${targets.map((t) => t.name).join(', ')} to green? type "yes": `);
    return answer.trim() === 'yes';
  } finally {
    rl.close();
  }
}

/**
 * The report's verdict line. "cutover committed" only when every target is live and nothing failed:
 * a cutover stopped before its first commit (e.g. by the lever) says so, never "committed".
 */
export function cutoverVerdict(phase: Pick<CutoverPhaseResult, 'cutover' | 'error'>): string {
  const { cutover } = phase;
  if (cutover.rolledBack) return `ROLLED BACK (order: ${cutover.rollbackOrder.join(' -> ') || 'no target had been touched'})`;
  const live = cutover.targets.filter((t) => LIVE_STATES.has(t.status)).map((t) => t.name);
  if (!live.length) return 'nothing was cut over';
  if (live.length === cutover.targets.length && !phase.error) return 'cutover committed';
  return `cutover did not finish: live on green: ${live.join(', ')} (\`migrate rollback --yes\` undoes them)`;
}

/** Checks guardrails and asks for confirmation; throws before anything is changed. */
export async function preflightCutover(ctx: StepContext, targets: readonly TargetSpec[], opts: { yes: boolean; backlog?: BacklogFn }): Promise<Guardrail[]> {
  if (!ctx.journal) throw new StateError('there is no run to cut over', 'run `migrate apply` first');
  if (!targets.length) throw new StateError('no cutover targets are configured', 'add cutover.targets to the config (README: Cutover)');
  const check = () => checkGuardrails(ctx.blue, ctx.green, ctx.journal!, ctx.config, opts.backlog ?? outboxBacklog(ctx.blue, ctx.green));
  let guardrails = await check();
  // Blue kept writing since apply: when green's stream lag is the only thing in the way, catch it up
  // (the stream's own idempotent work, nothing clients see) and judge again.
  if (ctx.config.raw.stream.enabled && guardrails.some((g) => !g.ok) && guardrails.every((g) => g.ok || g.id === 'stream-caught-up')) {
    const caught = await catchUpNow(ctx);
    ctx.progress(`stream: green caught up to blue's ${caught.upto} (${caught.staged} changes staged, ${caught.mapped} mapped, ${caught.ms} ms)`);
    guardrails = await check();
  }
  const failed = guardrails.filter((g) => !g.ok);
  // The wrong run or the wrong green outranks every other verdict: the others describe another database.
  if (failed.some(isIdentityGuardrail)) throw identityRefusal('cutover', await ctx.journal.run(), ctx.config.greenDsn, guardrails);
  if (failed.length) {
    const blocking = failed.some((g) => g.id === 'green-validated' || g.id === 'no-blocking-findings');
    const lines = failed.map((g) => `${g.id}: ${g.detail}`);
    const hint = 'nothing was changed; fix the listed guardrails (runbooks/blue-green-upgrade.md) and run `migrate cutover` again';
    throw blocking ? new FindingsError(`cutover refused:\n  ${lines.join('\n  ')}`, hint, { guardrails }) : new StateError(`cutover refused:\n  ${lines.join('\n  ')}`, hint, { guardrails });
  }
  if (!opts.yes) {
    if (!process.stdin.isTTY) throw new UsageError('cutover needs confirmation and there is no terminal', 'pass --yes in CI');
    if (!(await confirm(targets))) throw new UsageError('cutover not confirmed', 'type "yes" at the prompt, or pass --yes');
  }
  return guardrails;
}

/** Rolls back every live target (newest commit first) and replays green's revocations into blue; failures are returned, never thrown. */
export async function rollbackLiveTargets(ctx: StepContext): Promise<{ order: string[]; failures: { target: string; message: string }[]; replayedToBlue: number | null }> {
  const w = wiringOf(ctx);
  const journal = ctx.journal!;
  const records = await targetRecords(journal);
  const live = records.filter((r) => LIVE_STATES.has(r.state)).sort((a, b) => (b.order ?? 0) - (a.order ?? 0));
  const missing = live.filter((r) => !w.targets.some((t) => t.name === r.name));
  if (missing.length) throw new UsageError(`targets ${missing.map((m) => m.name).join(', ')} are live but no longer in the config`, 'restore their entries in cutover.targets so their rollback actions are known');
  const order = live.map((r) => r.name);
  if (order.length) ctx.progress(`rolling back ${order.join(' -> ')}`);
  const failures = await rollbackTargets(w.targets, new Map(records.map((r) => [r.name, r])), order, w.env, journalTargetLog(journal));
  // What green accepted while it served goes back to blue (idempotent; nothing when green never captured).
  const replayedToBlue = (await hasGreenOutbox(ctx.green)) ? (await drain({ source: ctx.green, sourceSide: 'green', target: ctx.blue, profile: ctx.config.engine.replay.blue, progress: ctx.progress })).applied : null;
  return { order, failures, replayedToBlue };
}

async function hasGreenOutbox(green: Db): Promise<boolean> {
  const { rows } = await query<{ ok: boolean }>(green, "SELECT to_regclass('bluegreen.outbox') IS NOT NULL AS ok", [], { side: 'green' });
  return rows[0]?.ok === true;
}

/** The cutover step. */
export const cutover = {
  name: 'cutover',
  purpose: 'flip every target to green, all or nothing',
  async validate(ctx) {
    if (!wiringOf(ctx).targets.length) throw new StateError('no cutover targets are configured', 'add cutover.targets to the config (README: Cutover)');
  },
  async plan(ctx) {
    const w = wiringOf(ctx);
    const green = ctx.config.engine.capture.green;
    const ordered = flipOrder(w.targets);
    const names = ordered.map((t) => t.name);
    // A fenced flip catches the stream up between prepare and commit (issue H); without a stream there is nothing to catch up.
    const fenced = ctx.config.raw.stream.enabled && ordered.some(isFencing);
    return [
      {
        id: 'green-capture',
        sentence: `install revocation capture on green (${green.map((t) => t.table).join(', ') || 'no table'}), so a rollback can replay green's own revocations into blue`,
        side: 'green',
        execute: async ({ ctx: c }) => ({ tables: await installGreenCapture(c.green, green) }),
      },
      {
        id: 'catch-up',
        sentence: 'replay the revocations captured on blue so far into green (the drain after the flip then carries only the tail)',
        side: 'both',
        execute: async ({ ctx: c }) => ({ replayed: (await drain({ source: c.blue, sourceSide: 'blue', target: c.green, profile: c.config.engine.replay.green, progress: c.progress })).applied }),
      },
      // Writes blue committed so far reach green's change log before the flip, so the tail after it is short.
      ...(ctx.config.raw.stream.enabled ? await streamActions(ctx, 'stream', 'stage the writes blue committed up to now in green\'s change log') : []),
      {
        id: 'flip',
        sentence: fenced
          ? `prepare ${names.join(', ')} (the last raises the router's fence: requests are held, not failed), catch green up to blue's WAL position, then commit them in that order (dropping the fence on green); any failure rolls the committed ones back, newest first, and lowers the fence on blue`
          : `prepare ${names.join(', ')}, then commit them in that order; any failure rolls the committed ones back, newest first`,
        side: fenced ? 'both' : 'none',
        facts: { targets: ordered.map((t) => ({ name: t.name, commit: describeAction(actionOf(t, 'commit')!) })) },
        execute: async ({ ctx: c }) => {
          let barrier: Awaited<ReturnType<typeof catchUpNow>> | null = null;
          const outcome = await twoPhaseCutover(w.targets, w.env, {
            timeoutMs: (c.config.raw.cutover?.timeoutSeconds ?? 60) * 1000,
            log: journalTargetLog(c.journal!),
            progress: c.progress,
            // With a fence up blue takes no write: green catches up to blue's position before any commit.
            ...(fenced ? { barrier: async () => void (barrier = await catchUpNow(c)) } : {}),
          });
          const targets = outcome.targets.map((t) => ({ name: t.name, status: t.state }));
          if (outcome.failure) throw new CutoverRolledBackError(outcome.failure, { targets, rollbackOrder: outcome.rollbackOrder, flipMs: outcome.ms, barrier }, outcome.rollbackFailures);
          return { targets, flipMs: outcome.ms, barrier };
        },
      },
    ] satisfies Action[];
  },
  async verify(ctx) {
    const records = await targetRecords(ctx.journal!);
    const notLive = wiringOf(ctx).targets.filter((t) => !records.some((r) => r.name === t.name && LIVE_STATES.has(r.state)));
    if (notLive.length) throw new StateError(`targets ${notLive.map((t) => t.name).join(', ')} are not live on green after the flip`, '`migrate status` shows each target; `migrate rollback --yes` undoes the others');
  },
  async rollback(ctx) {
    const { order, failures, replayedToBlue } = await rollbackLiveTargets(ctx);
    return { rollbackOrder: order, failures, replayedToBlue };
  },
} satisfies Step;
