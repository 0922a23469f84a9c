// The router's fence in workerd (issue H item 1): requests that arrive while the fence is up are held,
// not failed, and go to the new upstream once the flip commits; when the hold budget runs out they go
// to the OLD upstream and a later commit through that fence is refused; raise waits for requests of
// the old epoch still in flight; after a commit no route read returns the old upstream; the admin
// endpoint refuses a missing or wrong token without echoing it.

import { exports } from 'cloudflare:workers';
import { beforeEach, describe, expect, it } from 'vitest';
import type { Raised, RouteState } from '../src/queue-consumer/route-fence.ts';
import { admin, ADMIN_TOKEN, routeStub, routeTo } from './route.ts';

const BLUE = 'http://blue.test';
const GREEN = 'http://green.test';

/** A proxied request through the router, with what the test needs from its answer. */
async function get(path = '/health'): Promise<{ status: number; host: string | null; epoch: number; heldMs: number }> {
  const res = await exports.default.fetch(`https://auth.example${path}`);
  await res.arrayBuffer();
  return { status: res.status, host: res.headers.get('x-engine-host'), epoch: Number(res.headers.get('x-route-epoch')), heldMs: Number(res.headers.get('x-held-ms')) };
}

async function raise(holdMs: number, drainMs: number): Promise<Raised> {
  const res = await admin('raise', { holdMs, drainMs });
  expect(res.status).toBe(200);
  return res.json<Raised>();
}

async function state(): Promise<RouteState> {
  return (await admin('state')).json<RouteState>();
}

/** Polls the route object until `probe` holds (fails after `ms`). */
async function until(probe: (s: RouteState) => boolean, ms = 5_000): Promise<RouteState> {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = await routeStub().state();
    if (probe(s)) return s;
    if (Date.now() > deadline) throw new Error(`route state never matched: ${JSON.stringify(s)}`);
    await scheduler.wait(20);
  }
}

