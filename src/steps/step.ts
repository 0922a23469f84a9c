// The Step contract (after pgroll's operations): validate without writing, plan the actions, run
// exactly those actions, verify the postcondition, and roll back where that is possible. `migrate
// plan` prints what `plan()` returns; `migrate apply` runs the same list.

import crypto from 'node:crypto';
import type { ResolvedConfig } from '../config/load.ts';
import type { CutoverWiring } from '../cutover/wiring.ts';
import type { UnitHooks } from '../drill.ts';
import type { Db } from '../db/connect.ts';
import type { Side } from '../errors.ts';
import type { MigrationSource } from '../sources/types.ts';
import type { Journal } from '../state/journal.ts';

/** Names of the steps, in the order `apply` runs them. */
export const STEP_ORDER = ['preflight', 'capture', 'snapshot', 'cleanup', 'migrate', 'validate'] as const;
/** Steps apply adds when the config enables them (`stream.enabled`), after the others. */
export const OPTIONAL_STEP_ORDER = ['stream'] as const;
/** Steps of an in-place run (`apply --in-place`): on blue itself, no copy. */
export const IN_PLACE_STEP_ORDER = ['constraints', 'migrate-in-place'] as const;
/** Steps of `migrate cutover`, run on the journal of the finished apply. */
export const CUTOVER_STEP_ORDER = ['lever', 'cutover', 'drain', 'recheck', 'watch', 'restore-ttl'] as const;
/** A step name. */
export type StepName = (typeof STEP_ORDER)[number] | (typeof OPTIONAL_STEP_ORDER)[number] | (typeof IN_PLACE_STEP_ORDER)[number] | (typeof CUTOVER_STEP_ORDER)[number];

/** The connections an action runs on: the control connections, or one parallel lane's own (snapshot). */
export interface Lane {
  /** Green connection of this lane. */
  green: Db;
  /** Blue connection of this lane (a lane may open it late, e.g. inside the exported snapshot). */
  blue: Db | null;
}

/** What an action's `execute` gets from the runner. */
export interface ActionRun {
  /** The step context. */
  ctx: StepContext;
  /** The action being run (its `sql` is what it must run). */
  action: Action;
  /** The lane's connections. */
  lane: Lane;
  /** Details of the step's finished actions so far (journalled ones included), by action id. */
  details: ReadonlyMap<string, Record<string, unknown>>;
}

/**
 * One thing a step will do: shown by `plan`, then executed, timed and journalled by the runner
 * (one journal unit per action). Without `execute` the runner runs `sql` on `side` in one
 * transaction; with it, `execute` runs exactly `sql` (when set) and may add figures to the journal.
 */
export interface Action {
  /** Stable id inside the step; also the journal unit key. */
  id: string;
  /** One sentence for humans. */
  sentence: string;
  /** Which database it touches. */
  side: Side | 'both' | 'none';
  /** The SQL it runs, when it is SQL; journalled with the unit as it ran. */
  sql?: string;
  /** Extra figures (row counts, sample keys) for the plan. */
  facts?: Record<string, unknown>;
  /** How it runs when it is more than one SQL text on one side; returns figures for the journal. */
  execute?: (run: ActionRun) => Promise<Record<string, unknown> | void>;
  /** Ids of this step's actions that must finish first (default: the action before it). */
  after?: readonly string[];
  /** Among ready actions, higher starts first (default: plan order). */
  priority?: number;
}

/** Resources a step holds while the runner executes its actions (parallel lanes, an exported snapshot). */
export interface StepScope {
  /** How many actions may run at once (default 1, on the control connections). */
  lanes?: number;
  /** Opens one lane's own connections; without it every action runs on the control connections. */
  openLane?: () => Promise<Lane>;
  /** Closes a lane opened by `openLane`. */
  closeLane?: (lane: Lane) => Promise<void>;
  /** Called after each action finished (not for actions a previous attempt finished). */
  settled?: (action: Action, detail: Record<string, unknown>, ms: number, lane: Lane) => Promise<void>;
  /** Releases everything, after the last action or a failure. */
  close?: () => Promise<void>;
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
  /** Called around every journal unit; crash drills and tests inject them (src/drill.ts). */
  hooks?: UnitHooks;
  /** What the cutover steps need (targets, KV, queue, watch); set by the commands that run them. */
  cutover?: CutoverWiring;
  /** Input stamps per step and unit (set by the runner), journalled with each unit it runs. */
  inputStamps?: ReadonlyMap<string, ReadonlyMap<string, InputStamp>>;
}

