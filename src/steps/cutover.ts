// The cutover phase: guardrails, confirmation, lever, the two-phase flip of every target, then
// drain, semantic validation and watch. Any failure after a commit rolls every target back (newest
// first), replays green-side revocations into blue and restores the lever: exit 8, blue serving.

import { createInterface } from 'node:readline/promises';
import type { ActionEnv } from '../cutover/actions.ts';
import { rollbackTargets, twoPhaseCutover, type CutoverFailure, type TargetRecord } from '../cutover/coordinator.ts';
import { checkGuardrails, identityRefusal, isIdentityGuardrail, outboxBacklog, type BacklogFn, type Guardrail } from '../cutover/guardrails.ts';
import { wranglerKv, type KvResolver } from '../cutover/kv.ts';
import type { TargetSpec, WatchSpec } from '../cutover/schema.ts';
import { CUTOVER_STEP, journalTargetLog, LIVE_STATES } from '../cutover/state.ts';
import { ExitCode, FindingsError, OperatorError, StateError, UsageError } from '../errors.ts';
import { checkInvariants, invariantFailures, invariantsOf, type InvariantResult } from '../validate/invariants.ts';
import { raiseLever, restoreLever } from './lever.ts';
import type { StepContext } from './step.ts';
import { probeOnce, watchWindow, type ProbeStats, type WatchResult } from './watch.ts';

/** Replays the captured revocations into green (issue D's drain); injected by the caller. */
export type DrainFn = () => Promise<{ replayed: number }>;
/** Replays green-side revocations into blue after a rollback; injected by the caller. */
export type ReplayToBlueFn = () => Promise<{ replayed: number }>;

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

