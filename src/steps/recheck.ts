// Recheck: validation after the cutover. Once the window's revocations are drained into green, every
// invariant must hold with the drain counted in (nothing revoked on blue is active on green); a
// failure rolls the cutover back.

import { FindingsError } from '../errors.ts';
import { checkInvariants, invariantFailures, invariantsOf } from '../validate/invariants.ts';
import type { Action, Step } from './step.ts';

/** The recheck step. */
export const recheck = {
  name: 'recheck',
  purpose: 'check every invariant on green again, with the drained revocations counted in',
  async validate() {},
  async plan(ctx) {
    const specs = invariantsOf(ctx.config);
    return [{
      id: 'invariants',
      sentence: `check ${specs.length} invariant(s) on blue and green: ${specs.map((s) => s.name).join(', ') || 'none configured'}`,
      side: 'both',
      facts: { invariants: specs.map((s) => s.name) },
      execute: async ({ ctx: c }) => {
        const invariants = await checkInvariants(c.blue, c.green, specs, { drained: true });
        const failed = invariantFailures(invariants);
        if (failed.length) throw new FindingsError(`invariants failed after the drain: ${failed.join('; ')}`, 'the cutover is rolled back; inspect the named invariants (`migrate validate`) before cutting over again', { invariants });
        return { invariants };
      },
    }] satisfies Action[];
  },
  async summarize(_ctx, details) {
    return { invariants: details.get('invariants')?.invariants ?? [] };
  },
  async verify() {},
} satisfies Step;
