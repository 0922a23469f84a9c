// The Cloudflare Queues HTTP pull consumer: `POST /accounts/{account_id}/queues/{queue_id}/messages/pull`
// with `{batch_size, visibility_timeout_ms}` and `.../messages/ack` with `{acks:[{lease_id}],
// retries:[{lease_id, delay_seconds}]}`, bearer token; `GET .../queues/{queue_id}` (name, paused) and
// `GET .../queues/{queue_id}/consumers` (type `worker` | `http_pull`) for the checks. Responses use the
// v4 envelope `{success, errors, messages, result}`. Pulled bodies are decoded by their
// `CF-Content-Type` (wire.ts): the router sends `json`, which arrives base64-encoded. A paused queue
// answers a pull with 409 `queue_delivery_paused`, its own error; 429 and 5xx are retried with a
// bounded exponential backoff that honours `Retry-After` (src/retry.ts).

import { OperatorError, ExitCode } from '../errors.ts';
import { redact } from '../db/redact.ts';
import { RetriesExhausted, withRetry, type RetryPolicy } from '../retry.ts';
import {
  MAX_PULL_BATCH,
  QueueDeliveryPausedError,
  type AckResult,
  type PulledMessage,
  type QueueConsumerInfo,
  type QueueInfo,
  type RetryRequest,
  type RevocationQueue,
} from './queue.ts';
import { decodePulledBody } from './wire.ts';

/** The public API base. */
export const CLOUDFLARE_API = 'https://api.cloudflare.com/client/v4';

/** Five tries over about 7.5 s, no wait above 30 s (a `Retry-After` above it ends the retries at once). */
export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, baseDelayMs: 500, maxDelayMs: 30_000 };

/** Where the queue lives and how to authenticate (the token is a resolved secret, never printed). */
export interface HttpQueueOptions {
  /** Account id. */
  accountId: string;
  /** Queue id (not its name). */
  queueId: string;
  /** API token with Queues Edit permission. */
  token: string;
  /** API base URL (tests point it at a local server). */
  baseUrl?: string;
  /** Retry policy for 429, 5xx and unreachable (default DEFAULT_RETRY). */
  retry?: Partial<RetryPolicy>;
  /** Waits between retries (tests record the waits instead of spending them). */
  sleep?: (ms: number) => Promise<void>;
}

/** The Queues HTTP API refused or failed a call (exit 6: the queue is drain's source). */
export class QueueApiError extends OperatorError {
  constructor(message: string, hint: string, detail: Record<string, unknown>) {
    super(message, { hint, exitCode: ExitCode.source, detail });
  }
}

interface Envelope {
  success?: boolean;
  errors?: { code?: number; message?: string }[];
  result?: unknown;
}

interface RawMessage {
  id?: string;
  lease_id?: string;
  body?: unknown;
  attempts?: number;
  timestamp_ms?: number;
  metadata?: unknown;
}

interface RawConsumer {
  type?: unknown;
  script_name?: unknown;
  script?: unknown;
  service?: unknown;
  dead_letter_queue?: unknown;
  settings?: { max_retries?: unknown } | null;
}

type Verb = 'pull' | 'ack' | 'describe' | 'consumers';

/** One try the API did not answer usefully: HTTP 429 or 5xx (`status`), or no answer at all (`status` null). */
class Unanswered extends Error {
  constructor(
    readonly status: number | null,
    readonly reason: unknown,
    readonly retryAfterMs?: number,
  ) {
    super(status === null ? 'no answer' : `HTTP ${status}`);
  }
}

