// The one retry policy: exponential backoff (optionally jittered, capped), a fixed number of tries,
// and a caller's verdict on each failure (retry, retry after a wait the other side asked for, or
// give up). In-place DDL under lock_timeout, replay batches that deadlock with a live writer, and
// the Queues HTTP client all retry through it, so they back off the same documented way.

/** How often and how long to retry. */
export interface RetryPolicy {
  /** Tries in all, the first included. */
  attempts: number;
  /** Wait before the second try; doubles for each further one. */
  baseDelayMs: number;
  /** No single wait is longer; a wait asked for above it ends the retries at once. */
  maxDelayMs: number;
  /** Spread each wait over [50 %, 100 %] of its value, so competing retriers do not collide again. */
  jitter?: boolean;
}

/** What to do after a failure: give up (rethrow), or retry (after at least `afterMs`, when the other side asked). */
export type RetryVerdict = false | { afterMs?: number };

/** One failure that will be retried, for progress lines and counters. */
export interface RetryNotice {
  /** The try that failed (1 is the first). */
  attempt: number;
  /** Tries allowed in all. */
  attempts: number;
  /** The wait before the next try. */
  waitMs: number;
  /** What failed. */
  error: unknown;
}

/** Options of one retried call. */
export interface RetryOptions {
  /** Decides, per failure, whether it is worth another try. */
  retryable: (err: unknown) => RetryVerdict | true;
  /** Told before each wait (progress line, stats). */
  onRetry?: (notice: RetryNotice) => void;
  /** Waits (tests record the waits instead of spending them). */
  sleep?: (ms: number) => Promise<void>;
}

/** The wait before try `attempt + 1` after try `attempt` failed (attempt counts from 1). */
export function backoffMs(policy: RetryPolicy, attempt: number, random: () => number = Math.random): number {
  const wait = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  return Math.round(policy.jitter ? wait * (0.5 + random() / 2) : wait);
}

/** The last error of a call that ran out of tries (or asked to wait longer than the policy allows), with how many it had. */
export class RetriesExhausted extends Error {
  constructor(
    /** The error of the last try. */
    readonly last: unknown,
    /** Tries made. */
    readonly attempts: number,
    /** The wait asked for that exceeded `maxDelayMs`, if that is why it stopped. */
    readonly askedWaitMs?: number,
  ) {
    super(`gave up after ${attempts} tr${attempts === 1 ? 'y' : 'ies'}: ${(last as Error)?.message ?? String(last)}`);
  }
}

/**
 * Runs `fn` until it succeeds, a failure is not retryable (rethrown as is), or the tries run out
 * (RetriesExhausted carrying the last error; callers turn it into their own operator error).
 */
export async function withRetry<T>(policy: RetryPolicy, opts: RetryOptions, fn: (attempt: number) => Promise<T>): Promise<T> {
  // The global timer, not node:timers: the consumer Worker (workerd) imports this module too.
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      const verdict = opts.retryable(err);
      if (verdict === false) throw err;
      const asked = verdict === true ? undefined : verdict.afterMs;
      const waitMs = Math.max(asked ?? 0, backoffMs(policy, attempt));
      if (asked !== undefined && asked > policy.maxDelayMs) throw new RetriesExhausted(err, attempt, asked);
      if (attempt >= policy.attempts) throw new RetriesExhausted(err, attempt);
      opts.onRetry?.({ attempt, attempts: policy.attempts, waitMs, error: err });
      await sleep(waitMs);
    }
  }
}
