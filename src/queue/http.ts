// The Cloudflare Queues HTTP pull consumer: `POST /accounts/{account_id}/queues/{queue_id}/messages/pull`
// with `{batch_size, visibility_timeout_ms}` and `.../messages/ack` with `{acks:[{lease_id}],
// retries:[{lease_id, delay_seconds}]}`, bearer token. Responses use the v4 envelope
// `{success, errors, messages, result}`; pulled bodies of JSON messages arrive as JSON text.

import { OperatorError, ExitCode } from '../errors.ts';
import { redact } from '../db/redact.ts';
import { MAX_PULL_BATCH, type AckResult, type PulledMessage, type RetryRequest, type RevocationQueue } from './queue.ts';

/** The public API base. */
export const CLOUDFLARE_API = 'https://api.cloudflare.com/client/v4';

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
}

function decodeBody(body: unknown): unknown {
  if (typeof body !== 'string') return body;
  try {
    return JSON.parse(body);
  } catch {
    return body; // a text message: the verifier will call it malformed
  }
}

/** The pull consumer over HTTPS. */
export class HttpQueue implements RevocationQueue {
  private readonly base: string;

  constructor(private readonly opts: HttpQueueOptions) {
    this.base = `${(opts.baseUrl ?? CLOUDFLARE_API).replace(/\/$/, '')}/accounts/${encodeURIComponent(opts.accountId)}/queues/${encodeURIComponent(opts.queueId)}/messages`;
  }

  /** Pulls a batch under a lease of `visibilityTimeoutMs`. */
  async pull(batchSize: number, visibilityTimeoutMs: number): Promise<PulledMessage[]> {
    if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_PULL_BATCH) throw new RangeError(`batch_size must be 1..${MAX_PULL_BATCH}, got ${batchSize}`);
    const result = await this.call('pull', { batch_size: batchSize, visibility_timeout_ms: visibilityTimeoutMs });
    // The API returns {messages:[...]}; older SDKs typed the result as the bare array: accept both.
    const list = Array.isArray(result) ? result : ((result as { messages?: unknown } | null)?.messages ?? []);
    if (!Array.isArray(list)) throw this.shapeError('pull', 'result.messages is not an array');
    return (list as RawMessage[]).map((m) => {
      if (typeof m.lease_id !== 'string' || typeof m.id !== 'string') throw this.shapeError('pull', 'a message has no id or lease_id');
      return { id: m.id, leaseId: m.lease_id, body: decodeBody(m.body), attempts: Number(m.attempts ?? 1), timestampMs: Number(m.timestamp_ms ?? 0) };
    });
  }

  /** Acks and retries by lease id in one call. */
  async ack(acks: readonly string[], retries: readonly RetryRequest[] = []): Promise<AckResult> {
    if (!acks.length && !retries.length) return { ackCount: 0, retryCount: 0 };
    const result = (await this.call('ack', {
      acks: acks.map((lease_id) => ({ lease_id })),
      retries: retries.map((r) => ({ lease_id: r.leaseId, ...(r.delaySeconds === undefined ? {} : { delay_seconds: r.delaySeconds }) })),
    })) as { ackCount?: number; retryCount?: number } | null;
    return { ackCount: Number(result?.ackCount ?? 0), retryCount: Number(result?.retryCount ?? 0) };
  }

  private async call(verb: 'pull' | 'ack', body: unknown): Promise<unknown> {
    let res: Response;
    try {
      res = await fetch(`${this.base}/${verb}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${this.opts.token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch (err) {
      throw new QueueApiError(`cannot reach the Queues API for ${verb}: ${redact(String((err as Error).message))}`, 'check network access to api.cloudflare.com (or queue.baseUrl), then rerun `migrate drain`; it resumes where it stopped', { verb });
    }
    let envelope: Envelope;
    try {
      envelope = (await res.json()) as Envelope;
    } catch {
      throw this.shapeError(verb, `HTTP ${res.status} with a body that is not JSON`);
    }
    if (!res.ok || envelope.success === false) {
      const reasons = (envelope.errors ?? []).map((e) => `${e.code ?? '?'} ${e.message ?? ''}`.trim()).join('; ') || `HTTP ${res.status}`;
      const auth = res.status === 401 || res.status === 403;
      throw new QueueApiError(
        `the Queues API refused ${verb}: ${redact(reasons)}`,
        auth ? 'check queue.token: it needs the Queues Edit permission on this account' : 'check queue.accountId and queue.queueId, and that the queue has an HTTP pull consumer (`wrangler queues consumer http add`)',
        { verb, status: res.status },
      );
    }
    return envelope.result ?? null;
  }

  private shapeError(verb: string, what: string): QueueApiError {
    return new QueueApiError(`unexpected ${verb} response from the Queues API: ${what}`, 'check queue.baseUrl points at the Cloudflare v4 API', { verb });
  }
}
