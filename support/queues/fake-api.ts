// A tiny HTTP server that speaks the documented Queues REST shapes, backed by a LocalQueue, so tests
// drive HttpQueue over real HTTP: auth header, paths, request bodies, the v4 envelope, bodies on the
// wire as the pull-consumer docs describe them (base64 with `CF-Content-Type`), the 409
// `queue_delivery_paused` answer of a paused queue, the queue object and its consumers list, and
// (on request) the 429/5xx answers a client must retry.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { QueueDeliveryPausedError } from '../../src/queue/queue.ts';
import type { LocalQueue } from './local-queue.ts';

/** A failure the server answers with once, before serving normally again. */
export interface InjectedFault {
  /** HTTP status, e.g. 429 or 503. */
  status: number;
  /** `Retry-After` header value, if any (seconds or an HTTP date). */
  retryAfter?: string;
}

/** A running local Queues API. */
export interface LocalQueueApi {
  /** Base URL to pass as HttpQueueOptions.baseUrl. */
  baseUrl: string;
  /** Every request served, as `METHOD queueId/path` (e.g. `POST q1/messages/pull`), oldest first. */
  requests: string[];
  /** Answers the next requests with these failures, one each, in order. */
  failNext(...faults: InjectedFault[]): void;
  /** Stops the server. */
  close(): Promise<void>;
}

type Errors = { code: number; message: string }[];

function reply(res: http.ServerResponse, status: number, result: unknown, errors: Errors = [], headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify({ success: errors.length === 0, errors, messages: [], result }));
}

async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

/** The consumers API's shape of one consumer (`type` is `worker` or `http_pull`). */
function consumerJson(queue: LocalQueue, c: LocalQueue['consumers'][number], i: number): Record<string, unknown> {
  return {
    consumer_id: `c${i}`,
    type: c.type,
    queue_name: queue.name,
    ...(c.scriptName ? { script_name: c.scriptName } : {}),
    dead_letter_queue: c.deadLetterQueue ?? '',
    settings: c.maxRetries === undefined ? {} : { max_retries: c.maxRetries },
  };
}

/** Serves `queue` as account `accountId`, queue `queueId` (and `more` under their ids, e.g. a dead-letter queue), for bearer `token`. */
export async function serveLocalQueueApi(first: LocalQueue, ids: { accountId: string; queueId: string; token: string }, more: Record<string, LocalQueue> = {}): Promise<LocalQueueApi> {
  const queues = new Map<string, LocalQueue>([[ids.queueId, first], ...Object.entries(more)]);
  const accountPrefix = `/client/v4/accounts/${ids.accountId}/queues/`;
  const requests: string[] = [];
  const faults: InjectedFault[] = [];
  const server = http.createServer((req, res) => {
    void (async () => {
      const url = req.url ?? '';
      const [queueId = '', ...rest] = url.startsWith(accountPrefix) ? url.slice(accountPrefix.length).split('/') : [];
      const queue = queues.get(decodeURIComponent(queueId));
      if (!queue) return reply(res, 404, null, [{ code: 10000, message: 'not found' }]);
      const path = rest.join('/');
      requests.push(`${req.method} ${queueId}/${path}`);
      if (req.headers.authorization !== `Bearer ${ids.token}`) return reply(res, 403, null, [{ code: 10000, message: 'Authentication error' }]);
      const fault = faults.shift();
      if (fault) return reply(res, fault.status, null, [{ code: 10013, message: `injected HTTP ${fault.status}` }], fault.retryAfter ? { 'retry-after': fault.retryAfter } : {});
      if (req.method === 'GET' && path === '') {
        const info = await queue.describe();
        const consumers = (await queue.listConsumers()).map((c, i) => consumerJson(queue, c, i));
        return reply(res, 200, { queue_id: queueId, queue_name: info.name, consumers, consumers_total_count: consumers.length, settings: { delivery_paused: info.deliveryPaused === true } });
      }
      if (req.method === 'GET' && path === 'consumers') return reply(res, 200, (await queue.listConsumers()).map((c, i) => consumerJson(queue, c, i)));
      if (req.method !== 'POST') return reply(res, 405, null, [{ code: 10000, message: 'method not allowed' }]);
      let body: Record<string, unknown>;
      try {
        body = (await readJson(req)) as Record<string, unknown>;
      } catch {
        return reply(res, 400, null, [{ code: 10001, message: 'invalid JSON body' }]);
      }
      if (path === 'messages/pull') {
        const batch = body.batch_size ?? 5;
        const timeout = body.visibility_timeout_ms ?? 30_000;
        if (typeof batch !== 'number' || typeof timeout !== 'number') return reply(res, 400, null, [{ code: 10001, message: 'batch_size and visibility_timeout_ms must be numbers' }]);
        try {
          const messages = queue.pullWire(batch, timeout);
          return reply(res, 200, { message_backlog_count: queue.size, messages });
        } catch (err) {
          // The pause-and-purge docs: "Requests to pull messages will receive a 409 response, along with
          // an error message stating queue_delivery_paused" (the numeric code is not documented).
          if (err instanceof QueueDeliveryPausedError) return reply(res, 409, null, [{ code: 10000, message: 'queue_delivery_paused' }]);
          return reply(res, 400, null, [{ code: 10001, message: (err as Error).message }]);
        }
      }
      if (path === 'messages/ack') {
        const acks = Array.isArray(body.acks) ? (body.acks as { lease_id?: unknown }[]) : [];
        const retries = Array.isArray(body.retries) ? (body.retries as { lease_id?: unknown; delay_seconds?: unknown }[]) : [];
        if ([...acks, ...retries].some((a) => typeof a?.lease_id !== 'string')) return reply(res, 400, null, [{ code: 10001, message: 'every ack and retry needs a lease_id string' }]);
        const result = await queue.ack(
          acks.map((a) => a.lease_id as string),
          retries.map((r) => ({ leaseId: r.lease_id as string, ...(typeof r.delay_seconds === 'number' ? { delaySeconds: r.delay_seconds } : {}) })),
        );
        return reply(res, 200, { ...result, warnings: [] });
      }
      return reply(res, 404, null, [{ code: 10000, message: `unknown endpoint ${path}` }]);
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}/client/v4`,
    requests,
    failNext: (...f) => void faults.push(...f),
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
