// The cutover phase as steps of the one runner: lever, cutover, drain, recheck, watch, restore-ttl,
// journalled on the run being cut over, under the run lock. A failure in any step up to watch rolls
// back what the finished steps did (newest first: targets back to blue with green's revocations
// replayed there, then the TTL) and ends with exit 8. A crash leaves the journal saying where it
// stopped: `migrate cutover` continues after a finished flip, and refuses (rollback first) when the
// flip itself was interrupted. A rolled-back attempt is filed away when the next one starts.

import { OperatorError, StateError } from '../errors.ts';
import { runSteps, type ProgressSink, type StepResult } from '../runner.ts';
import type { Journal } from '../state/journal.ts';
import { cutover, CutoverRolledBackError, preflightCutover, type CutoverPhaseResult } from '../steps/cutover.ts';
import { drain } from '../steps/drain.ts';
import { lever, LeverError } from '../steps/lever.ts';
import { recheck } from '../steps/recheck.ts';
import { restoreTtl } from '../steps/restore-ttl.ts';
import { CUTOVER_STEP_ORDER, type Step, type StepContext } from '../steps/step.ts';
import { probeOnce, watch, WatchBreachError } from '../steps/watch.ts';
import type { BacklogFn } from './guardrails.ts';
import { leverRecord, LIVE_STATES, targetRecords } from './state.ts';
import { wiringOf } from './wiring.ts';

/** The cutover phase's steps, in the order they run. */
export const CUTOVER_STEPS: readonly Step[] = [lever, cutover, drain, recheck, watch, restoreTtl];

/** Journal step under which each step's rollback is recorded (unit: the step rolled back). */
export const ROLLBACK_STEP = 'rollback';

/** Where the phase stands on a run. */
export type PhaseState =
  | { kind: 'new' }
  | { kind: 'resume'; after: string }
  | { kind: 'retry'; attempt: number }
  | { kind: 'done' }
  | { kind: 'blocked'; reason: string };

/** True when the phase finished (watch passed, TTL restored) and no rollback followed. */
export async function cutoverStands(journal: Journal): Promise<boolean> {
  return (await journal.done('restore-ttl')).has('') && (await journal.done(ROLLBACK_STEP)).size === 0;
}

