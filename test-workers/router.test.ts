// The edge router in workerd: proxying to the upstream the route fence names, a signed message queued before every
// successful revocation answer (token, consent v1 and v2, refresh rotation), never a raw token, and
// 503 with Retry-After when the queue refuses the message.

import { env, exports } from 'cloudflare:workers';
import { createExecutionContext } from 'cloudflare:test';
import { beforeEach, describe, expect, it } from 'vitest';
import router from '../src/queue-consumer/router.ts';
import { verifyRevocation, type Envelope } from '../src/queue-consumer/message.ts';
import { tokenSignature } from '../src/queue-consumer/token.ts';
import { routeTo } from './route.ts';

const ENGINE = 'http://engine.test';

/** The real producer, recording what was sent before each answer came back. */
function recordingQueue(): { queue: Queue; sent: Envelope[] } {
  const sent: Envelope[] = [];
  const queue = {
    send: async (body: Envelope, opts?: QueueSendOptions) => {
      await env.REVOCATIONS.send(body, opts);
      sent.push(body);
    },
    sendBatch: (batch: Iterable<MessageSendRequest>, opts?: QueueSendBatchOptions) => env.REVOCATIONS.sendBatch(batch, opts),
  } as unknown as Queue;
  return { queue, sent };
}

/** A producer whose queue is unavailable. */
const brokenQueue = {
  send: async () => {
    throw new Error('queue unavailable');
  },
  sendBatch: async () => {
    throw new Error('queue unavailable');
  },
} as unknown as Queue;

