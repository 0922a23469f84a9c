// Stream: every write committed on blue after the snapshot, read from the run's logical replication
// slot and staged in green's change log in LSN order (src/stream/reader.ts), the applied position
// committed with each batch and acknowledged to blue after it, so the slot keeps no WAL it does not
// need; then mapped into the new schema by the engine's mapping (src/stream/apply-changes.ts). Planned only with `stream.enabled`; apply catches up to blue's position when the step starts,
// and cutover catches up again before and after the flip.

import { query } from '../db/connect.ts';
import { StateError } from '../errors.ts';
import { streamObjects } from '../stream/names.ts';
import { applyStagedChanges } from '../stream/apply-changes.ts';
import { streamToGreen, type StreamStats } from '../stream/reader.ts';
import type { Action, Step, StepContext } from './step.ts';

/**
 * The actions that bring green up to blue's WAL position when they start: `id` stages blue's changes in
 * green's change log, `<id>:map` applies what is staged to the new schema (the engine's mapping; absent
 * when the engine has none, and the changes stay staged).
 */
export async function streamActions(ctx: StepContext, id: string, sentence: string): Promise<Action[]> {
  const stage = await stageAction(ctx, id, sentence);
  const mapping = ctx.config.engine.streamMapping;
  if (!mapping) return [stage];
  const slot = String(stage.facts?.slot);
  const batch = ctx.config.raw.stream.batchChanges;
  return [stage, {
    id: `${id}:map`,
    sentence: `apply the staged changes to green's new schema through the ${mapping.name} mapping (${mapping.statements.length} set-based statements per batch of ${batch}, the mapped LSN committed with each; rows a new constraint refuses are held in quarantine under cleanup's rules, every one recorded in bluegreen_green.unmapped)`,
    side: 'green',
    execute: async ({ ctx: c }) => ({ ...(await applyStagedChanges(c.green, { mapping, batch, slot })) }),
  }];
}

/** Stages every change blue committed up to its insert position now (a commit not yet flushed is still waited for). */
async function stageUpToNow(ctx: StepContext, slot: string, publication: string): Promise<StreamStats & { upto: string }> {
  const upto = (await query<{ lsn: string }>(ctx.blue, 'SELECT pg_current_wal_insert_lsn()::text AS lsn', [], { side: 'blue' })).rows[0]!.lsn;
  const stats = await streamToGreen({ blueDsn: ctx.config.blueDsn, green: ctx.green, slot, publication, uptoLsn: upto, batchChanges: ctx.config.raw.stream.batchChanges, progress: ctx.progress });
  return { ...stats, upto };
}

/**
 * Stages every change blue committed up to its insert position now and maps it, in one call: the
 * barrier of a fenced flip (blue takes no write while it runs, so green ends complete), the cutover's
 * guardrail catch-up and each round of `migrate follow`.
 */
export async function catchUpNow(ctx: StepContext): Promise<{ staged: number; mapped: number; upto: string; ms: number }> {
  const started = performance.now();
  const { slot, publication } = await streamObjects(ctx.blue);
  const staged = await stageUpToNow(ctx, slot, publication);
  const mapping = ctx.config.engine.streamMapping;
  const mapped = mapping ? await applyStagedChanges(ctx.green, { mapping, batch: ctx.config.raw.stream.batchChanges, slot }) : null;
  return { staged: staged.changes, mapped: mapped?.changes ?? 0, upto: staged.upto, ms: Math.round(performance.now() - started) };
}

async function stageAction(ctx: StepContext, id: string, sentence: string): Promise<Action> {
  const { slot, publication } = await streamObjects(ctx.blue);
  const batch = ctx.config.raw.stream.batchChanges;
  return {
    id,
    sentence: `${sentence} (slot ${slot}, batches of ${batch} changes, the applied LSN committed with each)`,
    side: 'both',
    facts: { slot, publication },
    execute: async ({ ctx: c }) => ({ ...(await stageUpToNow(c, slot, publication)) }),
  };
}

/** The stream step of apply. */
export const stream = {
  name: 'stream',
  purpose: 'stage every write committed on blue since the snapshot in green\'s change log (logical decoding)',
  async validate(ctx) {
    if (!ctx.config.raw.stream.enabled) throw new StateError('the stream step ran with stream.enabled false', 'this is a bug in migrate: report it with the command you ran');
  },
  async plan(ctx) {
    return streamActions(ctx, 'catch-up', 'read every change blue committed since the snapshot, up to its WAL position now, into green\'s change log');
  },
  async summarize(_ctx, details) {
    const d = details.get('catch-up') ?? {};
    const m = details.get('catch-up:map');
    return { changes: d.changes ?? 0, transactions: d.transactions ?? 0, appliedLsn: d.appliedLsn ?? null, lagBytes: d.lagBytes ?? null, ...(m ? { mapped: m.changes ?? 0, unmapped: m.unmapped ?? 0, quarantined: m.quarantined ?? 0 } : {}) };
  },
  async verify() {},
} satisfies Step;
