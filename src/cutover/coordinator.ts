// The all-or-nothing flip (the seeds flipped three systems by hand and could not flip them back):
// prepare every target, commit every target, verify every target. Any failure, or the overall
// timeout, rolls back every target whose commit started, newest first. Each state change is
// recorded (journal) before the next action, so `migrate rollback` can finish the job after a crash.
//
// Fenced flip (issue H): a fencing target (the edge router's `route`) holds every new request from
// its prepare on. So fencing targets are prepared after the others (the hold starts as late as it
// can), then the barrier runs (green catches up with blue, which takes no write any more), then the
// other targets commit and the fencing ones last: dropping the fence with the route on green
// releases the held requests to a green that is complete. On any failure the committed targets roll
// back newest first, and a fence that was raised is lowered after them, on blue.

import { actionOf, type TargetSpec } from './schema.ts';
import { ActionFailed, runAction, type ActionEnv } from './actions.ts';

/** Where a target stands. */
export type TargetState = 'pending' | 'prepared' | 'committing' | 'committed' | 'verified' | 'rolled-back' | 'rollback-failed' | 'failed';

/** One target's journal record. */
export interface TargetRecord {
  /** Target name. */
  name: string;
  /** Current state. */
  state: TargetState;
  /** The value prepare read (what rollback restores through `{{saved}}`). */
  saved: string | null;
  /** Position in the commit order (0-based), once its commit started. */
  order: number | null;
  /** Why it failed, when it did. */
  error?: string;
}

/** Persists target records (the journal in production). */
export type TargetLog = (record: TargetRecord) => Promise<void>;

/** Which phase failed and why. */
export interface CutoverFailure {
  /** Target name, or `timeout`. */
  target: string;
  /** Phase it failed in (`barrier`: the work between prepare and commit). */
  phase: 'prepare' | 'barrier' | 'commit' | 'verify' | 'timeout';
  /** What went wrong. */
  message: string;
}

/** The outcome of a two-phase cutover. */
export interface CutoverOutcome {
  /** Final record per target, in configured order. */
  targets: TargetRecord[];
  /** True when a failure made us undo what was committed (or abort before any commit). */
  rolledBack: boolean;
  /** The first failure, if any. */
  failure: CutoverFailure | null;
  /** Targets whose rollback itself failed: these need a human. */
  rollbackFailures: { target: string; message: string }[];
  /** Rollback order actually run (newest commit first). */
  rollbackOrder: string[];
  /** Wall time. */
  ms: number;
}

class CutoverTimeout extends Error {}

/** A target whose prepare already changes what clients see (the router's fence): prepared last, committed last, lowered on any failure. */
export const isFencing = (target: TargetSpec): boolean => target.kind === 'route';

/** Prepare and commit order: the configured order, fencing targets moved to the end. */
export function flipOrder(targets: readonly TargetSpec[]): TargetSpec[] {
  return [...targets.filter((t) => !isFencing(t)), ...targets.filter(isFencing)];
}

/** Rolls back the named targets in the order given; never stops early, collects failures. */
export async function rollbackTargets(targets: readonly TargetSpec[], records: Map<string, TargetRecord>, order: readonly string[], env: ActionEnv, log: TargetLog): Promise<{ target: string; message: string }[]> {
  const failures: { target: string; message: string }[] = [];
  for (const name of order) {
    const target = targets.find((t) => t.name === name);
    const record = records.get(name);
    if (!target || !record) continue;
    try {
      await runAction(actionOf(target, 'rollback')!, env, { saved: record.saved });
      record.state = 'rolled-back';
    } catch (err) {
      record.state = 'rollback-failed';
      record.error = (err as Error).message;
      failures.push({ target: name, message: record.error });
    }
    await log(record);
  }
  return failures;
}

