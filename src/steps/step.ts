// The Step contract (after pgroll's operations): validate without writing, plan the actions, run
// exactly those actions, verify the postcondition, and roll back where that is possible. `migrate
// plan` prints what `plan()` returns; `migrate apply` runs the same list.

import type { ResolvedConfig } from '../config/load.ts';
import { faultPoint } from '../fault.ts';
import { locateFailure, type Db } from '../db/connect.ts';
import type { Side } from '../errors.ts';
import type { MigrationSource } from '../sources/types.ts';
import type { Journal } from '../state/journal.ts';

/** Names of the steps, in the order `apply` runs them. */
export const STEP_ORDER = ['preflight', 'capture', 'snapshot', 'cleanup', 'migrate', 'validate'] as const;
/** Steps of an in-place run (`apply --in-place`): on blue itself, no copy. */
export const IN_PLACE_STEP_ORDER = ['constraints', 'migrate-in-place'] as const;
/** A step name. */
export type StepName = (typeof STEP_ORDER)[number] | (typeof IN_PLACE_STEP_ORDER)[number];

/** One thing a step will do: shown by `plan`, executed and journalled by `apply`. */
export interface Action {
  /** Stable id inside the step; also the journal unit key. */
  id: string;
  /** One sentence for humans. */
  sentence: string;
  /** Which database it touches. */
  side: Side | 'both' | 'none';
  /** The SQL it runs, when it is SQL. */
  sql?: string;
  /** Extra figures (row counts, sample keys) for the plan. */
  facts?: Record<string, unknown>;
}

/** Operator choices that change how steps behave. */
export interface RunOptions {
  /** Accept copying the remaining tables from a new snapshot after a crash (gives up cross-table consistency). */
  acceptNewSnapshot: boolean;
  /** Parallel workers for copy and index builds. */
  jobs: number;
  /** Start over: green may be wiped if it carries our marker. */
  restart: boolean;
  /** Continue the unfinished run. */
  resume: boolean;
  /** Copy verification: checksums of very large tables sampled, or every row with `--verify full`. */
  verify: 'sample' | 'full';
  /** In-place mode: false runs the statements as written (`--no-rewrite`). */
  rewrite?: boolean;
  /** Accept a migrations folder with nothing pending: a pure copy (`--allow-no-migrations`). */
  allowNoMigrations?: boolean;
}

/** What every step gets. */
export interface StepContext {
  /** The checked config. */
  config: ResolvedConfig;
  /** Control connection to blue (holds the run lock during apply). */
  blue: Db;
  /** Control connection to green. */
  green: Db;
  /** The journal of the current run; null for read-only commands (`plan`). */
  journal: Journal | null;
  /** The migration source named by the config. */
  source: MigrationSource;
  /** Operator options. */
  options: RunOptions;
  /** Progress line for the current step (listr2 on a TTY, plain lines otherwise). */
  progress: (text: string) => void;
}

/** The contract every step satisfies (checked at compile time with `satisfies Step`). */
export interface Step {
  /** The step's name. */
  readonly name: StepName;
  /** Why the step exists, one sentence. */
  readonly purpose: string;
  /** Checks preconditions; never writes. Runs for every step before any step runs. */
  validate(ctx: StepContext): Promise<void>;
  /** The actions the step will take, computed from the current state. */
  plan(ctx: StepContext): Promise<Action[]>;
  /** Executes the planned actions; returns figures for the report. */
  run(ctx: StepContext, actions: Action[]): Promise<Record<string, unknown>>;
  /** Checks the postcondition; throws when it does not hold. */
  verify(ctx: StepContext): Promise<void>;
  /** Undoes the step where possible. */
  rollback?(ctx: StepContext): Promise<void>;
}

/** Runs `fn` for a journal unit unless it is already done; returns the detail (stored or new). */
export async function unitOnce(ctx: StepContext, step: StepName, unit: string, fn: () => Promise<Record<string, unknown>>, done?: Map<string, Record<string, unknown>>): Promise<{ skipped: boolean; detail: Record<string, unknown> }> {
  const journal = ctx.journal;
  if (!journal) throw new Error(`step ${step} tried to run without a journal`);
  const finished = done ?? (await journal.done(step));
  const previous = finished.get(unit);
  if (previous) return { skipped: true, detail: previous };
  await journal.start(step, unit);
  await faultPoint('before', step, unit);
  try {
    const detail = await fn();
    await journal.finish(step, unit, detail);
    await faultPoint('after', step, unit);
    return { skipped: false, detail };
  } catch (err) {
    // A side going away (or a statement timeout) is reported with this unit and the resume command.
    const located = locateFailure(err, `${step}/${unit}`, ctx.config.file);
    await journal.fail(step, unit, (located as Error).message).catch(() => {});
    throw located;
  }
}
