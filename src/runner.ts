// The one coordinator: validates every step before anything is written, then runs each step's plan
// under the journal, skipping what a previous attempt finished. It returns results (kysely-style)
// instead of throwing halfway; the CLI prints them and exits with the error's code.

import crypto from 'node:crypto';
import type { ResolvedConfig } from './config/load.ts';
import { connect, locateFailure, type Db } from './db/connect.ts';
import { describeDsn } from './db/redact.ts';
import { asOperatorError, OperatorError, StateError, withContinuation } from './errors.ts';
import { createSource } from './sources/index.ts';
import { acquireRunLock, installState, Journal, latestRun, openRun, type ResumeMode } from './state/journal.ts';
import { capture } from './steps/capture.ts';
import { cleanup } from './steps/cleanup.ts';
import { migrate } from './steps/migrate.ts';
import { preflight } from './steps/preflight.ts';
import { snapshot } from './steps/snapshot.ts';
import { stampOf, type Action, type InputStamp, type RunOptions, type Step, type StepContext, type StepInputs, type StepName } from './steps/step.ts';
import { validate } from './steps/validate.ts';

/** Every step, in the order apply runs them. */
export const STEPS: readonly Step[] = [preflight, capture, snapshot, cleanup, migrate, validate];

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
  /** Actions executed (the plan). */
  actions?: Action[];
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
  const sourceConfig = config.raw.migrations.kind === 'command' ? config.raw.migrations : { ...config.raw.migrations, dir: config.migrationsDir ?? config.raw.migrations.dir };
  const source = createSource(sourceConfig, { greenDsn: config.greenDsn });
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
export async function planAll(ctx: StepContext, steps: readonly Step[] = STEPS, finished: ReadonlySet<StepName> = new Set()): Promise<{ step: StepName; purpose: string; actions: Action[] }[]> {
  for (const s of steps) await s.validate(ctx);
  const out = [];
  for (const s of steps) out.push({ step: s.name, purpose: s.purpose, actions: finished.has(s.name) ? [] : await s.plan(ctx) });
  return out;
}

/**
 * Where one step of an unfinished run stands for `apply --resume`. `plan` shows it and `apply`
 * acts on it; both get it from {@link resumeState}, so what plan says would run is what runs.
 */
export interface ResumeStatus {
  /** The step. */
  step: StepName;
  /** done: skipped; remaining: not finished, runs its unfinished units; reopened: finished, runs again; refused: resume stops (exit 3). */
  status: 'done' | 'remaining' | 'reopened' | 'refused';
  /** Finished units (not the step's own row). */
  doneUnits: string[];
  /** Finished units that run again (their inputs changed, or they check units that do). */
  reopenedUnits: string[];
  /**
   * A step re-opened for its own inputs runs only these units (new or changed, and their dependents):
   * the others were judged on green as it was then, and green may since have moved on (migrations).
   */
  runUnits?: string[];
  /** Why the step is re-opened or refused, or what a finished step keeps. */
  reason?: string;
  /** For a refusal: what to do. */
  hint?: string;
}

/** The units of `actions` that a resume still runs for this step. */
export function remainingUnits(status: ResumeStatus, actions: readonly Action[]): string[] {
  if (status.status === 'done' || status.status === 'refused') return [];
  if (status.runUnits) return actions.map((a) => a.id).filter((id) => status.runUnits!.includes(id));
  const done = new Set(status.doneUnits.filter((u) => !status.reopenedUnits.includes(u)));
  return actions.map((a) => a.id).filter((id) => !done.has(id));
}

/** Stamps of a step's declared inputs, per unit. */
function stampsOf(inputs: StepInputs): Map<string, InputStamp> {
  return new Map([...inputs.units].map(([unit, u]) => [unit, stampOf(u)]));
}

const label = (unit: string): string => (unit === '' ? 'the step\'s inputs' : unit);
const clip = (text: string): string => (text.length > 160 ? `${text.slice(0, 157)}...` : text);

/**
 * Compares a step's declared inputs now with what its finished work was journalled with, and
 * applies the step's policy: a changed `rerun` unit runs again (with the step's dependents), a
 * changed `refuse` unit that finished stops the resume, a new unit runs unless it sorts before a
 * finished one of a `refuse-before-finished` step. `upstream` names an earlier re-opened step.
 */
