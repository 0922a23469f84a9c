// An in-process queue with the documented Cloudflare Queues pull-consumer behaviour: a pull leases
// messages for a visibility timeout; an ack removes them; a retry or an expired lease makes them
// visible again and counts an attempt; after `maxRetries` failed deliveries a message moves to the
// dead-letter list instead of being delivered again. Used by tests, the chaos test and the demo.

import crypto from 'node:crypto';
import { MAX_PULL_BATCH, type AckResult, type PulledMessage, type RetryRequest, type RevocationQueue } from './queue.ts';

interface Stored {
  id: string;
  body: unknown;
  timestampMs: number;
  attempts: number;
  visibleAt: number;
  lease: { id: string; expiresAt: number } | null;
}

/** A message that ran out of retries. */
export interface LocalDeadLetter {
  /** Message id. */
  id: string;
  /** Its body. */
  body: unknown;
  /** Deliveries it had. */
  attempts: number;
}

/** Options of a local queue. */
export interface LocalQueueOptions {
  /** Failed deliveries before a message goes to the dead-letter list (Cloudflare's default is 3). */
  maxRetries?: number;
  /** Clock in ms (tests move it instead of sleeping). */
  now?: () => number;
}

/** The in-process queue. */
export class LocalQueue implements RevocationQueue {
  /** Messages that ran out of retries, oldest first. */
  readonly deadLetters: LocalDeadLetter[] = [];
  private readonly messages = new Map<string, Stored>();
  private readonly byLease = new Map<string, string>();
  private readonly maxRetries: number;
  private readonly now: () => number;

  constructor(opts: LocalQueueOptions = {}) {
    this.maxRetries = opts.maxRetries ?? 3;
    this.now = opts.now ?? Date.now;
  }

  /** Enqueues one message (JSON-cloned, as the real queue serialises it). */
  send(body: unknown, opts: { delaySeconds?: number } = {}): string {
    const id = crypto.randomUUID().replace(/-/g, '');
    const now = this.now();
    this.messages.set(id, { id, body: JSON.parse(JSON.stringify(body)), timestampMs: now, attempts: 0, visibleAt: now + (opts.delaySeconds ?? 0) * 1000, lease: null });
    return id;
  }

  /** Messages not yet acked or dead-lettered (leased ones included). */
  get size(): number {
    return this.messages.size;
  }

  /** Pulls up to `batchSize` visible messages under new leases. */
  async pull(batchSize: number, visibilityTimeoutMs: number): Promise<PulledMessage[]> {
    if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_PULL_BATCH) throw new RangeError(`batch_size must be 1..${MAX_PULL_BATCH}, got ${batchSize}`);
    const now = this.now();
    const out: PulledMessage[] = [];
    for (const m of this.messages.values()) {
      if (out.length >= batchSize) break;
      if (m.lease && m.lease.expiresAt > now) continue;
      if (m.lease) this.release(m, now); // the lease ran out: that delivery failed
      if (m.visibleAt > now || !this.messages.has(m.id)) continue;
      m.attempts += 1;
      m.lease = { id: crypto.randomUUID(), expiresAt: now + visibilityTimeoutMs };
      this.byLease.set(m.lease.id, m.id);
      out.push({ id: m.id, leaseId: m.lease.id, body: JSON.parse(JSON.stringify(m.body)), attempts: m.attempts, timestampMs: m.timestampMs });
    }
    return out;
  }

  /** Acks and retries by lease; a lease that expired or is unknown is ignored, as the API does. */
  async ack(acks: readonly string[], retries: readonly RetryRequest[] = []): Promise<AckResult> {
    const now = this.now();
    let ackCount = 0;
    let retryCount = 0;
    for (const leaseId of acks) {
      const m = this.leased(leaseId, now);
      if (!m) continue;
      this.byLease.delete(leaseId);
      this.messages.delete(m.id);
      ackCount++;
    }
    for (const r of retries) {
      const m = this.leased(r.leaseId, now);
      if (!m) continue;
      this.release(m, now, r.delaySeconds ?? 0);
      retryCount++;
    }
    return { ackCount, retryCount };
  }

  private leased(leaseId: string, now: number): Stored | undefined {
    const id = this.byLease.get(leaseId);
    const m = id === undefined ? undefined : this.messages.get(id);
    return m && m.lease?.id === leaseId && m.lease.expiresAt > now ? m : undefined;
  }

  /** Ends a failed delivery: visible again after `delaySeconds`, or dead-lettered when out of retries. */
  private release(m: Stored, now: number, delaySeconds = 0): void {
    if (m.lease) this.byLease.delete(m.lease.id);
    m.lease = null;
    if (m.attempts > this.maxRetries) {
      this.messages.delete(m.id);
      this.deadLetters.push({ id: m.id, body: m.body, attempts: m.attempts });
      return;
    }
    m.visibleAt = now + delaySeconds * 1000;
  }
}