describe('route fence', () => {
  beforeEach(async () => {
    await routeTo(BLUE);
  });

  it('holds requests while the fence is up and releases them to the new upstream on commit', async () => {
    const before = await state();
    const fence = await raise(5_000, 1_000);
    expect(fence).toMatchObject({ epoch: before.epoch + 1, previousUpstream: BLUE, inflight: 0 });
    let settled = 0;
    const held = Array.from({ length: 5 }, () => get().finally(() => (settled += 1)));
    await until((s) => s.held === 5);
    await scheduler.wait(150);
    expect(settled).toBe(0); // held, not failed
    const committed = await admin('commit', { fenceId: fence.fenceId, upstream: GREEN });
    expect(committed.status).toBe(200);
    expect(await committed.json()).toMatchObject({ upstream: GREEN, epoch: fence.epoch, fence: null, last: { fenceId: fence.fenceId, outcome: 'committed' } });
    const answers = await Promise.all(held);
    for (const a of answers) {
      expect(a).toMatchObject({ status: 200, host: 'green.test', epoch: fence.epoch });
      expect(a.heldMs).toBeGreaterThanOrEqual(150);
    }
  });

  it('sends held requests back to the OLD upstream when the hold budget runs out, and refuses a later commit', async () => {
    const before = await state();
    const fence = await raise(400, 0);
    const started = Date.now();
    const held = await Promise.all(Array.from({ length: 3 }, () => get()));
    for (const a of held) {
      expect(a).toMatchObject({ status: 200, host: 'blue.test', epoch: before.epoch });
      expect(a.heldMs).toBeGreaterThanOrEqual(300);
    }
    expect(Date.now() - started).toBeLessThan(3_000);
    const after = await state();
    expect(after).toMatchObject({ upstream: BLUE, epoch: before.epoch, fence: null, last: { fenceId: fence.fenceId, outcome: 'expired' } });
    const late = await admin('commit', { fenceId: fence.fenceId, upstream: GREEN });
    expect(late.status).toBe(409);
    expect(await late.json()).toMatchObject({ error: 'fence-expired' });
    expect((await get()).host).toBe('blue.test');
  });

  it('drops an expired fence even when no request is waiting on it', async () => {
    const fence = await raise(200, 0);
    await scheduler.wait(350);
    expect(await state()).toMatchObject({ upstream: BLUE, fence: null, last: { fenceId: fence.fenceId, outcome: 'expired' } });
    expect((await admin('commit', { fenceId: fence.fenceId, upstream: GREEN })).status).toBe(409);
  });

  it('waits in raise for requests of the old epoch still in flight', async () => {
    const slow = get('/slow?ms=600');
    await until((s) => s.inflight === 1);
    const fence = await raise(5_000, 3_000);
    // The slow request takes 600 ms from its start; raise began after it was counted in flight.
    expect(fence.inflight).toBe(0);
    expect(fence.waitedMs).toBeGreaterThanOrEqual(300);
    expect(await slow).toMatchObject({ status: 200, host: 'blue.test' });
    expect((await admin('lower', { fenceId: fence.fenceId })).status).toBe(200);
  });

  it('reports requests that did not drain in time, refuses to commit over them, and lowers back on blue', async () => {
    const slow = get('/slow?ms=1500');
    await until((s) => s.inflight === 1);
    const fence = await raise(5_000, 100);
    expect(fence.inflight).toBe(1);
    const refused = await admin('commit', { fenceId: fence.fenceId, upstream: GREEN });
    expect(refused.status).toBe(409);
    expect(await refused.json()).toMatchObject({ error: 'not-drained' });
    const lowered = await admin('lower', { fenceId: fence.fenceId });
    expect(await lowered.json()).toMatchObject({ upstream: BLUE, fence: null, last: { outcome: 'lowered' } });
    expect((await slow).host).toBe('blue.test');
    // A lowered fence stays lowered: committing through it later is refused too.
    expect(await (await admin('commit', { fenceId: fence.fenceId, upstream: GREEN })).json()).toMatchObject({ error: 'fence-lowered' });
  });

  it('never gives the old upstream to a route read after the flip committed', async () => {
    const fence = await raise(5_000, 1_000);
    expect((await admin('commit', { fenceId: fence.fenceId, upstream: GREEN })).status).toBe(200);
    const stub = routeStub();
    for (let i = 0; i < 200; i++) {
      if (i % 2 === 0) {
        const a = await get();
        expect([a.host, a.epoch]).toEqual(['green.test', fence.epoch]);
      } else {
        const grant = await stub.acquire();
        expect([grant.upstream, grant.epoch]).toEqual([GREEN, fence.epoch]);
        await stub.release(grant.lease!);
      }
    }
    // The rollback after a cutover flips back through a new fence, never around it.
    const back = await raise(5_000, 1_000);
    expect(back.previousUpstream).toBe(GREEN);
    expect(await (await admin('commit', { fenceId: back.fenceId, upstream: BLUE })).json()).toMatchObject({ upstream: BLUE, epoch: fence.epoch + 1 });
  });

  it('refuses a second fence, a commit naming another fence, and repeats a committed commit idempotently', async () => {
    const fence = await raise(5_000, 0);
    expect(await (await admin('raise', { holdMs: 1_000, drainMs: 0 })).json()).toMatchObject({ error: 'fence-up' });
    expect(await (await admin('commit', { fenceId: 'not-the-fence', upstream: GREEN })).json()).toMatchObject({ error: 'no-fence' });
    expect((await admin('commit', { fenceId: fence.fenceId, upstream: GREEN })).status).toBe(200);
    expect((await admin('commit', { fenceId: fence.fenceId, upstream: GREEN })).status).toBe(200);
    expect(await (await admin('lower', { fenceId: fence.fenceId })).json()).toMatchObject({ error: 'fence-committed' });
    expect((await admin('raise', { holdMs: 0, drainMs: 0 })).status).toBe(400);
  });

  it('refuses the admin endpoint without the right token and never echoes what was sent', async () => {
    for (const token of [null, '', 'wrong-token', `${ADMIN_TOKEN}x`, ADMIN_TOKEN.slice(0, -1)]) {
      const res = await admin('raise', { holdMs: 5_000, drainMs: 0 }, token);
      expect(res.status).toBe(401);
      const text = await res.text();
      expect(text).not.toContain(ADMIN_TOKEN);
      if (token) expect(text).not.toContain(token);
    }
    // The router's own namespace is never proxied to the engine.
    const other = await exports.default.fetch('https://auth.example/__bluegreen/route', { method: 'POST' });
    expect(other.status).toBe(404);
    expect(other.headers.get('x-engine-host')).toBeNull();
    const basic = await exports.default.fetch('https://auth.example/__bluegreen/route/state', { method: 'POST', headers: { authorization: `Basic ${btoa(`x:${ADMIN_TOKEN}`)}` } });
    expect(basic.status).toBe(401);
    expect((await state()).fence).toBeNull();
  });
});
