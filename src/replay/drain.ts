// Drain: replay the revocations captured during the window into the live side. Two sources, one
// semantics: the source side's outbox (resumable by a high-water mark stored on the target) and
// the revocation queue (pulled under leases, acked only after the batch committed). Batches go
// through the replay semantics, so they are deduplicated by event id, ordered by time and set-based;
// outbox batches are pipelined (the next one is read while the target applies the current one) and
// split over every connection to the target. A configured dead-letter queue is drained last: a dead
// letter (the consumer Worker's `{reason, detail, original}`, or a message Queues moved there after
// its retries) is replayed when its original verifies, and otherwise kept on the queue (never acked,
// never handed back) and reported, because it is the evidence of a forged or broken message.

import type { Db } from '../db/connect.ts';
import { query, toPostgresError } from '../db/connect.ts';
import { verifyRevocation, type RejectReason } from '../queue-consumer/message.ts';
import { isDeadLetterWrapper } from '../queue/dead-letter.ts';
import { assertPullable, type PulledMessage, type RevocationQueue } from '../queue/queue.ts';
import { replayPipelined, type SourceBatch } from './pipeline.ts';
import { applyReplayBatch, createIfMissing, type ReplayEvent, type ReplayKind, type ReplayProfile } from './semantics.ts';

/** An outbox row as the capture trigger wrote it. */
export interface OutboxRow {
  /** Sequence number (commit-independent). */
  seq: string;
  /** When the trigger fired. */
  captured_at: Date;
  /** Writing transaction. */
  txid: string;
  /** `access`, `refresh` or `consent`. */
  kind: string;
  /** `delete` or `deactivate`. */
  op: string;
  /** Key columns of the removed row. */
  row_key: Record<string, unknown>;
  /** Extra columns (request_id, subject, client_id). */
  attributes: Record<string, unknown>;
}

const OUTBOX_KIND: Record<string, ReplayKind> = { access: 'access-remove', refresh: 'refresh-rotate', consent: 'consent-revoke' };

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

/** Maps an outbox row to the event that removes exactly that row's access; null for rows that carry no key. */
export function outboxEvent(side: string, r: OutboxRow): ReplayEvent | null {
  const kind = OUTBOX_KIND[r.kind];
  if (!kind) return null;
  const base = { id: `outbox-${side}-${r.seq}`, kind, at: new Date(r.captured_at).toISOString() };
  if (kind === 'consent-revoke') {
    const challenge = str(Object.values(r.row_key)[0]);
    return challenge ? { ...base, challenge } : null;
  }
  const signature = str(r.row_key.signature);
  const requestId = str(r.attributes.request_id);
  if (!signature && !requestId) return null;
  return { ...base, ...(signature ? { signature } : {}), ...(requestId ? { requestId } : {}) };
}

const MARK_DDL = [
  'CREATE SCHEMA IF NOT EXISTS bluegreen_green',
  `CREATE TABLE IF NOT EXISTS bluegreen_green.drain_mark (
     source text PRIMARY KEY, seq bigint NOT NULL, snapshot_xmin bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT clock_timestamp())`,
];

// Rows whose transaction was still open at the last read may carry a seq below the mark: they are
// re-read through `txid >= snapshot_xmin` (every open transaction's id is >= the snapshot's xmin).
// Replay deduplicates on event id, so reading a row twice is harmless.
const READ_OUTBOX = `SELECT seq::text, captured_at, txid::text, kind, op, row_key, attributes,
       txid_snapshot_xmin(txid_current_snapshot())::text AS xmin
  FROM bluegreen.outbox
 WHERE (seq > $1::bigint OR txid >= $2::bigint) AND seq <> ALL($3::bigint[])
 ORDER BY bluegreen.outbox.seq LIMIT $4`;

/** Figures of one drain. */
export interface DrainStats {
  /** Events read from the outbox. */
  outboxRead: number;
  /** Messages pulled from the queue (valid ones). */
  queueRead: number;
  /** Events that changed the target (first time seen). */
  applied: number;
  /** Events already applied before (redeliveries, snapshot overlap, outbox and queue both). */
  duplicates: number;
  /** Queue messages that failed verification, by reason (handed back so the queue dead-letters them). */
  rejected: Partial<Record<RejectReason, number>>;
  /** The dead-letter queue, when one is configured. */
  deadLetters: DeadLetterStats;
  /** Outbox high-water mark after the drain. */
  outboxMark: string;
  /** Batches written. */
  batches: number;
}

/** A dead letter left on the dead-letter queue because its original does not verify. */
export interface KeptDeadLetter {
  /** Message id on the dead-letter queue. */
  id: string;
  /** Why drain kept it (the verifier's reason). */
  reason: RejectReason;
  /** The verifier's explanation. */
  detail: string;
  /** The consumer Worker's reason, when the Worker wrote the dead letter. */
  workerReason?: string;
}

