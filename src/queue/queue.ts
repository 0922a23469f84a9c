// The queue contract `migrate drain` consumes: the Cloudflare Queues HTTP pull consumer, reduced to
// what drain needs (pull a batch under a lease, ack or retry by lease id). Production talks to the
// REST API (http.ts); tests and the demo use LocalQueue (local.ts), an in-process implementation of
// the same documented behaviour, tested against the same contract as the HTTP client.

import { ExitCode, OperatorError } from '../errors.ts';

/** One message as a pull consumer sees it. */
export interface PulledMessage {
  /** Message id assigned by the queue. */
  id: string;
  /** Lease that must be acked (or retried) before the visibility timeout runs out. */
  leaseId: string;
  /** The message body (decoded by its CF-Content-Type; the raw wire body when `undecodable` is set). */
  body: unknown;
  /** Why the body could not be decoded (bad base64, not JSON, v8): the message is malformed. */
  undecodable?: string;
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

/** One consumer attached to a queue, as the consumers API lists it. */
export interface QueueConsumerInfo {
  /** `worker` (push) or `http_pull`. */
  type: string;
  /** The Worker script of a push consumer. */
  scriptName?: string | undefined;
  /** Where this consumer's failed messages go; undefined or empty: they are deleted after its retries. */
  deadLetterQueue?: string | undefined;
  /** Deliveries this consumer gets per message before it is dead-lettered or deleted. */
  maxRetries?: number | undefined;
}

/** What the queue object says about itself. */
export interface QueueInfo {
  /** The queue's name (wrangler commands take the name, config takes the id). */
  name?: string | undefined;
  /** `settings.delivery_paused`: a pull from a paused queue answers 409 queue_delivery_paused. */
  deliveryPaused?: boolean | undefined;
}

/** A pull consumer: pull under a lease, then ack what is stored and retry what is not. */
export interface RevocationQueue {
  /** Pulls up to `batchSize` (1..100) visible messages, each leased for `visibilityTimeoutMs`. */
  pull(batchSize: number, visibilityTimeoutMs: number): Promise<PulledMessage[]>;
  /** Acknowledges `acks` and hands `retries` back; unknown or expired leases are ignored. */
  ack(acks: readonly string[], retries?: readonly RetryRequest[]): Promise<AckResult>;
  /** Reads the queue object (name, paused). */
  describe(): Promise<QueueInfo>;
  /** Lists the consumers attached to the queue. */
  listConsumers(): Promise<QueueConsumerInfo[]>;
}

/** Delivery of the queue is paused, so the pull API refuses every pull (HTTP 409 `queue_delivery_paused`). */
export class QueueDeliveryPausedError extends OperatorError {
  constructor(queue: string) {
    super(`queue ${queue} has delivery paused: the Queues API refuses pulls while paused (409 queue_delivery_paused); nothing was pulled, applied or acked`, {
      hint: `run \`npx wrangler queues resume-delivery ${queue}\` and rerun \`migrate drain\`; during the window keep messages waiting by switching the queue to an HTTP pull consumer instead of pausing it (runbooks/revocation-queue.md)`,
      exitCode: ExitCode.source,
      detail: { queue, reason: 'queue_delivery_paused' },
    });
  }
}

/** The queue has no HTTP pull consumer (a Worker consumes it), so `migrate drain` cannot pull it. */
export class QueueConsumerError extends OperatorError {
  constructor(queue: string, consumers: readonly QueueConsumerInfo[]) {
    const workers = consumers.filter((c) => c.type === 'worker').map((c) => c.scriptName ?? '<script>');
    super(`queue ${queue} has no HTTP pull consumer (${consumers.length ? consumers.map(describeConsumer).join(', ') : 'no consumer at all'}); nothing was pulled, applied or acked`, {
      hint: switchToPullHint(queue, workers),
      exitCode: ExitCode.source,
      detail: { queue, consumers },
    });
  }
}

/** One consumer in a sentence fragment, e.g. `worker bluegreen-revocation-consumer`. */
export function describeConsumer(c: QueueConsumerInfo): string {
  return c.type === 'worker' ? `worker ${c.scriptName ?? '<script>'}` : c.type;
}

/** How the runbook sets up a pull consumer: the revocations queue's, or a dead-letter queue's (which must keep what it cannot replay). */
export interface PullConsumerSetup {
  /** `--message-retries` (each drain run that leaves a message on the queue spends one). */
  retries: number;
  /** `--dead-letter-queue`: where messages go when their retries run out, instead of being deleted. */
  deadLetterQueue: string;
}

/** The wrangler commands that move a queue from its Worker consumer(s) to an HTTP pull consumer. */
export function switchToPullHint(queue: string, workers: readonly string[], setup: PullConsumerSetup = { retries: 10, deadLetterQueue: `${queue}-dlq` }): string {
  const remove = workers.map((w) => `\`npx wrangler queues consumer remove ${queue} ${w}\``).join(', then ');
  const add = `\`npx wrangler queues consumer http add ${queue} --message-retries ${setup.retries} --dead-letter-queue ${setup.deadLetterQueue}\``;
  return `${remove ? `${remove}, then ` : ''}${add} (runbooks/revocation-queue.md)`;
}

/** Largest batch the Queues pull API accepts. */
export const MAX_PULL_BATCH = 100;

/** Refuses, before anything is pulled or written, a queue `migrate drain` cannot pull: paused, or without an HTTP pull consumer. */
export async function assertPullable(queue: RevocationQueue, fallbackName: string): Promise<void> {
  const [info, consumers] = await Promise.all([queue.describe(), queue.listConsumers()]);
  const name = info.name ?? fallbackName;
  if (info.deliveryPaused) throw new QueueDeliveryPausedError(name);
  if (!consumers.some((c) => c.type === 'http_pull')) throw new QueueConsumerError(name, consumers);
}
