// The one coordinator: validates every step before anything is written, then runs each step's plan
// under the journal, skipping what a previous attempt finished. It returns results (kysely-style)
// instead of throwing halfway; the CLI prints them and exits with the error's code.

import crypto from 'node:crypto';
import type { ResolvedConfig } from './config/load.ts';
import { connect, locateFailure, type Db } from './db/connect.ts';
import { describeDsn } from './db/redact.ts';
import { asOperatorError, OperatorError, StateError, withContinuation } from './errors.ts';
import { sourceOf } from './sources/index.ts';
import { acquireRunLock, installState, Journal, latestRun, openRun, type ResumeMode } from './state/journal.ts';
import { capture } from './steps/capture.ts';
import { cleanup } from './steps/cleanup.ts';
import { migrate } from './steps/migrate.ts';
import { preflight } from './steps/preflight.ts';
import { snapshot } from './steps/snapshot.ts';
import type { Action, RunOptions, Step, StepContext, StepName } from './steps/step.ts';
import { resumeState, stampsOf } from './state/resume.ts';
import { stream } from './steps/stream.ts';
import { validate } from './steps/validate.ts';
import { executeStep, type ActionOutcome } from './run-step.ts';

/** Every step, in the order apply runs them (without the optional ones: see {@link applySteps}). */
export const STEPS: readonly Step[] = [preflight, capture, snapshot, cleanup, migrate, validate];

/** The steps apply runs for a config: STEPS, then the stream when `stream.enabled`. */
export function applySteps(config: ResolvedConfig): readonly Step[] {
  return config.raw.stream.enabled ? [...STEPS, stream] : STEPS;
}

/** Outcome of one step. */
export interface StepResult {
  /** Step name. */
  name: StepName;
  /** done: ran now; skipped: a previous attempt finished it; failed; not-run: an earlier step failed. */
  status: 'done' | 'skipped' | 'failed' | 'not-run';
  /** Wall time of this attempt. */
  ms: number;
  /** Figures the step reported. */
  detail?: Record<string, unknown>;
  /** Actions executed (the plan), each with how it went. */
  actions?: ReportedAction[];
}

/** A planned action as reports and `--json` show it: what it runs, and how this attempt went. */
export type ReportedAction = Omit<Action, 'execute' | 'after' | 'priority'> & Partial<Pick<ActionOutcome, 'status' | 'ms'>>;

/** An action without its code: what `plan --json` prints and what a report lists. */
export function describeAction(a: Action): ReportedAction {
  return { id: a.id, sentence: a.sentence, side: a.side, ...(a.sql !== undefined ? { sql: a.sql } : {}), ...(a.facts ? { facts: a.facts } : {}) };
}

function reported(planned: readonly Action[], outcomes: readonly ActionOutcome[]): ReportedAction[] {
  const by = new Map(outcomes.map((o) => [o.id, o]));
  return planned.map((a) => ({ ...describeAction(a), ...(by.get(a.id) ? { status: by.get(a.id)!.status, ms: by.get(a.id)!.ms } : {}) }));
}

/** Receives progress; the CLI renders it with listr2 on a TTY or as plain lines. */
export interface ProgressSink {
  /** Wraps one step's execution. */
  step<T>(name: StepName, title: string, fn: (update: (text: string) => void) => Promise<T>): Promise<T>;
}

/** Open connections plus the context every step gets. */
export interface Session {
  /** The step context (journal null until a run is opened). */
  ctx: StepContext;
  /** Closes both connections. */
  close(): Promise<void>;
}

/** Connects to both sides and builds a step context (no writes). */
export async function openSession(config: ResolvedConfig, options: RunOptions): Promise<Session> {
  const blue: Db = await connect('blue', config.blueDsn, 'migrate-control');
  let green: Db;
  try {
    green = await connect('green', config.greenDsn, 'migrate-control');
  } catch (err) {
    await blue.end().catch(() => {});
    throw err;
  }
  const source = sourceOf(config);
  const ctx: StepContext = { config, blue, green, journal: null, source, options, progress: () => {} };
  return {
    ctx,
    close: async () => {
      await blue.end().catch(() => {});
      await green.end().catch(() => {});
    },
  };
}

/** Digest of the config as written (no resolved secrets), recorded with each run. */
export function configDigest(config: ResolvedConfig): string {
  return crypto.createHash('sha256').update(JSON.stringify(config.raw)).digest('hex').slice(0, 16);
}

/** Every step's plan, computed read-only; steps in `finished` (done in the run being resumed) are not planned, as apply would not plan them. */
export async function planAll(ctx: StepContext, steps: readonly Step[], finished: ReadonlySet<StepName> = new Set()): Promise<{ step: StepName; purpose: string; actions: ReportedAction[] }[]> {
  for (const s of steps) await s.validate(ctx);
  const out = [];
  for (const s of steps) out.push({ step: s.name, purpose: s.purpose, actions: finished.has(s.name) ? [] : (await s.plan(ctx)).map(describeAction) });
  return out;
}

/** Outcome of an apply. */
export interface ApplyOutcome {
  /** The run worked on. */
  runId: string | null;
  /** True when an unfinished run was continued. */
  resumed: boolean;
  /** Per-step results. */
  results: StepResult[];
  /** The error that stopped the run, if any. */
  error: OperatorError | null;
}