/** Figures of the dead-letter queue's drain. */
export interface DeadLetterStats {
  /** Dead letters pulled (each counted once per run). */
  read: number;
  /** Whose original verified and was applied, then acked. */
  replayed: number;
  /** Left on the queue, by reason. */
  kept: Partial<Record<RejectReason, number>>;
  /** Left on the queue, one by one (ids and reasons; never the body). */
  keptMessages: KeptDeadLetter[];
}

/** Where to read and where to write. */
export interface DrainOptions {
  /** The side the outbox lives on (blue before rollback, green after). */
  source: Db;
  /** Name of the source side, part of every outbox event id and of the mark's key. */
  sourceSide: 'blue' | 'green';
  /** The live side the events are replayed into. */
  target: Db;
  /** Replay semantics of the target's schema. */
  profile: ReplayProfile;
  /** More connections to the target: each outbox batch is split over `target` and these, by grant. */
  moreTargets?: readonly Db[] | undefined;
  /** The revocation queue, if one is configured, with the key its messages are signed with. */
  queue?: { queue: RevocationQueue; hmacKey: string; visibilityTimeoutMs?: number; deadLetters?: RevocationQueue | undefined } | undefined;
  /** Events per outbox batch. */
  batchSize?: number;
  /** Progress line. */
  progress?: (text: string) => void;
}

async function readMark(target: Db, source: string): Promise<{ seq: string; xmin: string }> {
  // The consumer Worker (or another drain) may be creating bluegreen_green at this very moment.
  await createIfMissing(target, MARK_DDL).catch((err: unknown) => {
    throw toPostgresError(err);
  });
  const { rows } = await query<{ seq: string; snapshot_xmin: string }>(target, 'SELECT seq::text, snapshot_xmin::text FROM bluegreen_green.drain_mark WHERE source = $1', [source]);
  return { seq: rows[0]?.seq ?? '0', xmin: rows[0]?.snapshot_xmin ?? '9223372036854775807' };
}

async function writeMark(target: Db, source: string, seq: string, xmin: string): Promise<void> {
  await query(
    target,
    `INSERT INTO bluegreen_green.drain_mark (source, seq, snapshot_xmin) VALUES ($1, $2, $3)
     ON CONFLICT (source) DO UPDATE SET seq = EXCLUDED.seq, snapshot_xmin = EXCLUDED.snapshot_xmin, updated_at = clock_timestamp()`,
    [source, seq, xmin],
  );
}

/** Replays the source's outbox from the stored high-water mark; the mark moves after each committed batch. */
export async function drainOutbox(opts: DrainOptions, stats: DrainStats): Promise<void> {
  const key = `outbox:${opts.sourceSide}`;
  let { seq: mark, xmin } = await readMark(opts.target, key);
  // Rows this run has read whose transaction is not older than the latest xmin: `txid >= xmin` would
  // read them again (xmin is cluster-wide, so any open transaction holds it back), so they are
  // excluded by seq. A row whose txid falls below the xmin can no longer match and leaves the list.
  const seen = new Map<string, bigint>();
  // The next batch is read from the source while the target applies the current one.
  const readBatch = async (): Promise<SourceBatch<{ read: number; mark: string; xmin: string }> | null> => {
    const { rows } = await query<OutboxRow & { xmin: string }>(opts.source, READ_OUTBOX, [mark, xmin, [...seen.keys()], opts.batchSize ?? 5000]);
    if (!rows.length) return null;
    mark = rows.reduce((m, r) => (BigInt(r.seq) > BigInt(m) ? r.seq : m), mark);
    xmin = rows[0]!.xmin;
    for (const r of rows) seen.set(r.seq, BigInt(r.txid));
    for (const [seq, txid] of seen) if (txid < BigInt(xmin)) seen.delete(seq);
    const events = rows.map((r) => outboxEvent(opts.sourceSide, r)).filter((e): e is ReplayEvent => e !== null);
    return { events, meta: { read: rows.length, mark, xmin } };
  };
  await replayPipelined([opts.target, ...(opts.moreTargets ?? [])], opts.profile, readBatch, async (batch, result) => {
    await writeMark(opts.target, key, batch.mark, batch.xmin);
    stats.outboxRead += batch.read;
    stats.applied += result.applied;
    stats.duplicates += result.duplicates;
    stats.batches++;
    opts.progress?.(`outbox: ${stats.outboxRead} events read, mark ${batch.mark}`);
  });
  stats.outboxMark = mark;
}

