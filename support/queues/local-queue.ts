// An in-process queue with the documented Cloudflare Queues pull-consumer behaviour: a pull leases
// messages for a visibility timeout; an ack removes them; a retry or an expired lease makes them
// visible again and counts an attempt; after `maxRetries` failed deliveries a message moves to the
// dead-letter list instead of being delivered again. Bodies are kept as the pull API puts them on
// the wire (base64 JSON with `CF-Content-Type: json`, wire.ts) and decoded the way the HTTP client
// decodes them, so a direct pull and a pull over local-http.ts see the same thing. Delivery can be
// paused (every pull then fails as the API's 409 does) and the consumer list is served to doctor's
// check. Used by tests.

import crypto from 'node:crypto';
import { MAX_PULL_BATCH, QueueDeliveryPausedError, type AckResult, type PulledMessage, type QueueConsumerInfo, type QueueInfo, type RetryRequest, type RevocationQueue } from '../../src/queue/queue.ts';
import { decodePulledBody, encodeForPull, type QueueContentType, type WireBody } from '../../src/queue/wire.ts';

interface Stored {
  id: string;
  wire: WireBody;
  timestampMs: number;
  attempts: number;
  visibleAt: number;
  lease: { id: string; expiresAt: number } | null;
}

/** A message that ran out of retries. */
export interface LocalDeadLetter {
  /** Message id. */
  id: string;
  /** Its body (decoded). */
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
  /** The queue's name (default `bluegreen-revocations`). */
  name?: string;
  /** Attached consumers (default: one HTTP pull consumer with a dead-letter queue, as the runbook sets up). */
  consumers?: QueueConsumerInfo[];
}

/** A pulled message exactly as the pull API's `result.messages[]` carries it. */
export interface WireMessage {
  /** Message id. */
  id: string;
  /** Lease id. */
  lease_id: string;
  /** Base64 or plain text, by `metadata["CF-Content-Type"]`. */
  body: string;
  /** Deliveries so far. */
  attempts: number;
  /** Send time. */
  timestamp_ms: number;
  /** `CF-Content-Type` and `CF-sourceMessageSource`. */
  metadata: Record<string, string>;
}

/** The in-process queue. */
export class LocalQueue implements RevocationQueue {
  /** Messages that ran out of retries, oldest first. */
  readonly deadLetters: LocalDeadLetter[] = [];
  private readonly messages = new Map<string, Stored>();
  private readonly byLease = new Map<string, string>();
  /** The queue's name. */
  readonly name: string;
  /** Attached consumers, as the consumers API lists them (tests replace them). */
  consumers: QueueConsumerInfo[];
  private readonly maxRetries: number;
  private readonly now: () => number;
  private paused = false;

  constructor(opts: LocalQueueOptions = {}) {
    this.maxRetries = opts.maxRetries ?? 3;
    this.now = opts.now ?? Date.now;
    this.name = opts.name ?? 'bluegreen-revocations';
    this.consumers = opts.consumers ?? [{ type: 'http_pull', deadLetterQueue: `${this.name}-dlq`, maxRetries: this.maxRetries }];
  }

  /** Enqueues one message, stored as the pull API will deliver it (`json`, the default content type, as base64). */
  send(body: unknown, opts: { delaySeconds?: number; contentType?: QueueContentType } = {}): string {
    const id = crypto.randomUUID().replace(/-/g, '');
    const now = this.now();
    this.messages.set(id, { id, wire: encodeForPull(body, opts.contentType ?? 'json'), timestampMs: now, attempts: 0, visibleAt: now + (opts.delaySeconds ?? 0) * 1000, lease: null });
    return id;
  }

  /** `wrangler queues pause-delivery`: messages are kept, every pull is refused. */
  pauseDelivery(): void {
    this.paused = true;
  }

  /** `wrangler queues resume-delivery`. */
  resumeDelivery(): void {
    this.paused = false;
  }

  /** The queue object's name and paused flag. */
  async describe(): Promise<QueueInfo> {
    return { name: this.name, deliveryPaused: this.paused };
  }

  /** The attached consumers. */
  async listConsumers(): Promise<QueueConsumerInfo[]> {
    return this.consumers.map((c) => ({ ...c }));
  }

  /** Messages not yet acked or dead-lettered (leased ones included). */
  get size(): number {
    return this.messages.size;
  }

  /** Pulls up to `batchSize` visible messages under new leases, decoded as the HTTP client decodes them. */
  async pull(batchSize: number, visibilityTimeoutMs: number): Promise<PulledMessage[]> {
    return this.pullWire(batchSize, visibilityTimeoutMs).map((w) => {
      const decoded = decodePulledBody(w.body, w.metadata);
      const base = { id: w.id, leaseId: w.lease_id, attempts: w.attempts, timestampMs: w.timestamp_ms };
      return decoded.ok ? { ...base, body: decoded.value } : { ...base, body: w.body, undecodable: decoded.detail };
    });
  }

  /** Pulls as the REST API answers: wire bodies with their metadata (local-http.ts serves these). */
  pullWire(batchSize: number, visibilityTimeoutMs: number): WireMessage[] {
    if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_PULL_BATCH) throw new RangeError(`batch_size must be 1..${MAX_PULL_BATCH}, got ${batchSize}`);
    if (this.paused) throw new QueueDeliveryPausedError(this.name);
    const now = this.now();
    const out: WireMessage[] = [];
    for (const m of this.messages.values()) {
      if (out.length >= batchSize) break;
      if (m.lease && m.lease.expiresAt > now) continue;
      if (m.lease) this.release(m, now); // the lease ran out: that delivery failed
      if (m.visibleAt > now || !this.messages.has(m.id)) continue;
      m.attempts += 1;
      m.lease = { id: crypto.randomUUID(), expiresAt: now + visibilityTimeoutMs };
      this.byLease.set(m.lease.id, m.id);
      out.push({ id: m.id, lease_id: m.lease.id, body: m.wire.body, attempts: m.attempts, timestamp_ms: m.timestampMs, metadata: { ...m.wire.metadata } });
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
      const decoded = decodePulledBody(m.wire.body, m.wire.metadata);
      this.deadLetters.push({ id: m.id, body: decoded.ok ? decoded.value : m.wire.body, attempts: m.attempts });
      return;
    }
    m.visibleAt = now + delaySeconds * 1000;
  }
}