/** Which steps `apply` runs; everything after a failure is reported as not-run. `rehearsal`: `apply --dry-run`, journalled as such. */
export async function apply(ctx: StepContext, mode: ResumeMode, sink: ProgressSink, steps: readonly Step[], opts: { rehearsal?: boolean } = {}): Promise<ApplyOutcome> {
  await acquireRunLock(ctx.blue);
  for (const s of steps) await s.validate(ctx);
  const last = await latestRun(ctx.blue, { kind: opts.rehearsal ? 'rehearsal' : 'real' });
  if (mode === 'resume' && !(last && (last.status === 'running' || last.status === 'failed'))) {
    const what = opts.rehearsal ? 'rehearsal' : 'run';
    throw new StateError(`there is no unfinished ${what} to resume`, `run \`migrate apply${opts.rehearsal ? ' --dry-run' : ''}\` without --resume to start a new ${what}`);
  }
  // Decided before anything is written: a refused change leaves both sides as they were.
  const resumePlan = mode === 'resume' && last ? await resumeState(ctx, new Journal(ctx.blue, last.run_id), steps, `run \`migrate apply${opts.rehearsal ? ' --dry-run' : ''} --restart --config ${ctx.config.file}\` to rebuild green from a new copy`) : [];
  const refused = resumePlan.find((p) => p.status === 'refused');
  if (refused) {
    throw new StateError(`cannot resume run ${last!.run_id}: the ${refused.step} step's inputs changed after it ran: ${refused.reason}`, refused.hint ?? '', { step: refused.step, reason: refused.reason });
  }
  await installState(ctx.blue);
  const { run, resumed } = await openRun(ctx.blue, { mode, configDigest: configDigest(ctx.config), greenTarget: describeDsn(ctx.config.greenDsn), rehearsal: !!opts.rehearsal });
  const journal = new Journal(ctx.blue, run.run_id);
  ctx.journal = journal;
  for (const p of resumePlan) if (p.status === 'reopened') await journal.reopen(p.step, p.reopenedUnits);
  const continuation = `migrate apply${opts.rehearsal ? ' --dry-run' : ''} --resume --config ${ctx.config.file}`;
  const { results, error } = await runSteps(ctx, steps, sink, { continuation, only: (step) => resumePlan.find((p) => p.step === step)?.runUnits });
  // With blue gone the run cannot be marked failed; the error that stopped it is the one to report.
  await journal.updateRun({ status: error ? 'failed' : 'done' }).catch((err: unknown) => {
    if (!error) throw err;
  });
  return { runId: run.run_id, resumed, results, error };
}

/** Options of {@link runSteps}. */
export interface RunStepsOptions {
  /** The command that continues after a failure (added to the error's hint). */
  continuation: string;
  /** The only action ids to run of a step (a resume re-opening some units); undefined: all. */
  only?: (step: StepName) => readonly string[] | undefined;
}

/**
 * Runs `steps` in order on the journal in `ctx`: a step the journal calls done is skipped, the
 * others are planned, executed action by action (src/run-step.ts), verified and journalled. The
 * first failure stops the run; later steps are reported as not-run. Used by apply and by cutover.
 */
export async function runSteps(ctx: StepContext, steps: readonly Step[], sink: ProgressSink, opts: RunStepsOptions): Promise<{ results: StepResult[]; error: OperatorError | null }> {
  const journal = ctx.journal;
  if (!journal) throw new Error('runSteps needs a journal');
  const results: StepResult[] = [];
  let error: OperatorError | null = null;
  for (const s of steps) {
    if (error) {
      results.push({ name: s.name, status: 'not-run', ms: 0 });
      continue;
    }
    const previous = (await journal.done(s.name)).get('');
    if (previous) {
      results.push({ name: s.name, status: 'skipped', ms: 0, detail: previous });
      continue;
    }
    const started = Date.now();
    try {
      const { detail, actions } = await sink.step(s.name, s.purpose, async (update) => {
        ctx.progress = update;
        await journal.start(s.name);
        // Taken before the work, so they describe what it ran with; journalled per unit and with the step.
        const stamps = s.inputs ? stampsOf(await s.inputs(ctx)) : null;
        ctx.inputStamps = stamps ? new Map([[s.name, stamps]]) : undefined;
        const only = opts.only?.(s.name);
        const planned = (await s.plan(ctx)).filter((a) => !only || only.includes(a.id));
        const { detail: out, outcomes } = await executeStep(ctx, s, planned);
        await s.verify(ctx);
        await journal.finish(s.name, '', stamps ? { ...out, inputUnits: Object.fromEntries(stamps) } : out);
        return { detail: out, actions: reported(planned, outcomes) };
      });
      results.push({ name: s.name, status: 'done', ms: Date.now() - started, detail, actions });
    } catch (err) {
      error = withContinuation(asOperatorError(locateFailure(err, s.name, ctx.config.file)), opts.continuation);
      await journal.fail(s.name, '', error.message).catch(() => {});
      results.push({ name: s.name, status: 'failed', ms: Date.now() - started, detail: error.toJSON() });
    } finally {
      ctx.progress = () => {};
      ctx.inputStamps = undefined;
    }
  }
  return { results, error };
}