/** How {@link twoPhaseCutover} runs. */
export interface FlipOptions {
  /** Overall budget for prepare, barrier, commit and verify. */
  timeoutMs: number;
  /** Journal of target records. */
  log?: TargetLog;
  /** Progress lines. */
  progress?: (text: string) => void;
  /** Runs after every prepare and before the first commit (with a fence up: blue takes no write); a failure rolls back. */
  barrier?: (signal: AbortSignal) => Promise<void>;
}

/** Runs prepare-all, the barrier, commit-all, verify-all under one timeout (fencing targets last); rolls back on any failure. */
export async function twoPhaseCutover(configured: readonly TargetSpec[], env: ActionEnv, opts: FlipOptions): Promise<CutoverOutcome> {
  const targets = flipOrder(configured);
  const started = performance.now();
  const log: TargetLog = opts.log ?? (async () => {});
  const say = opts.progress ?? (() => {});
  const records = new Map<string, TargetRecord>(targets.map((t) => [t.name, { name: t.name, state: 'pending', saved: null, order: null }]));
  const touched: string[] = [];
  const controller = new AbortController();
  let failure: CutoverFailure | null = null;
  let phase: CutoverFailure['phase'] = 'prepare';
  let current = '';
  const timer = setTimeout(() => controller.abort(new CutoverTimeout()), opts.timeoutMs);
  const fenced: string[] = [];
  const step = async (target: TargetSpec, p: 'prepare' | 'commit' | 'verify'): Promise<string | null> => {
    if (controller.signal.aborted) throw new CutoverTimeout();
    phase = p;
    current = target.name;
    const action = actionOf(target, p);
    if (!action) return null;
    say(`${p} ${target.name}`);
    return (await runAction(action, env, { saved: records.get(target.name)!.saved, signal: controller.signal })).value;
  };
  try {
    for (const t of targets) {
      const r = records.get(t.name)!;
      if (isFencing(t)) fenced.push(t.name); // a failed raise lowers its own fence; lowering again is a no-op
      r.saved = await step(t, 'prepare');
      r.state = 'prepared';
      await log(r);
    }
    if (opts.barrier) {
      phase = 'barrier';
      current = 'barrier';
      if (controller.signal.aborted) throw new CutoverTimeout();
      say('barrier: green catches up while the fence holds');
      await opts.barrier(controller.signal);
    }
    for (const t of targets) {
      const r = records.get(t.name)!;
      r.order = touched.length;
      r.state = 'committing';
      touched.push(t.name);
      await log(r);
      await step(t, 'commit');
      r.state = 'committed';
      await log(r);
    }
    for (const t of targets) {
      await step(t, 'verify');
      records.get(t.name)!.state = 'verified';
    }
    for (const t of targets) records.get(t.name)!.state = 'committed';
  } catch (err) {
    const timedOut = controller.signal.aborted;
    failure = timedOut
      ? { target: current, phase: 'timeout', message: `the cutover did not finish within ${opts.timeoutMs / 1000}s (stopped during ${phase} of ${current})` }
      : { target: current, phase, message: err instanceof ActionFailed || err instanceof Error ? err.message : String(err) };
    const r = records.get(current);
    if (r && !timedOut) r.error = failure.message;
  } finally {
    clearTimeout(timer);
  }
  let rollbackFailures: { target: string; message: string }[] = [];
  // Committed targets newest first, then the fences still up (lowered on blue once the rest is back).
  const rollbackOrder = failure ? [...[...touched].reverse(), ...fenced.filter((n) => !touched.includes(n))] : [];
  if (failure) {
    say(`rolling back ${rollbackOrder.join(', ') || 'nothing (no target was committed)'}`);
    // The target whose commit failed may have half-applied: rollback actions must be idempotent.
    rollbackFailures = await rollbackTargets(targets, records, rollbackOrder, env, log);
    for (const r of records.values()) if (r.state === 'prepared' || r.state === 'pending') r.state = r.name === failure.target ? 'failed' : r.state;
  }
  return { targets: [...records.values()], rolledBack: !!failure, failure, rollbackFailures, rollbackOrder, ms: Math.round(performance.now() - started) };
}