/** What the cutover phase needs besides the step context. */
export interface CutoverPhaseOptions {
  /** Step context with the journal of the run being cut over. */
  ctx: StepContext;
  /** Targets (default: config cutover.targets). */
  targets?: TargetSpec[];
  /** KV namespaces (default: wrangler --remote). */
  kv?: KvResolver;
  /** Drain after commit (issue D); skipped when absent. */
  drain?: DrainFn;
  /** Replay green-side revocations into blue after an automatic rollback. */
  replayToBlue?: ReplayToBlueFn;
  /** Outbox rows not yet replayed (default: above the drain's mark on green, see guardrails.ts). */
  backlog?: BacklogFn;
  /** Watch window (default: config watch; null: no watch). */
  watch?: WatchSpec | null;
  /** Skip the interactive confirmation (CI). */
  yes?: boolean;
  /** Environment for `env:NAME` databases. */
  env?: NodeJS.ProcessEnv;
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

/** The ActionEnv for a step context. */
export function actionEnv(ctx: StepContext, kv: KvResolver = wranglerKv, env: NodeJS.ProcessEnv = process.env): ActionEnv {
  return { blueDsn: ctx.config.blueDsn, greenDsn: ctx.config.greenDsn, kv, env };
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
export async function preflightCutover(opts: CutoverPhaseOptions, targets: readonly TargetSpec[]): Promise<Guardrail[]> {
  const { ctx } = opts;
  if (!ctx.journal) throw new StateError('there is no run to cut over', 'run `migrate apply` first');
  const guardrails = await checkGuardrails(ctx.blue, ctx.green, ctx.journal, ctx.config, opts.backlog ?? outboxBacklog(ctx.blue, ctx.green));
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

/** Runs the whole cutover phase; returns its result (error set on exit 8) instead of throwing after a change. */
export async function runCutoverPhase(opts: CutoverPhaseOptions): Promise<CutoverPhaseResult> {
  const { ctx } = opts;
  const config = ctx.config.raw;
  const targets = opts.targets ?? config.cutover?.targets ?? [];
  if (!targets.length) throw new StateError('no cutover targets are configured', 'add cutover.targets to the config (README: Cutover)');
  const guardrails = await preflightCutover(opts, targets);
  const journal = ctx.journal!;
  const env = actionEnv(ctx, opts.kv, opts.env);
  const watchSpec = opts.watch === undefined ? (config.watch ?? null) : opts.watch;
  const result: CutoverPhaseResult = {
    cutover: { targets: targets.map((t) => ({ name: t.name, status: 'pending' })), rolledBack: false, failure: null, rollbackOrder: [], ms: 0 },
    guardrails,
    lever: null,
    drained: null,
    invariants: [],
    watch: null,
    probesBefore: watchSpec ? await probeOnce(watchSpec.probes, env) : [],
    replayedToBlue: null,
    error: null,
  };
  const log = journalTargetLog(journal);
  await journal.start(CUTOVER_STEP);
  try {
    // Before any target: a lever that cannot be raised (LeverError, caught below) stops here with nothing cut over.
    ctx.progress('raising the TTL lever');
    const lever = await raiseLever(config.lever, env, journal);
    if (lever) result.lever = { raised: true, restored: false, saved: lever.saved };
    const outcome = await twoPhaseCutover(targets, env, { timeoutMs: (config.cutover?.timeoutSeconds ?? 60) * 1000, log, progress: ctx.progress });
    result.cutover = { targets: outcome.targets.map((t) => ({ name: t.name, status: t.state })), rolledBack: outcome.rolledBack, failure: outcome.failure, rollbackOrder: outcome.rollbackOrder, ms: outcome.ms };
    if (outcome.failure) {
      result.error = new CutoverRolledBackError(outcome.failure, { targets: result.cutover.targets }, outcome.rollbackFailures);
      return result;
    }
    const records = new Map(outcome.targets.map((t) => [t.name, t]));
    const undo = async (target: string, phase: string, message: string): Promise<void> => {
      ctx.progress(`automatic rollback: ${message}`);
      const order = [...outcome.targets].sort((a, b) => (b.order ?? 0) - (a.order ?? 0)).map((t) => t.name);
      const failures = await rollbackTargets(targets, records, order, env, log);
      if (opts.replayToBlue) result.replayedToBlue = (await opts.replayToBlue()).replayed;
      result.cutover = { ...result.cutover, targets: [...records.values()].map((t) => ({ name: t.name, status: t.state })), rolledBack: true, failure: { target, phase, message }, rollbackOrder: order };
      result.error = new CutoverRolledBackError({ target, phase, message }, { targets: result.cutover.targets }, failures);
    };
    if (opts.drain) {
      ctx.progress('draining captured revocations into green');
      try {
        result.drained = (await opts.drain()).replayed;
      } catch (err) {
        await undo('drain', 'drain', (err as Error).message);
        return result;
      }
    }
    result.invariants = await checkInvariants(ctx.blue, ctx.green, invariantsOf(ctx.config), { drained: true });
    const failedInvariants = invariantFailures(result.invariants);
    if (failedInvariants.length) {
      await undo('validate', 'validate', failedInvariants.join('; '));
      return result;
    }
    if (watchSpec) {
      const specs = invariantsOf(ctx.config);
      result.watch = await watchWindow(watchSpec, env, {
        invariants: async (names) => invariantFailures(await checkInvariants(ctx.blue, ctx.green, specs.filter((s) => names.includes(s.name)), { drained: true })),
        progress: ctx.progress,
      });
      if (result.watch.breach) {
        await undo(result.watch.breach.probe, 'watch', `${result.watch.breach.kind} breached: ${result.watch.breach.reason}`);
        return result;
      }
    }
    return result;
  } catch (err) {
    if (err instanceof OperatorError) result.error = err;
    else throw err;
    return result;
  } finally {
    const restored = await restoreLever(config.lever, env, journal);
    if (restored && result.lever) result.lever.restored = restored.state === 'restored';
    const summary = { rolledBack: result.cutover.rolledBack, failure: result.cutover.failure, targets: result.cutover.targets, lever: result.lever, drained: result.drained, watch: result.watch, probesBefore: result.probesBefore };
    if (result.error) await journal.fail(CUTOVER_STEP, '', result.error.message);
    else await journal.finish(CUTOVER_STEP, '', summary);
  }
}
