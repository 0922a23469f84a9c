// What a dead letter is. Our consumer Worker sends a message it rejects to the dead-letter queue as
// `{reason, detail, original}` (src/queue-consumer/consumer.ts); Queues itself moves a message that
// ran out of retries there unchanged. `migrate drain` must tell the two apart so it verifies the
// original, never the wrapper (which would always fail as malformed and be thrown away).

/** The consumer Worker's dead-letter wrapper (src/queue-consumer/control.ts `DeadLetter`). */
export interface DeadLetterWrapper {
  /** Why the Worker rejected it. */
  reason: string;
  /** The verifier's explanation. */
  detail: string;
  /** The message body exactly as it arrived. */
  original: unknown;
}

/** True for exactly the wrapper's shape: three keys, reason and detail strings, original present. */
export function isDeadLetterWrapper(value: unknown): value is DeadLetterWrapper {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return false;
  const keys = Object.keys(value).sort();
  const v = value as Record<string, unknown>;
  return keys.join(',') === 'detail,original,reason' && typeof v.reason === 'string' && typeof v.detail === 'string';
}