/** Pulls the queue until it is empty: valid messages are applied then acked; rejects are handed back to be dead-lettered. */
export async function drainQueue(opts: DrainOptions, stats: DrainStats): Promise<void> {
  if (!opts.queue) return;
  const { queue, hmacKey } = opts.queue;
  const visibility = opts.queue.visibilityTimeoutMs ?? 60_000;
  for (;;) {
    const messages = await queue.pull(100, visibility);
    if (!messages.length) break;
    const good: ReplayEvent[] = [];
    const goodLeases: string[] = [];
    const rejectLeases: string[] = [];
    for (const m of messages) {
      const v = await verifyPulled(m, hmacKey);
      if (v.ok) {
        good.push(v.body);
        goodLeases.push(m.leaseId);
      } else {
        stats.rejected[v.reason] = (stats.rejected[v.reason] ?? 0) + 1;
        rejectLeases.push(m.leaseId);
      }
    }
    const result = await applyReplayBatch(opts.target, opts.profile, good);
    // Only after the commit: ack what is stored; hand rejects back at once so they use up their retries and land in the DLQ.
    await queue.ack(goodLeases, rejectLeases.map((leaseId) => ({ leaseId, delaySeconds: 0 })));
    stats.queueRead += good.length;
    stats.applied += result.applied;
    stats.duplicates += result.duplicates;
    stats.batches++;
    opts.progress?.(`queue: ${stats.queueRead} messages applied`);
  }
}

/** A body that did not decode (base64, JSON, v8) is malformed, like an envelope of the wrong shape. */
async function verifyPulled(m: PulledMessage, hmacKey: string): ReturnType<typeof verifyRevocation> {
  if (m.undecodable !== undefined) return { ok: false, reason: 'malformed', detail: m.undecodable };
  return verifyRevocation(m.body, hmacKey);
}

/**
 * Pulls the dead-letter queue until every visible message was seen once this run: verified originals
 * are applied then acked; the rest get neither ack nor retry (their lease runs out and they stay),
 * so they are never dropped by drain. A kept message that shows up again after its lease ran out
 * ends the loop instead of being counted twice.
 */
export async function drainDeadLetters(opts: DrainOptions, stats: DrainStats): Promise<void> {
  const dlq = opts.queue?.deadLetters;
  if (!opts.queue || !dlq) return;
  const { hmacKey } = opts.queue;
  const visibility = opts.queue.visibilityTimeoutMs ?? 60_000;
  const seen = new Set<string>();
  for (;;) {
    const fresh = (await dlq.pull(100, visibility)).filter((m) => !seen.has(m.id));
    if (!fresh.length) break;
    const good: ReplayEvent[] = [];
    const goodLeases: string[] = [];
    for (const m of fresh) {
      seen.add(m.id);
      const wrapped = m.undecodable === undefined && isDeadLetterWrapper(m.body) ? m.body : null;
      const v = wrapped ? await verifyRevocation(wrapped.original, hmacKey) : await verifyPulled(m, hmacKey);
      if (v.ok) {
        good.push(v.body);
        goodLeases.push(m.leaseId);
        continue;
      }
      stats.deadLetters.kept[v.reason] = (stats.deadLetters.kept[v.reason] ?? 0) + 1;
      stats.deadLetters.keptMessages.push({ id: m.id, reason: v.reason, detail: v.detail, ...(wrapped ? { workerReason: wrapped.reason } : {}) });
    }
    const result = await applyReplayBatch(opts.target, opts.profile, good);
    await dlq.ack(goodLeases);
    stats.deadLetters.read += fresh.length;
    stats.deadLetters.replayed += good.length;
    stats.applied += result.applied;
    stats.duplicates += result.duplicates;
    stats.batches++;
    opts.progress?.(`dead-letter queue: ${stats.deadLetters.replayed} replayed, ${stats.deadLetters.keptMessages.length} kept`);
  }
}

/**
 * Drains the outbox, then the queue, then its dead-letter queue; each batch is time-ordered and
 * removals commute, so the order of sources does not change the result. The queues are checked
 * first (paused, no pull consumer), so a queue that cannot be pulled stops the drain before it writes.
 */
export async function drain(opts: DrainOptions): Promise<DrainStats> {
  const stats: DrainStats = { outboxRead: 0, queueRead: 0, applied: 0, duplicates: 0, rejected: {}, deadLetters: { read: 0, replayed: 0, kept: {}, keptMessages: [] }, outboxMark: '0', batches: 0 };
  if (opts.queue) await assertPullable(opts.queue.queue, 'the revocations queue');
  if (opts.queue?.deadLetters) await assertPullable(opts.queue.deadLetters, 'the dead-letter queue');
  await drainOutbox(opts, stats);
  await drainQueue(opts, stats);
  await drainDeadLetters(opts, stats);
  return stats;
}