function judge(name: StepName, inputs: StepInputs | null, done: Map<string, Record<string, unknown>>, upstream: StepName | null, restartHint: string): ResumeStatus {
  const stepRow = done.get('');
  const doneUnits = [...done.keys()].filter((u) => u !== '');
  const base = { step: name, doneUnits, reopenedUnits: [] as string[] };
  if (!inputs) {
    if (stepRow && upstream) return { ...base, status: 'reopened', reason: `runs again after ${upstream} was re-opened` };
    return { ...base, status: stepRow ? 'done' : 'remaining' };
  }
  const recorded = (stepRow?.inputUnits ?? null) as Record<string, InputStamp> | null;
  const stored = (unit: string): InputStamp | undefined => (unit !== '' ? (done.get(unit)?.inputs as InputStamp | undefined) : undefined) ?? recorded?.[unit];
  const finished = (unit: string): boolean => (unit === '' ? !!stepRow : done.has(unit));
  const now = stampsOf(inputs);
  const refusals: string[] = [];
  const reruns: string[] = [];
  const notes: string[] = [];
  const reopen = new Set<string>();
  const rerun = new Set<string>();
  const order = [...now.keys()];
  for (const [i, unit] of order.entries()) {
    const was = stored(unit);
    const is = now.get(unit)!;
    const declared = inputs.units.get(unit)!;
    if (was && was.digest !== is.digest && !declared.coveredBy?.(was)) {
      if (!finished(unit) && !stepRow) continue; // it has not run yet: it simply runs with today's inputs
      const what = `${label(unit)} changed since it ran (was ${clip(was.summary)}; now ${clip(is.summary)})`;
      if (declared.whenChanged === 'refuse' && finished(unit)) refusals.push(what);
      else {
        reruns.push(what);
        rerun.add(unit);
        if (unit !== '' && finished(unit)) reopen.add(unit);
      }
    } else if (!was && !finished(unit)) {
      const later = order.slice(i + 1).find((u) => finished(u) && u !== '');
      if (inputs.whenAdded === 'refuse-before-finished' && later) refusals.push(`${unit} (${clip(is.summary)}) is not done but sorts before ${later}, which already ran; running it now would apply them out of order`);
      else if (stepRow && recorded) {
        reruns.push(`${unit} is new (${clip(is.summary)})`);
        rerun.add(unit);
      }
    }
  }
  const gone = new Set([...Object.keys(recorded ?? {}), ...doneUnits.filter((u) => done.get(u)?.inputs)]);
  for (const unit of gone) {
    if (now.has(unit)) continue;
    const what = `${unit} is no longer declared (was ${clip(stored(unit)?.summary ?? '?')})`;
    if (inputs.whenRemoved === 'refuse' && finished(unit)) refusals.push(`${what}, but it already ran on green`);
    else notes.push(`${what}; what it did stays`);
  }
  if (refusals.length) return { ...base, status: 'refused', reason: refusals.join('; '), hint: inputs.refuseHint ?? restartHint };
  if (reruns.length || (upstream && stepRow)) {
    for (const d of inputs.dependents ?? []) {
      if (done.has(d)) reopen.add(d);
      if (reruns.length) rerun.add(d);
    }
    const why = reruns.length ? reruns : [`runs again after ${upstream} was re-opened`];
    // Only a step that finished is narrowed to its changed units; an unfinished one runs what it has left.
    const only = stepRow && reruns.length && !rerun.has('') ? { runUnits: [...rerun] } : {};
    if (stepRow || reopen.size) return { ...base, status: 'reopened', reopenedUnits: [...reopen], ...only, reason: [...why, ...notes].join('; ') };
  }
  return { ...base, status: stepRow ? 'done' : 'remaining', ...(notes.length ? { reason: notes.join('; ') } : {}) };
}

/**
 * What `apply --resume` will do with each step of `journal`'s run: read-only, so `plan` shows it
 * and `apply` decides with it before anything is written. Steps after a re-opened step run again
 * too: their inputs are its results.
 */
export async function resumeState(ctx: StepContext, journal: Journal, steps: readonly Step[] = STEPS, restartHint = `run \`migrate apply --restart --config ${ctx.config.file}\` to rebuild green from a new copy`): Promise<ResumeStatus[]> {
  const out: ResumeStatus[] = [];
  let upstream: StepName | null = null;
  for (const s of steps) {
    const done = await journal.done(s.name);
    const inputs = s.inputs && done.size ? await s.inputs(ctx) : null;
    let status = judge(s.name, inputs, done, upstream, restartHint);
    const blocked = status.status === 'reopened' && inputs?.reopenable ? await inputs.reopenable() : null;
    if (blocked) status = { ...status, status: 'refused', reason: `${status.reason}; but ${blocked}`, hint: inputs?.refuseHint ?? restartHint };
    if (status.status === 'reopened') upstream ??= s.name;
    out.push(status);
  }
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
export async function apply(ctx: StepContext, mode: ResumeMode, sink: ProgressSink, steps: readonly Step[] = STEPS, opts: { rehearsal?: boolean } = {}): Promise<ApplyOutcome> {
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
        const only = resumePlan.find((p) => p.step === s.name)?.runUnits;
        const planned = (await s.plan(ctx)).filter((a) => !only || only.includes(a.id));
        const out = await s.run(ctx, planned);
        await s.verify(ctx);
        await journal.finish(s.name, '', stamps ? { ...out, inputUnits: Object.fromEntries(stamps) } : out);
        return { detail: out, actions: planned };
      });
      results.push({ name: s.name, status: 'done', ms: Date.now() - started, detail, actions });
    } catch (err) {
      error = withContinuation(asOperatorError(locateFailure(err, s.name, ctx.config.file)), `migrate apply${opts.rehearsal ? ' --dry-run' : ''} --resume --config ${ctx.config.file}`);
      await journal.fail(s.name, '', error.message).catch(() => {});
      results.push({ name: s.name, status: 'failed', ms: Date.now() - started, detail: error.toJSON() });
    } finally {
      ctx.progress = () => {};
      ctx.inputStamps = undefined;
    }
  }
  // With blue gone the run cannot be marked failed; the error that stopped it is the one to report.
  await journal.updateRun({ status: error ? 'failed' : 'done' }).catch((err: unknown) => {
    if (!error) throw err;
  });
  return { runId: run.run_id, resumed, results, error };
}
