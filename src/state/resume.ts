// Resume agrees with plan: what `apply --resume` will do with each step of an unfinished run, judged
// from the inputs each step declares against those its finished work was journalled with. `plan`
// shows it and `apply` acts on it, from this one function, before anything is written.

import type { Journal } from './journal.ts';
import { stampOf, type Action, type InputStamp, type Step, type StepContext, type StepInputs, type StepName } from '../steps/step.ts';

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

/** Stamps of a step's declared inputs, per unit (journalled with the work, compared on resume). */
export function stampsOf(inputs: StepInputs): Map<string, InputStamp> {
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
export async function resumeState(ctx: StepContext, journal: Journal, steps: readonly Step[], restartHint = `run \`migrate apply --restart --config ${ctx.config.file}\` to rebuild green from a new copy`): Promise<ResumeStatus[]> {
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
