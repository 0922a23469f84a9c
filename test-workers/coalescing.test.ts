// Refresh-token coalescing in workerd: concurrent and retried refresh grants with the same token
// reach the engine once and all get the first answer; errors are not cached; the stored answer is
// sealed with a key derived from the token and holds no usable token.

import { env, exports } from 'cloudflare:workers';
import { runInDurableObject } from 'cloudflare:test';
import { beforeEach, describe, expect, it } from 'vitest';
import { openAnswer, type SealedAnswer } from '../src/queue-consumer/seal.ts';
import { sha256Hex } from '../src/queue-consumer/token.ts';
import { routeTo } from './route.ts';

const nonce = () => crypto.randomUUID().replace(/-/g, '');

function refresh(token: string): Promise<Response> {
  return exports.default.fetch('https://auth.example/oauth2/token', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: token, client_id: 'client-a' }).toString(),
  });
}

async function engineCalls(token: string): Promise<number> {
  const res = await fetch(`http://engine.test/calls?token=${encodeURIComponent(token)}`);
  return ((await res.json()) as { calls: number }).calls;
}

describe('refresh-token coalescing', () => {
  beforeEach(async () => {
    await routeTo('http://engine.test');
  });

  it('gives five concurrent duplicates the first answer while the engine sees one grant', async () => {
    const token = `slow_${nonce()}.sig${nonce()}`;
    const answers = await Promise.all(Array.from({ length: 5 }, () => refresh(token)));
    const bodies = await Promise.all(answers.map((r) => r.text()));
    expect(answers.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    expect(new Set(bodies).size).toBe(1);
    expect(JSON.parse(bodies[0]!)).toHaveProperty('refresh_token');
    // The engine holds the first grant for 300 ms, so the twins join it in flight (a very late one
    // would read the sealed answer instead: same body, still no second engine call).
    const sources = answers.map((r) => r.headers.get('x-coalesced'));
    expect(sources.filter((s) => s === 'engine')).toHaveLength(1);
    expect(sources.filter((s) => s === 'inflight').length).toBeGreaterThanOrEqual(1);
    expect(sources.filter((s) => s !== 'engine').every((s) => s === 'inflight' || s === 'cache')).toBe(true);
    expect(await engineCalls(token)).toBe(1);
  });

  it('replays the first answer to a retry within the window instead of rotating again', async () => {
    const token = `ory_rt_${nonce()}.sig${nonce()}`;
    const first = await refresh(token);
    const retry = await refresh(token);
    expect([first.status, retry.status]).toEqual([200, 200]);
    expect(await retry.text()).toBe(await first.text());
    expect(retry.headers.get('x-coalesced')).toBe('cache');
    expect(retry.headers.get('cache-control')).toBe('no-store');
    expect(await engineCalls(token)).toBe(1);
  });

  it('does not cache error answers, so a retry reaches the engine again', async () => {
    const token = `bad_${nonce()}.sig`;
    const first = await refresh(token);
    const second = await refresh(token);
    expect([first.status, second.status]).toEqual([400, 400]);
    expect(second.headers.get('x-coalesced')).toBe('engine');
    expect(await engineCalls(token)).toBe(2);
  });

  it('stores only a sealed answer under the token hash, which only the token itself opens', async () => {
    const token = `ory_rt_${nonce()}.sig${nonce()}`;
    const answer = await (await refresh(token)).text();
    const hash = await sha256Hex(token);
    const stub = env.COALESCER.get(env.COALESCER.idFromName(hash));
    const stored = await runInDurableObject(stub, async (_i, state) => [...(await state.storage.list<SealedAnswer>()).entries()]);
    expect(stored.map(([k]) => k)).toEqual([hash]);
    const sealed = stored[0]![1];
    const raw = JSON.stringify(sealed);
    for (const secret of [token, JSON.parse(answer).refresh_token, JSON.parse(answer).access_token]) expect(raw).not.toContain(secret);
    expect(await openAnswer(`${token}x`, sealed)).toBeNull();
    expect((await openAnswer(token, sealed))?.body).toBe(answer);
  });
});
