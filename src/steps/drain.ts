// Drain: after the flip, replay every revocation captured during the window into green: blue's
// outbox from its high-water mark, then the revocation queue and its dead letters when configured
// (src/replay/drain.ts does the work; `migrate drain` runs the same outside a cutover). A failure
// rolls the cutover back.

import { wiringOf } from '../cutover/wiring.ts';
import { moreConnections } from '../db/connect.ts';
import { drain as drainInto } from '../replay/drain.ts';
import type { Action, Step } from './step.ts';
import { streamActions } from './stream.ts';

/** The drain step. */
export const drain = {
  name: 'drain',
  purpose: 'replay every revocation captured during the window into green',
  async validate() {},
  async plan(ctx) {
    const w = wiringOf(ctx);
    // Blue takes no write after the flip: the stream's tail is everything left in the slot.
    const tail = ctx.config.raw.stream.enabled ? await streamActions(ctx, 'stream-tail', 'stage the last writes blue committed before the flip in green\'s change log') : [];
    return [...tail, {
      id: 'replay',
      sentence: `replay blue's outbox${w.queue ? `, then the revocation queue${w.queue.deadLetters ? ' and its dead letters' : ''},` : ''} into green (from the high-water mark, deduplicated by event id)`,
      side: 'both',
      execute: async ({ ctx: c }) => {
        await w.beforeDrain?.();
        const more = await moreConnections('green', c.config.greenDsn, c.config.raw.replay.jobs - 1);
        try {
          const stats = await drainInto({ source: c.blue, sourceSide: 'blue', target: c.green, moreTargets: more, profile: c.config.engine.replay.green, ...(w.queue ? { queue: w.queue } : {}), progress: c.progress });
          return { replayed: stats.applied, drain: stats };
        } finally {
          await Promise.all(more.map((m) => m.end().catch(() => {})));
        }
      },
    }] satisfies Action[];
  },
  async summarize(_ctx, details) {
    return { replayed: details.get('replay')?.replayed ?? 0 };
  },
  async verify() {},
} satisfies Step;
