// The Queues HTTP client against the documented API, over real HTTP to the local REST server: bodies
// decoded by CF-Content-Type (json and bytes base64, text plain, no metadata plain JSON; anything
// else malformed, never a crash), 429/5xx retried with a bounded backoff that honours Retry-After,
// and doctor's consumer check reading the consumers API.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.ts';
import { checkQueueConsumer } from '../src/queue/consumer-check.ts';
import { HttpQueue, QueueApiError, retryAfterMs } from '../src/queue/http.ts';
import { LocalQueue } from '../support/queues/local-queue.ts';
import { serveLocalQueueApi, type LocalQueueApi } from '../support/queues/fake-api.ts';
import { decodePulledBody } from '../src/queue/wire.ts';
import { V2_MIGRATIONS } from './harness.ts';

const servers: LocalQueueApi[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

async function rig(opts: { retry?: { attempts?: number; baseDelayMs?: number; maxDelayMs?: number } } = {}): Promise<{ local: LocalQueue; api: LocalQueueApi; queue: HttpQueue; waits: number[] }> {
  const local = new LocalQueue();
  const api = await serveLocalQueueApi(local, { accountId: 'acc1', queueId: 'q1', token: 'tok' });
  servers.push(api);
  const waits: number[] = [];
  const queue = new HttpQueue({ accountId: 'acc1', queueId: 'q1', token: 'tok', baseUrl: api.baseUrl, retry: opts.retry ?? {}, sleep: async (ms) => void waits.push(ms) });
  return { local, api, queue, waits };
}

describe('pulled bodies are decoded by CF-Content-Type', () => {
  it('decodes json and bytes from base64 and text as plain UTF-8, all three as our JSON messages', async () => {
    const { local, queue } = await rig();
    const message = { body: { v: 1, id: 'décodé-0001' }, mac: '0f'.repeat(32) };
    local.send(message, { contentType: 'json' });
    local.send(new TextEncoder().encode(JSON.stringify(message)), { contentType: 'bytes' });
    local.send(JSON.stringify(message), { contentType: 'text' });
    const pulled = await queue.pull(10, 30_000);
    expect(pulled.map((m) => [m.body, m.undecodable])).toEqual([[message, undefined], [message, undefined], [message, undefined]]);
  });

  it('marks a v8 message undecodable (malformed) instead of failing the pull', async () => {
    const { local, queue } = await rig();
    local.send({ n: 1 }, { contentType: 'v8' });
    local.send({ n: 2 });
    const pulled = await queue.pull(10, 30_000);
    expect(pulled[0]!.undecodable).toMatch(/v8.*cannot decode/);
    expect(pulled[1]!.body).toEqual({ n: 2 });
  });

  it('accepts plain JSON when a message carries no metadata, as older answers do', () => {
    expect(decodePulledBody('{"a":1}', undefined)).toEqual({ ok: true, value: { a: 1 } });
    expect(decodePulledBody({ a: 1 }, {})).toEqual({ ok: true, value: { a: 1 } });
  });

  it('reports a body that does not decode with the reason, never by throwing', () => {
    const json = { 'CF-Content-Type': 'json' };
    expect(decodePulledBody('{"a":1}', json)).toEqual({ ok: false, detail: 'a json body is not base64 (RFC 4648)' });
    expect(decodePulledBody(Buffer.from('not json').toString('base64'), json)).toEqual({ ok: false, detail: 'the decoded json body is not JSON' });
    expect(decodePulledBody(Buffer.from([0xff, 0xfe, 0x00]).toString('base64'), { 'CF-Content-Type': 'bytes' })).toEqual({ ok: false, detail: 'a bytes body does not decode to UTF-8 text' });
    expect(decodePulledBody(42, json)).toEqual({ ok: false, detail: 'a json body must be a base64 string, got number' });
    expect(decodePulledBody('x', { 'CF-Content-Type': 'avro' })).toEqual({ ok: false, detail: 'unknown CF-Content-Type "avro"' });
    expect(decodePulledBody('plain words', undefined)).toEqual({ ok: false, detail: 'the body (no CF-Content-Type) is not JSON' });
  });
});

describe('HttpQueue retries 429 and 5xx', () => {
  it('retries with an exponential backoff and waits at least what Retry-After asks', async () => {
    const { local, api, queue, waits } = await rig();
    local.send({ n: 1 });
    api.failNext({ status: 429, retryAfter: '3' }, { status: 503 }, { status: 502 });
    const [m] = await queue.pull(1, 30_000);
    expect(m!.body).toEqual({ n: 1 });
    expect(waits).toEqual([3000, 1000, 2000]);
    expect(api.requests).toEqual(['POST q1/messages/pull', 'POST q1/messages/pull', 'POST q1/messages/pull', 'POST q1/messages/pull']);
    expect(await queue.ack([m!.leaseId])).toEqual({ ackCount: 1, retryCount: 0 });
  });

  it('gives up after the bounded number of tries with exit 6 and a hint to rerun the drain', async () => {
    const { local, api, queue, waits } = await rig({ retry: { attempts: 3 } });
    local.send({ n: 1 });
    api.failNext({ status: 500 }, { status: 500 }, { status: 500 }, { status: 500 });
    const err = await queue.pull(1, 30_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QueueApiError);
    expect((err as QueueApiError).exitCode).toBe(6);
    expect((err as Error).message).toBe('the Queues API answered HTTP 500 to pull 3 time(s)');
    expect((err as QueueApiError).hint).toMatch(/rerun `migrate drain`/);
    expect(waits).toEqual([500, 1000]);
    expect(local.size).toBe(1);
  });

  it('stops at once when Retry-After asks for more than the longest wait', async () => {
    const { api, queue, waits } = await rig({ retry: { maxDelayMs: 10_000 } });
    api.failNext({ status: 429, retryAfter: '120' });
    await expect(queue.ack(['lease'])).rejects.toThrow('the Queues API answered HTTP 429 to ack 1 time(s) and asked to wait 120 s');
    expect(waits).toEqual([]);
  });

  it('reads Retry-After as seconds or as an HTTP date', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(retryAfterMs('7', now)).toBe(7000);
    expect(retryAfterMs('Thu, 01 Jan 2026 00:00:05 GMT', now)).toBe(5000);
    expect(retryAfterMs('soon', now)).toBeUndefined();
    expect(retryAfterMs(null, now)).toBeUndefined();
  });
});

