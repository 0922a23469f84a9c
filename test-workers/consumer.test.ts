// The consumer in workerd against a real green (Hydra v1 fixture) through Hyperdrive: signature and
// schema checks, dead letters with their reason (acked, never applied), one committed transaction
// per batch before any ack, a whole-batch retry when green fails, idempotent redelivery, and the
// full path router -> queue -> consumer -> green.

import { env } from 'cloudflare:workers';
import { createExecutionContext, createMessageBatch, getQueueResult } from 'cloudflare:test';
import { Client } from 'pg';
import { describe, expect, it } from 'vitest';
import consumer, { type ConsumerEnv } from '../src/queue-consumer/consumer.ts';
import router from '../src/queue-consumer/router.ts';
import { canonicalJson, signRevocation, type RevocationBody } from '../src/queue-consumer/message.ts';
import { DEAD_LETTER_PREFIX, type DeadLetter } from '../src/queue-consumer/control.ts';
import { routeTo } from './route.ts';

const KEY = env.REVOCATION_HMAC_KEY;

async function green<T>(fn: (c: Client) => Promise<T>, hyperdrive: Hyperdrive = env.GREEN): Promise<T> {
  const c = new Client({ connectionString: hyperdrive.connectionString });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Active refresh tokens nobody else in this file uses (random picks among the active ones). */
async function activeRefresh(n: number): Promise<{ signature: string; request_id: string }[]> {
  return green(async (c) => (await c.query(`SELECT signature, request_id FROM hydra_oauth2_refresh WHERE active ORDER BY random() LIMIT $1`, [n])).rows);
}

async function refreshActive(signatures: string[]): Promise<boolean[]> {
  return green(async (c) => {
    const { rows } = await c.query(`SELECT signature, active FROM hydra_oauth2_refresh WHERE signature = ANY($1::text[])`, [signatures]);
    const by = new Map(rows.map((r: { signature: string; active: boolean }) => [r.signature, r.active]));
    return signatures.map((s) => by.get(s) ?? false);
  });
}

function event(kind: RevocationBody['kind'], fields: Partial<RevocationBody>): RevocationBody {
  return { v: 1, id: crypto.randomUUID(), kind, at: new Date().toISOString(), ...fields } as RevocationBody;
}

let seq = 0;
async function runBatch(bodies: unknown[], over: Partial<ConsumerEnv> = {}) {
  const batch = createMessageBatch('bluegreen-revocations', bodies.map((body) => ({ id: `m${++seq}`, timestamp: new Date(), attempts: 1, body })));
  const ctx = createExecutionContext();
  await consumer.queue(batch, { ...env, ...over });
  const result = await getQueueResult(batch, ctx);
  return { ids: batch.messages.map((m) => m.id), result };
}

/** Waits until `probe` returns a value (polling a real store; fails after `ms`). */
async function eventually<T>(probe: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await scheduler.wait(50);
  }
}

async function deadLetters(): Promise<DeadLetter[]> {
  const list = await env.DEAD_LETTERS.list({ prefix: DEAD_LETTER_PREFIX });
  return Promise.all(list.keys.map(async (k) => JSON.parse((await env.DEAD_LETTERS.get(k.name))!) as DeadLetter));
}

