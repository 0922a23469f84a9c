// The all-or-nothing flip (the seeds flipped three systems by hand and could not flip them back):
// prepare every target, commit every target, verify every target. Any failure, or the overall
// timeout, rolls back every target whose commit started, newest first. Each state change is
// recorded (journal) before the next action, so `migrate rollback` can finish the job after a crash.

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
  /** Phase it failed in. */
  phase: 'prepare' | 'commit' | 'verify' | 'timeout';
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

/** Runs prepare-all, commit-all, verify-all under one timeout; rolls back on any failure. */
export async function twoPhaseCutover(targets: readonly TargetSpec[], env: ActionEnv, opts: { timeoutMs: number; log?: TargetLog; progress?: (text: string) => void }): Promise<CutoverOutcome> {
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
      r.saved = await step(t, 'prepare');
      r.state = 'prepared';
      await log(r);
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
  const rollbackOrder = failure ? [...touched].reverse() : [];
  if (failure) {
    say(`rolling back ${rollbackOrder.join(', ') || 'nothing (no target was committed)'}`);
    // The target whose commit failed may have half-applied: rollback actions must be idempotent.
    rollbackFailures = await rollbackTargets(targets, records, rollbackOrder, env, log);
    for (const r of records.values()) if (r.state === 'prepared' || r.state === 'pending') r.state = r.name === failure.target ? 'failed' : r.state;
  }
  return { targets: [...records.values()], rolledBack: !!failure, failure, rollbackFailures, rollbackOrder, ms: Math.round(performance.now() - started) };
}