/**
 * What one journal unit's work depends on (a step's own unit is ''). The runner digests `value`,
 * journals the stamp when the unit finishes, and on `--resume` compares it with the inputs now.
 */
export interface UnitInputs {
  /** The inputs themselves (JSON; key order does not matter). */
  value: unknown;
  /** Short human text naming them, journalled with the digest so a reason can say what changed. */
  summary: string;
  /** rerun: the unit runs again when they changed (its effect only adds); refuse: a finished unit cannot be redone on this green. */
  whenChanged: 'rerun' | 'refuse';
  /** True when the inputs a finished unit ran with still cover today's (e.g. a full check covers a sampled one). */
  coveredBy?: (stored: InputStamp) => boolean;
}

/** A step's declared inputs, in run order of its units. */
export interface StepInputs {
  /** Inputs per journal unit id ('' for the step as a whole). */
  units: ReadonlyMap<string, UnitInputs>;
  /** Units that run again whenever any unit of the step is re-opened (they check what the others did). */
  dependents?: readonly string[];
  /** A unit that is new since the step ran: run it, or refuse when it sorts before a finished one (order matters). */
  whenAdded: 'run' | 'refuse-before-finished';
  /** A finished unit that is no longer declared: its effect stays, or the resume is refused. */
  whenRemoved: 'keep' | 'refuse';
  /** The hint of a refusal (default: `--restart`). */
  refuseHint?: string;
  /** Asked only when the step would run again: why it cannot on green as it is now (null: it can). */
  reopenable?: () => Promise<string | null>;
}

/** A unit's inputs as journalled: digest and summary. */
export interface InputStamp {
  /** sha256 (hex, first 16) of the canonical JSON of the inputs. */
  digest: string;
  /** UnitInputs.summary. */
  summary: string;
}

/** JSON with object keys sorted, so equal inputs always give the same digest. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value ?? null);
}

/** Digest of inputs: sha256 (hex, first 16) of their canonical JSON. */
export function digestOf(value: unknown): string {
  return crypto.createHash('sha256').update(canonical(value)).digest('hex').slice(0, 16);
}

/** The stamp journalled for one unit's inputs. */
export function stampOf(inputs: UnitInputs): InputStamp {
  return { digest: digestOf(inputs.value), summary: inputs.summary };
}

/** The contract every step satisfies (checked at compile time with `satisfies Step`). */
export interface Step {
  /** The step's name. */
  readonly name: StepName;
  /** Why the step exists, one sentence. */
  readonly purpose: string;
  /** Checks preconditions; never writes. Runs for every step before any step runs. */
  validate(ctx: StepContext): Promise<void>;
  /** The actions the step will take, computed from the current state: `plan` prints them, `apply` runs them. */
  plan(ctx: StepContext): Promise<Action[]>;
  /** Takes what the actions share before the first one runs (lanes, a snapshot); released by `close`. */
  open?(ctx: StepContext, actions: readonly Action[]): Promise<StepScope>;
  /** Figures for the report from every action's journalled detail (default: the number of actions). */
  summarize?(ctx: StepContext, details: ReadonlyMap<string, Record<string, unknown>>): Promise<Record<string, unknown>>;
  /** Checks the postcondition; throws when it does not hold. */
  verify(ctx: StepContext): Promise<void>;
  /** Undoes the step where possible (`migrate finish`, an abandoned run, a failed cutover). */
  rollback?(ctx: StepContext): Promise<Record<string, unknown> | void>;
  /** What the step's work depends on (read-only); `--resume` re-opens or refuses a finished step whose inputs changed. */
  inputs?(ctx: StepContext): Promise<StepInputs>;
}