async function hmacHex(text: string, secret: string): Promise<string> {
  const key = await crypto.subtle.importKey('raw', new TextEncoder().encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return [...new Uint8Array(await crypto.subtle.sign('HMAC', key, new TextEncoder().encode(text)))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

describe('revocation consumer', () => {
  it('applies a verified batch to green in one transaction and acks every message after the commit', async () => {
    const rows = await activeRefresh(3);
    const bodies = await Promise.all(rows.map((r) => signRevocation(event('refresh-rotate', { signature: r.signature }), KEY)));
    const { ids, result } = await runBatch(bodies);
    expect(result.explicitAcks.sort()).toEqual([...ids].sort());
    expect(result.retryMessages).toEqual([]);
    expect(await refreshActive(rows.map((r) => r.signature))).toEqual([false, false, false]);
    const replayed = await green(async (c) => (await c.query(`SELECT count(*)::int AS n FROM bluegreen_green.replayed WHERE event_id = ANY($1::text[])`, [bodies.map((b) => b.body.id)])).rows[0].n);
    expect(replayed).toBe(3);
  });

  it('acks a redelivered batch again without applying it twice', async () => {
    const [row] = await activeRefresh(1);
    const access = await green(async (c) => (await c.query(`SELECT signature, request_id FROM hydra_oauth2_access WHERE request_id = (SELECT request_id FROM hydra_oauth2_refresh WHERE signature = $1)`, [row!.signature])).rows);
    const body = await signRevocation(event('token-revoke', { signature: row!.signature }), KEY);
    const first = await runBatch([body, body]);
    const again = await runBatch([body]);
    expect(first.result.explicitAcks).toHaveLength(2);
    expect(again.result.explicitAcks).toEqual(again.ids);
    expect(await refreshActive([row!.signature])).toEqual([false]);
    const left = await green(async (c) => (await c.query(`SELECT count(*)::int AS n FROM hydra_oauth2_access WHERE signature = ANY($1::text[])`, [access.map((a: { signature: string }) => a.signature)])).rows[0].n);
    expect(left).toBe(0);
  });

  it('sends forged, malformed and invalid messages to the dead-letter queue with the reason, acks them and applies none', async () => {
    const [forgedRow, goodRow] = await activeRefresh(2);
    const forged = await signRevocation(event('refresh-rotate', { signature: forgedRow!.signature }), 'not-the-key');
    const invalidBody = { v: 1, id: crypto.randomUUID(), kind: 'token-revoke', at: new Date().toISOString() };
    const invalid = { body: invalidBody, mac: await hmacHex(canonicalJson(invalidBody), KEY) };
    const malformed = 'revoke everything';
    const good = await signRevocation(event('refresh-rotate', { signature: goodRow!.signature }), KEY);
    const { ids, result } = await runBatch([forged, malformed, invalid, good]);
    expect(result.explicitAcks.sort()).toEqual([...ids].sort());
    expect(await refreshActive([forgedRow!.signature, goodRow!.signature])).toEqual([true, false]);
    const letters = await eventually(async () => {
      const mine = (await deadLetters()).filter((l) => [JSON.stringify(forged), JSON.stringify(malformed), JSON.stringify(invalid)].includes(JSON.stringify(l.original)));
      return mine.length === 3 ? mine : undefined;
    });
    expect(letters.map((l) => l.reason).sort()).toEqual(['bad-signature', 'invalid-body', 'malformed']);
    for (const l of letters) expect(l.detail.length).toBeGreaterThan(0);
  });

  it('retries the whole batch and acks nothing when the green write fails, then applies it on redelivery', async () => {
    const rows = await activeRefresh(2);
    const bodies = await Promise.all(rows.map((r) => signRevocation(event('refresh-rotate', { signature: r.signature }), KEY)));
    const failed = await runBatch(bodies, { GREEN: env.GREEN_EMPTY });
    expect(failed.result.explicitAcks).toEqual([]);
    expect(failed.result.retryMessages.map((r: { msgId: string }) => r.msgId).sort()).toEqual([...failed.ids].sort());
    expect(await refreshActive(rows.map((r) => r.signature))).toEqual([true, true]);
    const redelivered = await runBatch(bodies);
    expect(redelivered.result.explicitAcks.sort()).toEqual([...redelivered.ids].sort());
    expect(await refreshActive(rows.map((r) => r.signature))).toEqual([false, false]);
  });

  it('keeps rejected messages for retry when the dead-letter queue refuses them', async () => {
    const refusing = { sendBatch: async () => Promise.reject(new Error('dlq unavailable')) } as unknown as Queue;
    const { ids, result } = await runBatch(['not an envelope'], { DLQ: refusing });
    expect(result.explicitAcks).toEqual([]);
    expect(result.retryMessages.map((r: { msgId: string }) => r.msgId)).toEqual(ids);
  });

  it('carries a revocation from the router through the real queue into green', async () => {
    await routeTo('http://engine.test');
    const [row] = await activeRefresh(1);
    const req = new Request('https://auth.example/oauth2/revoke', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=ory_rt_secretnonce.${encodeURIComponent(row!.signature)}&client_id=c1` });
    const res = await router.fetch(req as Request<unknown, IncomingRequestCfProperties>, { ...env, REVOCATIONS: env.TO_CONSUMER }, createExecutionContext());
    expect(res.status).toBe(200);
    await eventually(async () => ((await refreshActive([row!.signature]))[0] === false ? true : undefined));
    expect(await refreshActive([row!.signature])).toEqual([false]);
  });
});
