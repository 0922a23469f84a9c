// The runner's hands: executes a step's planned actions, and nothing else. Each action is one
// journal unit: skipped when a previous attempt finished it, otherwise started, run (its `sql` on its
// side in one transaction, or its `execute`), timed and journalled with the SQL it ran. Steps never
// execute their own plan; what `plan --json` prints is what this runs.

import { locateFailure, query, withTransaction, type Db } from './db/connect.ts';
import { runGraph } from './db/parallel.ts';
import type { Action, Lane, Step, StepContext } from './steps/step.ts';

/** One action's outcome in a step result. */
export interface ActionOutcome {
  /** Action id (journal unit). */
  id: string;
  /** done: ran now; skipped: a previous attempt finished it. */
  status: 'done' | 'skipped';
  /** Wall time of this attempt (0 when skipped). */
  ms: number;
}

/** What running a step's actions produced. */
export interface StepExecution {
  /** The step's figures (its `summarize`, or the number of actions). */
  detail: Record<string, unknown>;
  /** Per-action outcome, in plan order. */
  outcomes: ActionOutcome[];
}

function sideDb(lane: Lane, action: Action): Db {
  const db = action.side === 'blue' ? lane.blue : action.side === 'green' ? lane.green : null;
  if (!db) throw new Error(`action ${action.id} has SQL but no single side to run it on (side ${action.side}); give it an execute`);
  return db;
}

/** Runs one action as a journal unit of `step`; returns its journalled detail. */
async function runAction(ctx: StepContext, step: string, action: Action, lane: Lane, details: ReadonlyMap<string, Record<string, unknown>>): Promise<Record<string, unknown>> {
  const journal = ctx.journal;
  if (!journal) throw new Error(`step ${step} tried to run without a journal`);
  await journal.start(step, action.id);
  await ctx.hooks?.beforeUnit?.(step, action.id);
  const started = Date.now();
  try {
    let figures: Record<string, unknown> | void = undefined;
    if (action.execute) figures = await action.execute({ ctx, action, lane, details });
    else if (action.sql !== undefined) {
      const db = sideDb(lane, action);
      const side = action.side as 'blue' | 'green';
      await withTransaction(db, () => query(db, action.sql!, [], { side, sql: action.sql! }), { side });
    }
    const stamp = ctx.inputStamps?.get(step)?.get(action.id);
    const detail: Record<string, unknown> = { ...(figures ?? {}), ms: Date.now() - started, ...(action.sql !== undefined ? { sql: action.sql } : {}), ...(stamp ? { inputs: stamp } : {}) };
    await journal.finish(step, action.id, detail);
    await ctx.hooks?.afterUnit?.(step, action.id);
    return detail;
  } catch (err) {
    // A side going away (or a statement timeout) is reported with this unit and the resume command.
    const located = locateFailure(err, `${step}/${action.id}`, ctx.config.file);
    await journal.fail(step, action.id, (located as Error).message).catch(() => {});
    throw located;
  }
}

/**
 * Executes `planned` for `step` (on the control connections, or on the lanes its scope opens), in
 * dependency order, then returns the step's figures. Actions a previous attempt finished are not run
 * again; their journalled detail is passed on to later actions and to `summarize`.
 */
export async function executeStep(ctx: StepContext, step: Step, planned: readonly Action[]): Promise<StepExecution> {
  const journal = ctx.journal;
  if (!journal) throw new Error(`step ${step.name} tried to run without a journal`);
  const scope = (await step.open?.(ctx, planned)) ?? {};
  // Read after open: a scope may re-open units whose work green lost (snapshot on --resume).
  const details = await journal.done(step.name);
  const outcomes = new Map<string, ActionOutcome>(planned.map((a) => [a.id, { id: a.id, status: details.has(a.id) ? 'skipped' : 'done', ms: 0 }]));
  try {
    const pending = planned.filter((a) => !details.has(a.id));
    const tasks = pending.map((action, i) => ({ id: action.id, after: action.after ?? (i > 0 ? [pending[i - 1]!.id] : []), priority: action.priority ?? -i, action }));
    const control: Lane = { green: ctx.green, blue: ctx.blue };
    const lanes = scope.lanes ?? 1;
    await runGraph(
      tasks,
      lanes,
      async () => (scope.openLane ? scope.openLane() : control),
      async (lane, task) => {
        const started = Date.now();
        const detail = await runAction(ctx, step.name, task.action, lane, details);
        details.set(task.id, detail);
        const ms = Date.now() - started;
        outcomes.set(task.id, { id: task.id, status: 'done', ms });
        await scope.settled?.(task.action, detail, ms, lane);
      },
      async (lane) => {
        if (lane !== control) await scope.closeLane?.(lane);
      },
    );
  } finally {
    await scope.close?.();
  }
  const detail = step.summarize ? await step.summarize(ctx, details) : { actions: planned.length };
  return { detail, outcomes: [...outcomes.values()] };
}

/** Runs plain SQL actions of one side in one transaction, all of them or none (removals: capture's rollback, `migrate finish`). */
export async function runSqlActions(db: Db, side: 'blue' | 'green', actions: readonly Action[]): Promise<void> {
  if (!actions.length) return;
  await withTransaction(db, async () => {
    for (const a of actions) await query(db, a.sql!, [], { side, sql: a.sql! });
  }, { side });
}