function form(fields: Record<string, string>): RequestInit {
  return { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${btoa('client-a:secret')}` }, body: new URLSearchParams(fields).toString() };
}

const nonce = () => crypto.randomUUID().replace(/-/g, '');

async function call(path: string, init: RequestInit, queue: Queue): Promise<Response> {
  return router.fetch(new Request(`https://auth.example${path}`, init) as Request<unknown, IncomingRequestCfProperties>, { ...env, REVOCATIONS: queue }, createExecutionContext());
}

async function verified(envelope: Envelope) {
  const v = await verifyRevocation(JSON.parse(JSON.stringify(envelope)), env.REVOCATION_HMAC_KEY);
  if (!v.ok) throw new Error(`message does not verify: ${v.detail}`);
  return v.body;
}

describe('edge router', () => {
  beforeEach(async () => {
    await routeTo(ENGINE);
  });

  it('proxies ordinary traffic to the upstream the route names and follows a flip, stamping the epoch', async () => {
    const first = await exports.default.fetch('https://auth.example/.well-known/openid-configuration?x=1');
    expect(await first.json()).toEqual({ proxied: 'GET /.well-known/openid-configuration?x=1' });
    expect(first.headers.get('x-engine-host')).toBe('engine.test');
    const epoch = Number(first.headers.get('x-route-epoch'));
    expect(first.headers.get('x-held-ms')).toBe('0');
    await routeTo('http://green-engine.test');
    const flipped = await exports.default.fetch('https://auth.example/health/ready', { method: 'POST', body: 'x' });
    expect(await flipped.json()).toEqual({ proxied: 'POST /health/ready' });
    expect(flipped.headers.get('x-engine-host')).toBe('green-engine.test');
    expect(Number(flipped.headers.get('x-route-epoch'))).toBe(epoch + 1);
  });

  it('answers 503 when no route was seeded', async () => {
    // A route object nobody seeded, in place of the router's one instance.
    const name = `unseeded-${nonce()}`;
    const unseeded = { idFromName: () => env.ROUTE.idFromName(name), get: (id: DurableObjectId) => env.ROUTE.get(id) } as unknown as typeof env.ROUTE;
    const res = await router.fetch(new Request('https://auth.example/oauth2/revoke', { method: 'POST' }) as Request<unknown, IncomingRequestCfProperties>, { ...env, ROUTE: unseeded }, createExecutionContext());
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
  });

  it('queues a signed token-revoke carrying the signature, not the token, before answering', async () => {
    const token = `ory_at_${nonce()}.SiGnAtUrE-${nonce()}`;
    const { queue, sent } = recordingQueue();
    const res = await call('/oauth2/revoke', form({ token }), queue);
    expect(res.status).toBe(200);
    expect(sent).toHaveLength(1);
    const body = await verified(sent[0]!);
    expect(body).toMatchObject({ v: 1, kind: 'token-revoke', signature: tokenSignature(token), client: 'client-a' });
    expect(JSON.stringify(sent[0])).not.toContain(token.split('.')[0]);
  });

  it('queues consent revocations on the v1 and v2 admin paths with subject and client', async () => {
    const { queue, sent } = recordingQueue();
    const v1 = await call('/oauth2/auth/sessions/consent?subject=alice', { method: 'DELETE' }, queue);
    const v2 = await call('/admin/oauth2/auth/sessions/consent?subject=bob&client=client-b', { method: 'DELETE' }, queue);
    expect([v1.status, v2.status]).toEqual([204, 204]);
    const bodies = await Promise.all(sent.map(verified));
    expect(bodies.map((b) => [b.kind, b.subject, b.client])).toEqual([
      ['consent-revoke', 'alice', undefined],
      ['consent-revoke', 'bob', 'client-b'],
    ]);
    expect(new Set(bodies.map((b) => b.id)).size).toBe(2);
  });

  it('queues nothing when the engine refuses the revocation', async () => {
    const { queue, sent } = recordingQueue();
    const res = await call('/admin/oauth2/auth/sessions/consent?subject=nobody', { method: 'DELETE' }, queue);
    expect(res.status).toBe(404);
    expect(sent).toHaveLength(0);
  });

  it('answers 503 with Retry-After when the revocation cannot be queued, for every revocation path', async () => {
    const revoke = await call('/oauth2/revoke', form({ token: `ory_at_${nonce()}.sig` }), brokenQueue);
    const consent = await call('/admin/oauth2/auth/sessions/consent?subject=carol', { method: 'DELETE' }, brokenQueue);
    const refresh = await call('/oauth2/token', form({ grant_type: 'refresh_token', refresh_token: `ory_rt_${nonce()}.rs` }), brokenQueue);
    for (const res of [revoke, consent, refresh]) {
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('1');
      expect(await res.json()).toMatchObject({ error: 'temporarily_unavailable' });
    }
  });

  it('queues a refresh-rotate for the old refresh token and replays it after a 503 under the same id', async () => {
    const token = `ory_rt_${nonce()}.old-${nonce()}`;
    const failed = await call('/oauth2/token', form({ grant_type: 'refresh_token', refresh_token: token }), brokenQueue);
    expect(failed.status).toBe(503);
    const { queue, sent } = recordingQueue();
    const retried = await call('/oauth2/token', form({ grant_type: 'refresh_token', refresh_token: token }), queue);
    expect(retried.status).toBe(200);
    expect(retried.headers.get('x-coalesced')).toBe('cache');
    const again = await call('/oauth2/token', form({ grant_type: 'refresh_token', refresh_token: token }), queue);
    expect(again.status).toBe(200);
    const bodies = await Promise.all(sent.map(verified));
    expect(bodies).toHaveLength(2);
    expect(bodies[0]).toMatchObject({ kind: 'refresh-rotate', signature: tokenSignature(token), client: 'client-a' });
    expect(bodies[1]!.id).toBe(bodies[0]!.id);
  });

  it('passes grants other than refresh straight through without queueing', async () => {
    const { queue, sent } = recordingQueue();
    const res = await call('/oauth2/token', form({ grant_type: 'client_credentials' }), queue);
    expect(await res.json()).toEqual({ proxied: 'POST /oauth2/token' });
    expect(sent).toHaveLength(0);
  });
});