/** `Retry-After` in ms: delta-seconds or an HTTP date (RFC 9110 10.2.3); undefined when absent or unreadable. */
export function retryAfterMs(header: string | null, now = Date.now()): number | undefined {
  if (!header) return undefined;
  if (/^\d+$/.test(header.trim())) return Number(header.trim()) * 1000;
  const at = Date.parse(header);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

/** The pull consumer over HTTPS. */
export class HttpQueue implements RevocationQueue {
  private readonly queueUrl: string;
  private readonly retry: RetryPolicy;
  private readonly sleep: ((ms: number) => Promise<void>) | undefined;

  constructor(private readonly opts: HttpQueueOptions) {
    this.queueUrl = `${(opts.baseUrl ?? CLOUDFLARE_API).replace(/\/$/, '')}/accounts/${encodeURIComponent(opts.accountId)}/queues/${encodeURIComponent(opts.queueId)}`;
    this.retry = { ...DEFAULT_RETRY, ...opts.retry };
    this.sleep = opts.sleep;
  }

  /** Pulls a batch under a lease of `visibilityTimeoutMs`; a body that does not decode is marked `undecodable`, never thrown. */
  async pull(batchSize: number, visibilityTimeoutMs: number): Promise<PulledMessage[]> {
    if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_PULL_BATCH) throw new RangeError(`batch_size must be 1..${MAX_PULL_BATCH}, got ${batchSize}`);
    const result = await this.call('pull', 'POST', '/messages/pull', { batch_size: batchSize, visibility_timeout_ms: visibilityTimeoutMs });
    // The API returns {messages:[...]}; older SDKs typed the result as the bare array: accept both.
    const list = Array.isArray(result) ? result : ((result as { messages?: unknown } | null)?.messages ?? []);
    if (!Array.isArray(list)) throw this.shapeError('pull', 'result.messages is not an array');
    return (list as RawMessage[]).map((m) => {
      if (typeof m.lease_id !== 'string' || typeof m.id !== 'string') throw this.shapeError('pull', 'a message has no id or lease_id');
      const base = { id: m.id, leaseId: m.lease_id, attempts: Number(m.attempts ?? 1), timestampMs: Number(m.timestamp_ms ?? 0) };
      const decoded = decodePulledBody(m.body, m.metadata);
      return decoded.ok ? { ...base, body: decoded.value } : { ...base, body: m.body, undecodable: decoded.detail };
    });
  }

  /** Acks and retries by lease id in one call. */
  async ack(acks: readonly string[], retries: readonly RetryRequest[] = []): Promise<AckResult> {
    if (!acks.length && !retries.length) return { ackCount: 0, retryCount: 0 };
    const result = (await this.call('ack', 'POST', '/messages/ack', {
      acks: acks.map((lease_id) => ({ lease_id })),
      retries: retries.map((r) => ({ lease_id: r.leaseId, ...(r.delaySeconds === undefined ? {} : { delay_seconds: r.delaySeconds }) })),
    })) as { ackCount?: number; retryCount?: number } | null;
    return { ackCount: Number(result?.ackCount ?? 0), retryCount: Number(result?.retryCount ?? 0) };
  }

  /** The queue object: its name (the id when the answer has none) and `settings.delivery_paused`. */
  async describe(): Promise<QueueInfo> {
    const q = (await this.call('describe', 'GET', '')) as { queue_name?: unknown; settings?: { delivery_paused?: unknown } | null } | null;
    const paused = q?.settings?.delivery_paused;
    return { name: str(q?.queue_name) ?? this.opts.queueId, deliveryPaused: typeof paused === 'boolean' ? paused : undefined };
  }

  /** The consumers attached to the queue (List Queue Consumers). */
  async listConsumers(): Promise<QueueConsumerInfo[]> {
    const result = await this.call('consumers', 'GET', '/consumers');
    if (!Array.isArray(result)) throw this.shapeError('consumers', 'result is not an array');
    return (result as RawConsumer[]).map((c) => {
      const retries = c.settings?.max_retries;
      return {
        type: typeof c.type === 'string' ? c.type : 'unknown',
        scriptName: str(c.script_name) ?? str(c.script) ?? str(c.service),
        deadLetterQueue: str(c.dead_letter_queue),
        maxRetries: typeof retries === 'number' ? retries : undefined,
      };
    });
  }

  private async call(verb: Verb, method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> {
    let res: Response;
    try {
      res = await withRetry(this.retry, { retryable: (err) => err instanceof Unanswered && (err.retryAfterMs === undefined ? true : { afterMs: err.retryAfterMs }), sleep: this.sleep }, async () => {
        let answer: Response;
        try {
          answer = await fetch(`${this.queueUrl}${path}`, {
            method,
            headers: { authorization: `Bearer ${this.opts.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
            ...(body === undefined ? {} : { body: JSON.stringify(body) }),
          });
        } catch (err) {
          throw new Unanswered(null, err);
        }
        if (answer.status === 429 || answer.status >= 500) {
          await answer.body?.cancel().catch(() => undefined);
          throw new Unanswered(answer.status, null, retryAfterMs(answer.headers.get('retry-after')));
        }
        return answer;
      });
    } catch (err) {
      if (!(err instanceof RetriesExhausted) || !(err.last instanceof Unanswered)) throw err;
      throw this.gaveUp(verb, err.last, err.attempts, err.askedWaitMs);
    }
    return this.result(verb, res);
  }

  /** The error of a call that ran out of tries, or whose `Retry-After` asked for more than the longest wait. */
  private gaveUp(verb: Verb, failure: Unanswered, attempts: number, askedWaitMs: number | undefined): QueueApiError {
    if (failure.status === null) {
      return new QueueApiError(`cannot reach the Queues API for ${verb} (${attempts} tries): ${redact(String((failure.reason as Error).message))}`, 'check network access to api.cloudflare.com (or queue.baseUrl), then rerun `migrate drain`; it resumes where it stopped', { verb, attempts });
    }
    // On the last try the policy stops before it looks at Retry-After; the message still says it asked for too long.
    const asked = askedWaitMs ?? (failure.retryAfterMs !== undefined && failure.retryAfterMs > this.retry.maxDelayMs ? failure.retryAfterMs : undefined);
    return new QueueApiError(
      `the Queues API answered HTTP ${failure.status} to ${verb} ${attempts} time(s)${asked !== undefined ? ` and asked to wait ${Math.round(asked / 1000)} s` : ''}`,
      failure.status === 429 ? 'the account is over the Queues API rate limit (shared by every pull consumer): wait, then rerun `migrate drain`; it resumes where it stopped' : 'the Queues API is failing: check https://www.cloudflarestatus.com, then rerun `migrate drain`; it resumes where it stopped',
      { verb, status: failure.status, attempts },
    );
  }

  private async result(verb: Verb, res: Response): Promise<unknown> {
    let envelope: Envelope;
    try {
      envelope = (await res.json()) as Envelope;
    } catch {
      throw this.shapeError(verb, `HTTP ${res.status} with a body that is not JSON`);
    }
    if (res.ok && envelope.success !== false) return envelope.result ?? null;
    const messages = (envelope.errors ?? []).map((e) => `${e.code ?? '?'} ${e.message ?? ''}`.trim());
    if (verb === 'pull' && res.status === 409 && messages.some((m) => m.includes('queue_delivery_paused'))) {
      // Name the queue in the fix (wrangler takes its name); the id will do when the lookup fails too.
      const name = await this.describe().then((q) => q.name, () => undefined);
      throw new QueueDeliveryPausedError(name ?? this.opts.queueId);
    }
    const auth = res.status === 401 || res.status === 403;
    throw new QueueApiError(
      `the Queues API refused ${verb}: ${redact(messages.join('; ') || `HTTP ${res.status}`)}`,
      auth ? 'check queue.token: it needs the Queues Edit permission on this account' : 'check queue.accountId and queue.queueId, and that the queue has an HTTP pull consumer (`migrate doctor --config` checks it; runbooks/revocation-queue.md)',
      { verb, status: res.status },
    );
  }

  private shapeError(verb: string, what: string): QueueApiError {
    return new QueueApiError(`unexpected ${verb} response from the Queues API: ${what}`, 'check queue.baseUrl points at the Cloudflare v4 API', { verb });
  }
}