/** Reads the journal: a new phase, one to continue, a finished one, or one that a rollback must settle first. */
export async function phaseState(journal: Journal): Promise<PhaseState> {
  const rows = await journal.rows();
  const phaseSteps = new Set<string>([...CUTOVER_STEP_ORDER, ROLLBACK_STEP]);
  const current = rows.filter((r) => phaseSteps.has(r.step));
  const attempts = new Set(rows.filter((r) => /#\d+$/.test(r.step)).map((r) => r.step.split('#')[1])).size;
  if (!current.length) return { kind: 'new' };
  if (await cutoverStands(journal)) return { kind: 'done' };
  const live = (await targetRecords(journal)).filter((t) => LIVE_STATES.has(t.state));
  const ttl = await leverRecord(journal);
  const raised = ttl?.state === 'raised' || ttl?.state === 'restore-failed';
  if (!live.length && !raised) return { kind: 'retry', attempt: attempts + 1 };
  if (current.some((r) => r.step === ROLLBACK_STEP)) {
    return { kind: 'blocked', reason: `the last cutover's rollback did not finish: ${live.length ? `live on green: ${live.map((t) => t.name).join(', ')}` : 'the TTL may still be raised'}` };
  }
  const flipped = (await journal.done('cutover')).has('');
  if (!flipped) return { kind: 'blocked', reason: `a cutover was interrupted during the flip: ${live.length ? `live on green: ${live.map((t) => t.name).join(', ')}` : 'the TTL is raised'}` };
  return { kind: 'resume', after: 'cutover' };
}

/** Options of one cutover. */
export interface CutoverRunOptions {
  /** Skip the interactive confirmation (CI). */
  yes: boolean;
  /** Progress sink. */
  sink: ProgressSink;
  /** Outbox rows not yet replayed (default: guardrails.ts's outboxBacklog). */
  backlog?: BacklogFn;
}

/** Everything a cutover did: the report's figures plus each step's result. */
export interface CutoverRun extends CutoverPhaseResult {
  /** Each cutover step's result (status, ms, actions). */
  steps: StepResult[];
}

/** Runs each finished step's rollback (newest first) after `failed` stopped the phase; returns what they reported. */
async function rollbackAfter(ctx: StepContext, results: readonly StepResult[]): Promise<Record<string, Record<string, unknown>>> {
  const out: Record<string, Record<string, unknown>> = {};
  const touched = results.filter((r) => r.status === 'done' || r.status === 'failed' || r.status === 'skipped').map((r) => r.name);
  for (const s of [...CUTOVER_STEPS].reverse()) {
    if (!s.rollback || !touched.includes(s.name)) continue;
    ctx.progress(`automatic rollback: ${s.name}`);
    const detail = (await s.rollback(ctx)) ?? {};
    await ctx.journal!.finish(ROLLBACK_STEP, s.name, detail);
    out[s.name] = detail;
  }
  return out;
}

/** The report's view of the phase, read back from the journal. */
async function phaseResult(ctx: StepContext, steps: StepResult[], error: OperatorError | null, rolledBack: Record<string, Record<string, unknown>> | null, extra: Pick<CutoverPhaseResult, 'guardrails' | 'probesBefore'>): Promise<CutoverRun> {
  const journal = ctx.journal!;
  const detail = (name: string): Record<string, unknown> | undefined => steps.find((s) => s.name === name)?.detail;
  const flip = (await journal.done('cutover')).get('flip');
  const records = new Map((await targetRecords(journal)).map((t) => [t.name, t.state]));
  const ttl = await leverRecord(journal);
  const failedStep = steps.find((s) => s.status === 'failed')?.name ?? null;
  const rollbackOrder = ((rolledBack?.cutover?.rollbackOrder as string[] | undefined) ?? []).concat(error instanceof CutoverRolledBackError ? ((error.detail.rollbackOrder as string[] | undefined) ?? []) : []);
  const watchDetail = (error?.detail.watch as CutoverPhaseResult['watch'] | undefined) ?? (detail('watch')?.watch as CutoverPhaseResult['watch'] | undefined) ?? null;
  return {
    steps,
    cutover: {
      targets: wiringOf(ctx).targets.map((t) => ({ name: t.name, status: records.get(t.name) ?? 'pending' })),
      rolledBack: error instanceof CutoverRolledBackError,
      failure: error && rolledBack ? ((error.detail.failure as CutoverPhaseResult['cutover']['failure'] | undefined) ?? { target: failedStep ?? 'cutover', phase: failedStep ?? 'cutover', message: error.message }) : null,
      rollbackOrder,
      ms: Number(flip?.flipMs ?? error?.detail.flipMs ?? 0),
    },
    guardrails: extra.guardrails,
    lever: ttl ? { raised: true, restored: ttl.state === 'restored', saved: ttl.saved } : null,
    drained: steps.some((s) => s.name === 'drain' && (s.status === 'done' || s.status === 'skipped')) ? Number((await journal.done('cutover')).get('catch-up')?.replayed ?? 0) + Number(detail('drain')?.replayed ?? 0) : null,
    invariants: (detail('recheck')?.invariants as CutoverPhaseResult['invariants'] | undefined) ?? [],
    watch: watchDetail,
    probesBefore: extra.probesBefore,
    replayedToBlue: (rolledBack?.cutover?.replayedToBlue as number | null | undefined) ?? null,
    error,
  };
}

/**
 * Runs `migrate cutover` on the run in `ctx.journal` with the wiring in `ctx.cutover`: guardrails and
 * confirmation before anything changes, then the phase's steps; returns the outcome (error set, exit
 * 8, after an automatic rollback) instead of throwing after a change.
 */
export async function runCutover(ctx: StepContext, opts: CutoverRunOptions): Promise<CutoverRun> {
  const journal = ctx.journal;
  if (!journal) throw new StateError('there is no run to cut over', 'run `migrate apply` first');
  const w = wiringOf(ctx);
  const state = await phaseState(journal);
  if (state.kind === 'done') throw new StateError(`run ${journal.runId} is already cut over: green serves`, '`migrate status` shows it; `migrate finish` removes what migrate installed; `migrate rollback --yes` goes back to blue');
  if (state.kind === 'blocked') throw new StateError(state.reason, 'run `migrate rollback --yes` to put every target (and the TTL) back, then `migrate cutover` again (runbooks/rollback.md)');
  const guardrails = state.kind === 'resume' ? [] : await preflightCutover(ctx, w.targets, { yes: opts.yes, ...(opts.backlog ? { backlog: opts.backlog } : {}) });
  for (const s of CUTOVER_STEPS) await s.validate(ctx);
  // A rolled-back attempt is filed away (kept for status) so this one starts from its first step.
  if (state.kind === 'retry') await journal.archive([...CUTOVER_STEP_ORDER, ROLLBACK_STEP], state.attempt);
  const probesBefore = w.watch ? await probeOnce(w.watch.probes, w.env) : [];
  const { results, error } = await runSteps(ctx, CUTOVER_STEPS, opts.sink, { continuation: `migrate cutover --config ${ctx.config.file}` });
  const failedStep = results.find((r) => r.status === 'failed')?.name;
  // A restore that fails after a good cutover is reported, never answered by undoing the cutover.
  if (!error || failedStep === 'restore-ttl') return phaseResult(ctx, results, error, null, { guardrails, probesBefore });
  const rolledBack = await rollbackAfter(ctx, results);
  const failures = (rolledBack.cutover?.failures as { target: string; message: string }[] | undefined) ?? [];
  // The failure names what broke: a target of the flip, the probe that breached, or the step.
  const target = error instanceof WatchBreachError ? error.result.breach!.probe : (failedStep ?? 'cutover');
  // A lever that could not be raised (it put the TTL back itself) and a flip the coordinator rolled back say so already.
  const final = (error instanceof CutoverRolledBackError || error instanceof LeverError) && !failures.length ? error : new CutoverRolledBackError({ target, phase: failedStep ?? 'cutover', message: error.message }, { step: failedStep, ...(error instanceof WatchBreachError ? { watch: error.result } : {}) }, failures);
  return phaseResult(ctx, results, final, rolledBack, { guardrails, probesBefore });
}

/** What `migrate rollback --yes` undoes: every step of the phase with a rollback, newest first, journalled. */
export async function rollbackCutover(ctx: StepContext): Promise<Record<string, Record<string, unknown>>> {
  const results: StepResult[] = CUTOVER_STEPS.map((s) => ({ name: s.name, status: 'done', ms: 0 }));
  return rollbackAfter(ctx, results);
}