describe("doctor's queue consumer check", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'queue-check-'));
  const env = { B: 'postgres://b@localhost/b', G: 'postgres://g@localhost/g', QT: 'tok', QH: 'hmac' };
  function config(api: LocalQueueApi, deadLetterQueueId?: string): ReturnType<typeof loadConfig> {
    const file = path.join(dir, `c-${Math.random().toString(36).slice(2)}.json`);
    const queue = { kind: 'cloudflare-http', accountId: 'acc1', queueId: 'q1', token: 'env:QT', hmacKey: 'env:QH', baseUrl: api.baseUrl, ...(deadLetterQueueId ? { deadLetterQueueId } : {}) };
    fs.writeFileSync(file, JSON.stringify({ blue: { dsn: 'env:B' }, green: { dsn: 'env:G' }, profile: 'none', migrations: { kind: 'pop', dir: V2_MIGRATIONS }, queue }));
    return loadConfig(file, env);
  }
  it('passes a queue with an HTTP pull consumer that has a dead-letter queue and no Worker consumer', async () => {
    const { api } = await rig();
    const [check] = await checkQueueConsumer(config(api), { env });
    expect(check).toEqual({ id: 'queue-consumer', ok: true, detail: 'queue bluegreen-revocations: HTTP pull consumer, dead letters to bluegreen-revocations-dlq, 3 retries' });
    expect([...api.requests].sort()).toEqual(['GET q1/', 'GET q1/consumers']);
  });

  it('fails a queue still consumed by the Worker and names the wrangler commands that switch it', async () => {
    const { api, local } = await rig();
    local.consumers = [{ type: 'worker', scriptName: 'bluegreen-revocation-consumer', deadLetterQueue: 'bluegreen-revocations-dlq' }];
    const [check] = await checkQueueConsumer(config(api), { env });
    expect(check!.ok).toBe(false);
    expect(check!.detail).toBe('queue bluegreen-revocations: worker bluegreen-revocation-consumer; `migrate drain` needs an HTTP pull consumer and no Worker consumer');
    expect(check!.hint).toBe('`npx wrangler queues consumer remove bluegreen-revocations bluegreen-revocation-consumer`, then `npx wrangler queues consumer http add bluegreen-revocations --message-retries 10 --dead-letter-queue bluegreen-revocations-dlq` (runbooks/revocation-queue.md)');
  });

  it('fails a queue with both a Worker and an HTTP pull consumer', async () => {
    const { api, local } = await rig();
    local.consumers = [{ type: 'worker', scriptName: 'w' }, { type: 'http_pull', deadLetterQueue: 'd' }];
    const [check] = await checkQueueConsumer(config(api), { env });
    expect(check).toMatchObject({ ok: false, detail: expect.stringContaining('worker w, http_pull') });
  });

  it('fails a paused queue and a pull consumer without a dead-letter queue, each with its fix', async () => {
    const { api, local } = await rig();
    local.pauseDelivery();
    expect((await checkQueueConsumer(config(api), { env }))[0]).toMatchObject({ ok: false, hint: expect.stringContaining('npx wrangler queues resume-delivery bluegreen-revocations') });
    local.resumeDelivery();
    local.consumers = [{ type: 'http_pull' }];
    expect((await checkQueueConsumer(config(api), { env }))[0]).toMatchObject({ ok: false, detail: expect.stringContaining('no dead-letter queue'), hint: expect.stringContaining('--dead-letter-queue bluegreen-revocations-dlq') });
  });

  it("checks the dead-letter queue's own consumer when deadLetterQueueId is set", async () => {
    const main = new LocalQueue();
    const dlq = new LocalQueue({ name: 'bluegreen-revocations-dlq', consumers: [{ type: 'http_pull' }] });
    const api = await serveLocalQueueApi(main, { accountId: 'acc1', queueId: 'q1', token: 'tok' }, { dlq1: dlq });
    servers.push(api);
    const checks = await checkQueueConsumer(config(api, 'dlq1'), { env });
    expect(checks.map((c) => [c.id, c.ok])).toEqual([['queue-consumer', true], ['dlq-consumer', false]]);
    expect(checks[1]!.hint).toContain('--message-retries 100 --dead-letter-queue bluegreen-revocations-dlq-kept');
  });

  it('reports an API that refuses the token as a failed check, not a crash', async () => {
    const { api } = await rig();
    const [check] = await checkQueueConsumer(config(api), { env: { ...env, QT: 'wrong' } });
    expect(check).toMatchObject({ id: 'queue-consumer', ok: false, hint: expect.stringContaining('Queues Edit') });
  });
});
