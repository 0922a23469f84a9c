// The proof that the plan is the execution: every action `migrate plan --json` printed is a journal
// unit that ran, with the very SQL the plan showed, and no unit ran that the plan did not show. The
// demo reports it and the tests assert it; records a step keeps beside its actions (each cutover
// target's state, the lever's saved TTL, the stream's slot) are the only other units allowed.

import type { JournalRow } from '../src/state/journal.ts';

/** A planned step as `plan --json` prints it. */
export interface PlannedStep {
  /** Step name. */
  step: string;
  /** Its actions (id and SQL are what is compared). */
  actions: readonly { id: string; sql?: string }[];
}

/** One difference between plan and journal. */
export interface PlanDifference {
  /** `<step>/<unit>`. */
  unit: string;
  /** not-run: planned, no finished unit; sql: the journal's SQL differs; unplanned: ran, not in the plan. */
  problem: 'not-run' | 'sql' | 'unplanned';
}

/** The comparison's figures. */
export interface PlanCheck {
  /** Planned actions compared. */
  actions: number;
  /** Of those, actions that carry SQL and whose journalled SQL is the same text. */
  sqlMatched: number;
  /** Every difference (empty when the plan is the execution). */
  differences: PlanDifference[];
}

/** Units a step journals beside its actions: records, not work. */
const RECORD_UNIT = /^(target:.+|ttl|slot)$/;

/** Compares the planned steps with the journal rows of the run that executed them. */
export function comparePlanWithJournal(planned: readonly PlannedStep[], rows: readonly Pick<JournalRow, 'step' | 'unit' | 'status' | 'detail'>[]): PlanCheck {
  const differences: PlanDifference[] = [];
  let actions = 0;
  let sqlMatched = 0;
  for (const s of planned) {
    const units = new Map(rows.filter((r) => r.step === s.step && r.unit !== '').map((r) => [r.unit, r]));
    const ids = new Set(s.actions.map((a) => a.id));
    for (const a of s.actions) {
      actions++;
      const row = units.get(a.id);
      if (!row || row.status !== 'done') differences.push({ unit: `${s.step}/${a.id}`, problem: 'not-run' });
      else if ((row.detail.sql as string | undefined) !== a.sql) differences.push({ unit: `${s.step}/${a.id}`, problem: 'sql' });
      else if (a.sql !== undefined) sqlMatched++;
    }
    for (const unit of units.keys()) if (!ids.has(unit) && !RECORD_UNIT.test(unit)) differences.push({ unit: `${s.step}/${unit}`, problem: 'unplanned' });
  }
  return { actions, sqlMatched, differences };
}
