// Cutover and lever state in the run journal on blue: every target's state and the value its
// prepare read, written before the next action runs. `migrate rollback` and `migrate status` read
// it back, so an interrupted cutover can be undone precisely from another process.

import type { Journal } from '../state/journal.ts';
import type { TargetLog, TargetRecord } from './coordinator.ts';

/** Journal step names used by the cutover half. */
export const CUTOVER_STEP = 'cutover';
/** The lever's journal step. */
export const LEVER_STEP = 'lever';
const TARGET_PREFIX = 'target:';

/** The journal operations this module needs. */
export type StateJournal = Pick<Journal, 'finish' | 'done'>;

/** A TargetLog writing each record to the journal. */
export function journalTargetLog(journal: StateJournal): TargetLog {
  return (record) => journal.finish(CUTOVER_STEP, `${TARGET_PREFIX}${record.name}`, { ...record });
}

/** Every target record of the run, ordered by commit order (uncommitted last). */
export async function targetRecords(journal: StateJournal): Promise<TargetRecord[]> {
  const done = await journal.done(CUTOVER_STEP);
  const out: TargetRecord[] = [];
  for (const [unit, detail] of done) if (unit.startsWith(TARGET_PREFIX)) out.push(detail as unknown as TargetRecord);
  return out.sort((a, b) => (a.order ?? Infinity) - (b.order ?? Infinity));
}

/** States in which a target may be live on green and needs a rollback. */
export const LIVE_STATES: ReadonlySet<TargetRecord['state']> = new Set(['committing', 'committed', 'verified', 'rollback-failed']);

/** The lever's journal record. */
export interface LeverRecord {
  /** raised: the TTL is high; restored: back to what it was. */
  state: 'raised' | 'restored' | 'restore-failed';
  /** The value read before raising it. */
  saved: string | null;
  /** Why restoring failed. */
  error?: string;
}

/** The lever's record, or null when it was never raised in this run. */
export async function leverRecord(journal: StateJournal): Promise<LeverRecord | null> {
  return ((await journal.done(LEVER_STEP)).get('ttl') as LeverRecord | undefined) ?? null;
}

/** Writes the lever's record. */
export async function writeLeverRecord(journal: StateJournal, record: LeverRecord): Promise<void> {
  await journal.finish(LEVER_STEP, 'ttl', { ...record });
}

/** Status lines: each target's state (live ones flagged) and the lever. */
export function cutoverLines(targets: readonly TargetRecord[], lever: LeverRecord | null): string[] {
  if (!targets.length && !lever) return ['cutover: not started'];
  const live = targets.filter((t) => LIVE_STATES.has(t.state));
  return [
    ...targets.map((t) => `cutover target ${t.name}: ${t.state}${t.error ? ` (${t.error})` : ''}`),
    ...(lever ? [`TTL lever: ${lever.state} (old value ${JSON.stringify(lever.saved)})`] : []),
    live.length ? `live on green: ${live.map((t) => t.name).join(', ')}; undo with \`migrate rollback --yes\`` : '',
  ].filter(Boolean);
}
