// The pull-consumer contract, run twice: against LocalQueue directly, and against HttpQueue talking
// over real HTTP to a server that serves the documented Queues REST shapes backed by a LocalQueue.
// The server's wire format is itself checked against the pull-consumer docs (base64 JSON bodies with
// `CF-Content-Type: json`), so a client that reads bodies as plain JSON text fails here.

import { afterAll, describe, expect, it } from 'vitest';
import { HttpQueue, QueueApiError } from '../src/queue/http.ts';
import { QueueDeliveryPausedError } from '../src/queue/queue.ts';
import { LocalQueue } from '../support/queues/local-queue.ts';
import { serveLocalQueueApi, type LocalQueueApi } from '../support/queues/fake-api.ts';
import type { RevocationQueue } from '../src/queue/queue.ts';

interface Rig {
  queue: RevocationQueue;
  local: LocalQueue;
  clock: { t: number };
}

const servers: LocalQueueApi[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

const rigs: Record<string, () => Promise<Rig>> = {
  LocalQueue: async () => {
    const clock = { t: 1_000_000 };
    const local = new LocalQueue({ maxRetries: 2, now: () => clock.t });
    return { queue: local, local, clock };
  },
  'HttpQueue over the local REST server': async () => {
    const clock = { t: 1_000_000 };
    const local = new LocalQueue({ maxRetries: 2, now: () => clock.t });
    const api = await serveLocalQueueApi(local, { accountId: 'acc1', queueId: 'q1', token: 'tok-secret' });
    servers.push(api);
    return { queue: new HttpQueue({ accountId: 'acc1', queueId: 'q1', token: 'tok-secret', baseUrl: api.baseUrl }), local, clock };
  },
};

for (const [name, make] of Object.entries(rigs)) {
  describe(`queue contract: ${name}`, () => {
    it('delivers JSON bodies with a lease and hides leased messages until acked', async () => {
      const { queue, local } = await make();
      local.send({ n: 1 });
      local.send({ n: 2 });
      local.send({ n: 3 });
      const first = await queue.pull(2, 30_000);
      expect(first.map((m) => m.body)).toEqual([{ n: 1 }, { n: 2 }]);
      expect(first.every((m) => m.attempts === 1 && m.leaseId.length > 0)).toBe(true);
      const second = await queue.pull(10, 30_000);
      expect(second.map((m) => m.body)).toEqual([{ n: 3 }]);
      expect(await queue.ack([...first, ...second].map((m) => m.leaseId))).toEqual({ ackCount: 3, retryCount: 0 });
      expect(await queue.pull(10, 30_000)).toEqual([]);
      expect(local.size).toBe(0);
    });

    it('redelivers a message whose visibility timeout ran out, with one more attempt, and ignores the stale lease', async () => {
      const { queue, local, clock } = await make();
      local.send({ n: 1 });
      const [a] = await queue.pull(1, 5_000);
      clock.t += 5_001;
      const [b] = await queue.pull(1, 5_000);
      expect(b!.id).toBe(a!.id);
      expect(b!.attempts).toBe(2);
      expect(await queue.ack([a!.leaseId])).toEqual({ ackCount: 0, retryCount: 0 });
      expect(await queue.ack([b!.leaseId])).toEqual({ ackCount: 1, retryCount: 0 });
    });

    it('makes a retried message visible again only after its delay', async () => {
      const { queue, local, clock } = await make();
      local.send({ n: 1 });
      const [a] = await queue.pull(1, 30_000);
      expect(await queue.ack([], [{ leaseId: a!.leaseId, delaySeconds: 10 }])).toEqual({ ackCount: 0, retryCount: 1 });
      expect(await queue.pull(1, 30_000)).toEqual([]);
      clock.t += 10_000;
      const [b] = await queue.pull(1, 30_000);
      expect(b!.attempts).toBe(2);
    });

    it('moves a message to the dead-letter list after max retries failed deliveries', async () => {
      const { queue, local } = await make();
      local.send({ n: 'poison' });
      for (let i = 1; i <= 3; i++) {
        const [m] = await queue.pull(1, 30_000);
        expect(m!.attempts).toBe(i);
        await queue.ack([], [{ leaseId: m!.leaseId }]);
      }
      expect(await queue.pull(1, 30_000)).toEqual([]);
      expect(local.deadLetters.map((d) => [d.body, d.attempts])).toEqual([[{ n: 'poison' }, 3]]);
    });

    it('refuses every pull of a paused queue with the resume command, and loses no message or attempt', async () => {
      const { queue, local } = await make();
      local.send({ n: 1 });
      local.pauseDelivery();
      const err = await queue.pull(10, 30_000).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QueueDeliveryPausedError);
      expect((err as QueueDeliveryPausedError).exitCode).toBe(6);
      expect((err as QueueDeliveryPausedError).hint).toContain('npx wrangler queues resume-delivery bluegreen-revocations');
      expect(local.size).toBe(1);
      local.resumeDelivery();
      const [m] = await queue.pull(10, 30_000);
      expect([m!.body, m!.attempts]).toEqual([{ n: 1 }, 1]);
    });

    it('lists the consumers and the paused flag of the queue', async () => {
      const { queue, local } = await make();
      local.consumers = [{ type: 'worker', scriptName: 'bluegreen-revocation-consumer', deadLetterQueue: 'bluegreen-revocations-dlq' }];
      local.pauseDelivery();
      expect(await queue.describe()).toEqual({ name: 'bluegreen-revocations', deliveryPaused: true });
      expect(await queue.listConsumers()).toEqual([expect.objectContaining({ type: 'worker', scriptName: 'bluegreen-revocation-consumer', deadLetterQueue: 'bluegreen-revocations-dlq' })]);
    });

    it('refuses a batch size outside 1..100', async () => {
      const { queue } = await make();
      await expect(queue.pull(101, 1000)).rejects.toThrow(/batch_size/);
    });
  });
}

