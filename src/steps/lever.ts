// The TTL lever: before the window, raise token TTL through a configured action so clients refresh
// (and write) less while blue and green diverge; remember the old value in the journal; restore it
// after cutover, and after any failure or rollback. Raising twice is harmless (the journal knows).

import { runAction, type ActionEnv } from '../cutover/actions.ts';
import { OperatorError, ExitCode } from '../errors.ts';
import { actionOf, type LeverSpec } from '../cutover/schema.ts';
import { leverRecord, writeLeverRecord, type LeverRecord, type StateJournal } from '../cutover/state.ts';

/** Raising the lever failed; nothing was cut over. */
export class LeverError extends OperatorError {
  constructor(message: string) {
    super(`the TTL lever could not be raised: ${message}`, {
      hint: 'fix the lever action in the config (lever.commit / lever.verify) and rerun `migrate cutover`; blue kept serving and the TTL was restored',
      exitCode: ExitCode.cutoverRolledBack,
    });
  }
}

/** Raises the TTL unless the journal says it is already raised; on failure restores and throws LeverError. */
export async function raiseLever(lever: LeverSpec | undefined, env: ActionEnv, journal: StateJournal): Promise<LeverRecord | null> {
  if (!lever) return null;
  const existing = await leverRecord(journal);
  if (existing?.state === 'raised') return existing;
  const prepare = actionOf(lever, 'prepare');
  const saved = prepare ? (await runAction(prepare, env).catch((err: Error) => Promise.reject(new LeverError(err.message)))).value : null;
  // Recorded before the raise, so a crash between the two still restores.
  const record: LeverRecord = { state: 'raised', saved };
  await writeLeverRecord(journal, record);
  try {
    await runAction(actionOf(lever, 'commit')!, env, { saved });
    const verify = actionOf(lever, 'verify');
    if (verify) await runAction(verify, env, { saved });
  } catch (err) {
    await restoreLever(lever, env, journal);
    throw new LeverError((err as Error).message);
  }
  return record;
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
