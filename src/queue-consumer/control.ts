// Names shared by the Workers and the Node-side launcher (local.ts): the local pause flag, where the
// sink keeps dead letters, and the dead-letter shape. Free of Workers and Node types on purpose.

import type { RejectReason } from './message.ts';

/** KV key of the local pause flag (value `1` parks deliveries; see consumer.ts). */
export const PAUSE_KEY = 'consumer-paused';

/** KV key prefix under which the local DLQ sink stores dead letters. */
export const DEAD_LETTER_PREFIX = 'dlq:';

/** What the dead-letter queue receives for a rejected message. */
export interface DeadLetter {
  /** Why the message was rejected. */
  reason: RejectReason;
  /** The verifier's explanation. */
  detail: string;
  /** The message body exactly as it arrived. */
  original: unknown;
}
