// The TTL lever: before the window, raise token TTL through a configured action so clients refresh
// (and write) less while blue and green diverge; remember the old value in the journal; restore it
// after cutover, and after any failure or rollback. Raising twice is harmless (the journal knows).
// It is raised before any target commits, so a lever that cannot be raised stops the cutover with
// nothing cut over; it only ever restores a value it read (or runs lever.rollback as configured).

import { describeAction, runAction, type ActionEnv } from '../cutover/actions.ts';
import { OperatorError, ExitCode } from '../errors.ts';
import { actionOf, type LeverSpec } from '../cutover/schema.ts';
import { leverRecord, writeLeverRecord, type LeverRecord, type StateJournal } from '../cutover/state.ts';
import { wiringOf } from '../cutover/wiring.ts';
import type { Action, Step } from './step.ts';

/** Which lever action failed; prepare means the TTL was never read, let alone changed. */
export type LeverPhase = 'prepare' | 'commit' | 'verify';

function leverHint(phase: LeverPhase, after: LeverRecord | null): string {
  if (phase === 'prepare') return 'the TTL was never read or changed and blue kept serving; fix lever.prepare (or the database or env var it names) and run `migrate cutover` again';
  if (after?.state === 'restore-failed') {
    return `restoring the TTL${after.saved === null ? '' : ` to ${JSON.stringify(after.saved)}`} failed too (${after.error ?? 'unknown error'}), so it may still be raised: run \`migrate rollback --yes\` to retry, then fix lever.${phase}`;
  }
  const restored = !after || after.saved === null ? 'lever.rollback ran to undo the raise (no old value had been read)' : `the TTL was set back to ${JSON.stringify(after.saved)}`;
  return `${restored} and blue kept serving; fix lever.${phase} and run \`migrate cutover\` again`;
}

/** Raising the lever failed; no target was touched (exit 8, as for a target whose prepare fails). */
export class LeverError extends OperatorError {
  constructor(
    message: string,
    /** The lever action that failed. */
    readonly phase: LeverPhase,
    /** The lever's journal record afterwards: null when the TTL was never changed. */
    readonly after: LeverRecord | null,
  ) {
    super(`the TTL lever could not be raised: ${message}; nothing was cut over`, {
      hint: leverHint(phase, after),
      exitCode: ExitCode.cutoverRolledBack,
      detail: { lever: { phase, after } },
    });
  }
}

/**
 * Raises the TTL unless the journal says it is already raised. Throws LeverError when it cannot:
 * after a failed prepare nothing was changed (and nothing is restored); after a failed commit or
 * verify the value prepare read is put back at once.
 */
export async function raiseLever(lever: LeverSpec | undefined, env: ActionEnv, journal: StateJournal): Promise<LeverRecord | null> {
  if (!lever) return null;
  const existing = await leverRecord(journal);
  if (existing?.state === 'raised') return existing;
  // After a failed restore the TTL may still be high: reading it again would remember the raised value.
  const saved = existing?.state === 'restore-failed' ? existing.saved : await readLever(lever, env);
  // Recorded before the raise, so a crash between the two still restores.
  const record: LeverRecord = { state: 'raised', saved };
  await writeLeverRecord(journal, record);
  let phase: LeverPhase = 'commit';
  try {
    await runAction(actionOf(lever, 'commit')!, env, { saved });
    phase = 'verify';
    const verify = actionOf(lever, 'verify');
    if (verify) await runAction(verify, env, { saved });
  } catch (err) {
    throw new LeverError((err as Error).message, phase, await restoreLever(lever, env, journal));
  }
  return record;
}

async function readLever(lever: LeverSpec, env: ActionEnv): Promise<string | null> {
  const prepare = actionOf(lever, 'prepare');
  if (!prepare) return null;
  try {
    return (await runAction(prepare, env)).value;
  } catch (err) {
    throw new LeverError((err as Error).message, 'prepare', null);
  }
}

/** Restores the TTL recorded in the journal; a no-op when it was never raised or already restored. */
export async function restoreLever(lever: LeverSpec | undefined, env: ActionEnv, journal: StateJournal): Promise<LeverRecord | null> {
  if (!lever) return null;
  const record = await leverRecord(journal);
  if (!record || record.state === 'restored') return record;
  try {
    await runAction(actionOf(lever, 'rollback')!, env, { saved: record.saved });
    const restored: LeverRecord = { state: 'restored', saved: record.saved };
    await writeLeverRecord(journal, restored);
    return restored;
  } catch (err) {
    const failed: LeverRecord = { state: 'restore-failed', saved: record.saved, error: (err as Error).message };
    await writeLeverRecord(journal, failed);
    return failed;
  }
}

/** The lever step: the first of the cutover phase; nothing to do when no lever is configured. */
export const lever = {
  name: 'lever',
  purpose: 'raise the token TTL so clients refresh (and write) less while the targets flip',
  async validate() {},
  async plan(ctx) {
    const spec = ctx.config.raw.lever;
    if (!spec) return [];
    const prepare = actionOf(spec, 'prepare');
    return [{
      id: 'raise',
      sentence: `${prepare ? `read the TTL (${describeAction(prepare)}), then ` : ''}raise it (${describeAction(actionOf(spec, 'commit')!)}); the old value is journalled first, so any failure puts it back`,
      side: 'none',
      execute: async ({ ctx: c }) => ({ saved: (await raiseLever(spec, wiringOf(c).env, c.journal!))?.saved ?? null }),
    }] satisfies Action[];
  },
  async verify() {},
  async rollback(ctx) {
    const after = await restoreLever(ctx.config.raw.lever, wiringOf(ctx).env, ctx.journal!);
    return after ? { lever: after.state } : {};
  },
} satisfies Step;
