// Replaying a stream of batches into the live side: one batch at a time, in order, each split over
// the given connections by grant (one grant's events stay on one connection) and applied as one
// transaction per connection, concurrently. While the target works on a batch, the next one is read
// from its source and prepared, so the client's CPU work and a source on another server overlap the
// target's work instead of adding to it. After cutover, every revocation not yet replayed is usable
// on green again, so the drain's speed is the length of that exposure.

import { applyPreparedBatch, prepareReplayBatch, type PreparedBatch, type ReplayEvent, type ReplayProfile, type ReplayResult, type SqlClient } from './semantics.ts';

/** One batch from a source, with what the source needs back once it committed (such as a high-water mark). */
export interface SourceBatch<M> {
  /** Events to replay. */
  events: readonly ReplayEvent[];
  /** Handed to `committed` after every part of this batch committed. */
  meta: M;
}

/** The key that keeps one grant's events on one connection: request id, else signature, else the consent's key. */
function shardKey(e: ReplayEvent): string {
  return e.requestId ?? e.signature ?? e.challenge ?? e.subject ?? e.id;
}

/** 32-bit FNV-1a: a stable, well-spread hash for choosing a connection. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** Splits a batch into `parts` prepared batches by grant (an id always lands in the same part). */
export function prepareParts(profile: ReplayProfile, events: readonly ReplayEvent[], parts: number): PreparedBatch[] {
  if (parts <= 1) return [prepareReplayBatch(profile, events)];
  const split = Array.from({ length: parts }, (): ReplayEvent[] => []);
  for (const e of events) split[fnv1a(shardKey(e)) % parts]!.push(e);
  return split.map((part) => prepareReplayBatch(profile, part));
}

/** The batch read and prepared while the previous one ran, or the error reading it raised. */
type Upcoming<M> = { batch: SourceBatch<M> | null; parts: PreparedBatch[] | null } | { error: unknown };

/**
 * Applies batches from `next` (null: no more) in order. Each batch is split over `dbs` (connections
 * to the same target) and committed part by part; `committed` runs once every part committed and
 * before the next batch starts. A part that failed fails the call; parts that committed are
 * deduplicated when the batch is replayed again. `next` runs while the target works, so it must not
 * use any of `dbs`.
 */
export async function replayPipelined<M>(
  dbs: readonly SqlClient[],
  profile: ReplayProfile,
  next: () => Promise<SourceBatch<M> | null>,
  committed: (meta: M, result: ReplayResult) => Promise<void>,
): Promise<void> {
  if (!dbs.length) throw new Error('replayPipelined needs at least one connection');
  let current = await next();
  let parts = current && prepareParts(profile, current.events, dbs.length);
  while (current && parts) {
    let upcoming: Upcoming<M> = { batch: null, parts: null };
    const readAhead = async (): Promise<void> => {
      try {
        const batch = await next();
        upcoming = { batch, parts: batch && prepareParts(profile, batch.events, dbs.length) };
      } catch (error) {
        upcoming = { error };
      }
    };
    const results = await Promise.allSettled(parts.map((part, i) => applyPreparedBatch(dbs[i]!, part, i === 0 ? readAhead : undefined)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const sum = results.reduce((s, r) => (r.status === 'fulfilled' ? { applied: s.applied + r.value.applied, duplicates: s.duplicates + r.value.duplicates } : s), { applied: 0, duplicates: 0 });
    await committed(current.meta, sum);
    if ('error' in upcoming) throw upcoming.error;
    current = upcoming.batch;
    parts = upcoming.parts;
  }
}
