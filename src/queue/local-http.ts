// A tiny HTTP server that speaks the documented Queues pull/ack REST shapes, backed by a LocalQueue.
// It lets tests (and the chaos test) drive HttpQueue over real HTTP: auth header, paths, request
// bodies, the v4 envelope and JSON bodies as text are all exercised, not assumed.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { LocalQueue } from './local.ts';

/** A running local Queues API. */
export interface LocalQueueApi {
  /** Base URL to pass as HttpQueueOptions.baseUrl. */
  baseUrl: string;
  /** Stops the server. */
  close(): Promise<void>;
}

function reply(res: http.ServerResponse, status: number, result: unknown, errors: { code: number; message: string }[] = []): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ success: errors.length === 0, errors, messages: [], result }));
}

async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

/** Serves `queue` as account `accountId`, queue `queueId`, for bearer `token`. */
export async function serveLocalQueueApi(queue: LocalQueue, ids: { accountId: string; queueId: string; token: string }): Promise<LocalQueueApi> {
  const prefix = `/client/v4/accounts/${ids.accountId}/queues/${ids.queueId}/messages/`;
  const server = http.createServer((req, res) => {
    void (async () => {
      if (req.method !== 'POST' || !req.url?.startsWith(prefix)) return reply(res, 404, null, [{ code: 10000, message: 'not found' }]);
      if (req.headers.authorization !== `Bearer ${ids.token}`) return reply(res, 403, null, [{ code: 10000, message: 'Authentication error' }]);
      let body: Record<string, unknown>;
      try {
        body = (await readJson(req)) as Record<string, unknown>;
      } catch {
        return reply(res, 400, null, [{ code: 10001, message: 'invalid JSON body' }]);
      }
      const verb = req.url.slice(prefix.length);
      if (verb === 'pull') {
        const batch = body.batch_size ?? 5;
        const timeout = body.visibility_timeout_ms ?? 30_000;
        if (typeof batch !== 'number' || typeof timeout !== 'number') return reply(res, 400, null, [{ code: 10001, message: 'batch_size and visibility_timeout_ms must be numbers' }]);
        try {
          const messages = await queue.pull(batch, timeout);
          return reply(res, 200, {
            message_backlog_count: queue.size,
            messages: messages.map((m) => ({ id: m.id, lease_id: m.leaseId, body: JSON.stringify(m.body), attempts: m.attempts, timestamp_ms: m.timestampMs, metadata: {} })),
          });
        } catch (err) {
          return reply(res, 400, null, [{ code: 10001, message: (err as Error).message }]);
        }
      }
      if (verb === 'ack') {
        const acks = Array.isArray(body.acks) ? (body.acks as { lease_id?: unknown }[]) : [];
        const retries = Array.isArray(body.retries) ? (body.retries as { lease_id?: unknown; delay_seconds?: unknown }[]) : [];
        if ([...acks, ...retries].some((a) => typeof a?.lease_id !== 'string')) return reply(res, 400, null, [{ code: 10001, message: 'every ack and retry needs a lease_id string' }]);
        const result = await queue.ack(
          acks.map((a) => a.lease_id as string),
          retries.map((r) => ({ leaseId: r.lease_id as string, ...(typeof r.delay_seconds === 'number' ? { delaySeconds: r.delay_seconds } : {}) })),
        );
        return reply(res, 200, { ...result, warnings: [] });
      }
      return reply(res, 404, null, [{ code: 10000, message: `unknown endpoint ${verb}` }]);
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}/client/v4`,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