describe('the local REST server speaks the documented wire format', () => {
  it('sends a json message as base64 with CF-Content-Type json, as the pull-consumer docs describe', async () => {
    const local = new LocalQueue();
    const api = await serveLocalQueueApi(local, { accountId: 'acc1', queueId: 'q1', token: 't' });
    servers.push(api);
    const sent = { body: { v: 1, id: 'wire-0001' }, mac: 'ab'.repeat(32) };
    local.send(sent);
    const res = await fetch(`${api.baseUrl}/accounts/acc1/queues/q1/messages/pull`, { method: 'POST', headers: { authorization: 'Bearer t', 'content-type': 'application/json' }, body: JSON.stringify({ batch_size: 10, visibility_timeout_ms: 1000 }) });
    const doc = (await res.json()) as { success: boolean; result: { messages: { body: string; metadata: Record<string, string>; lease_id: string; id: string; attempts: number; timestamp_ms: number }[] } };
    expect(doc.success).toBe(true);
    const [m] = doc.result.messages;
    expect(Object.keys(m!).sort()).toEqual(['attempts', 'body', 'id', 'lease_id', 'metadata', 'timestamp_ms']);
    expect(m!.metadata['CF-Content-Type']).toBe('json');
    expect(m!.body).not.toBe(JSON.stringify(sent));
    expect(JSON.parse(Buffer.from(m!.body, 'base64').toString('utf8'))).toEqual(sent);
  });

  it('answers a pull from a paused queue with 409 and the error message queue_delivery_paused', async () => {
    const local = new LocalQueue();
    const api = await serveLocalQueueApi(local, { accountId: 'acc1', queueId: 'q1', token: 't' });
    servers.push(api);
    local.pauseDelivery();
    const res = await fetch(`${api.baseUrl}/accounts/acc1/queues/q1/messages/pull`, { method: 'POST', headers: { authorization: 'Bearer t', 'content-type': 'application/json' }, body: '{}' });
    expect(res.status).toBe(409);
    expect(await res.json()).toMatchObject({ success: false, errors: [{ message: 'queue_delivery_paused' }] });
  });
});

describe('HttpQueue errors', () => {
  it('turns a refused token into a QueueApiError with exit code 6 that never prints the token', async () => {
    const local = new LocalQueue();
    const api = await serveLocalQueueApi(local, { accountId: 'acc1', queueId: 'q1', token: 'right-token' });
    servers.push(api);
    const queue = new HttpQueue({ accountId: 'acc1', queueId: 'q1', token: 'wrong-token-xyz', baseUrl: api.baseUrl });
    const err = await queue.pull(1, 1000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QueueApiError);
    expect((err as QueueApiError).exitCode).toBe(6);
    expect((err as QueueApiError).hint).toMatch(/Queues Edit/);
    expect(JSON.stringify({ m: (err as Error).message, d: (err as QueueApiError).toJSON() })).not.toContain('wrong-token-xyz');
  });

  it('names the unreachable API without failing silently', async () => {
    const queue = new HttpQueue({ accountId: 'a', queueId: 'q', token: 't', baseUrl: 'http://127.0.0.1:1/client/v4', retry: { attempts: 2, baseDelayMs: 1 } });
    await expect(queue.pull(1, 1000)).rejects.toThrow(/cannot reach the Queues API for pull \(2 tries\)/);
  });
});
