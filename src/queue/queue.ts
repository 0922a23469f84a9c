// The queue contract `migrate drain` consumes: the Cloudflare Queues HTTP pull consumer, reduced to
// what drain needs (pull a batch under a lease, ack or retry by lease id). Production talks to the
// REST API (http.ts); tests and the demo use LocalQueue (local.ts), an in-process implementation of
// the same documented behaviour, tested against the same contract as the HTTP client.

/** One message as a pull consumer sees it. */
export interface PulledMessage {
  /** Message id assigned by the queue. */
  id: string;
  /** Lease that must be acked (or retried) before the visibility timeout runs out. */
  leaseId: string;
  /** The message body (JSON already decoded). */
  body: unknown;
  /** Deliveries so far, this one included. */
  attempts: number;
  /** When the message was sent (ms since epoch). */
  timestampMs: number;
}

/** A message to hand back for another delivery later. */
export interface RetryRequest {
  /** Lease of the pulled message. */
  leaseId: string;
  /** Seconds before it is visible again (0: at once). */
  delaySeconds?: number;
}

/** What an ack call did. */
export interface AckResult {
  /** Leases acknowledged (messages gone for good). */
  ackCount: number;
  /** Leases handed back for redelivery. */
  retryCount: number;
}

/** A pull consumer: pull under a lease, then ack what is stored and retry what is not. */
export interface RevocationQueue {
  /** Pulls up to `batchSize` (1..100) visible messages, each leased for `visibilityTimeoutMs`. */
  pull(batchSize: number, visibilityTimeoutMs: number): Promise<PulledMessage[]>;
  /** Acknowledges `acks` and hands `retries` back; unknown or expired leases are ignored. */
  ack(acks: readonly string[], retries?: readonly RetryRequest[]): Promise<AckResult>;
}

/** Largest batch the Queues pull API accepts. */
export const MAX_PULL_BATCH = 100;
