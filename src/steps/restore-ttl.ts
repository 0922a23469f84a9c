// Restore-ttl: the last step of the cutover phase. The TTL lever goes back to the value read before
// the flip (or lever.rollback runs). A restore that fails does not undo a good cutover: the step
// fails, `migrate status` says the TTL may still be raised, and `migrate cutover` retries it.

import { describeAction } from '../cutover/actions.ts';
import { actionOf } from '../cutover/schema.ts';
import { wiringOf } from '../cutover/wiring.ts';
import { OperatorError, ExitCode } from '../errors.ts';
import { restoreLever } from './lever.ts';
import type { Action, Step } from './step.ts';

/** Restoring the TTL failed after the cutover (exit 8: the operator must act on the lever). */
export class LeverRestoreError extends OperatorError {
  constructor(message: string, saved: string | null) {
    super(`the cutover stands, but the TTL lever could not be restored${saved === null ? '' : ` to ${JSON.stringify(saved)}`}: ${message}`, {
      hint: 'fix lever.rollback (or the database or env var it names), then run `migrate cutover` again: it resumes and retries only the restore',
      exitCode: ExitCode.cutoverRolledBack,
      detail: { saved },
    });
  }
}

/** The restore-ttl step. */
export const restoreTtl = {
  name: 'restore-ttl',
  purpose: 'put the token TTL back to the value read before the flip',
  async validate() {},
  async plan(ctx) {
    const spec = ctx.config.raw.lever;
    if (!spec) return [];
    return [{
      id: 'restore',
      sentence: `restore the TTL journalled by the lever step (${describeAction(actionOf(spec, 'rollback')!)})`,
      side: 'none',
      execute: async ({ ctx: c }) => {
        const after = await restoreLever(spec, wiringOf(c).env, c.journal!);
        if (after?.state === 'restore-failed') throw new LeverRestoreError(after.error ?? 'unknown error', after.saved);
        return { lever: after?.state ?? 'never raised', saved: after?.saved ?? null };
      },
    }] satisfies Action[];
  },
  async verify() {},
} satisfies Step;
