// The local edge (support/edge.ts) from Node: router, queue, consumer and DLQ sink in
// one Miniflare, Hyperdrive to a real green. Revocations sent through the router while the consumer
// is paused are applied to green after it resumes; forged and malformed messages land in the DLQ
// and change nothing; the router follows a fenced flip of its route object and stamps the epoch.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadHydraV1Schema, seedHydraV1 } from '../support/fixture/seed.ts';
import { signRevocation } from '../src/queue-consumer/message.ts';
import { startEdge, type LocalEdge } from '../support/edge.ts';
import { createDbPair, withClient, type DbPair } from './harness.ts';

const KEY = 'edge-local-test-key';

/** A tiny engine: 200 to revoke, 204 to consent revocation, and its own name for anything else. */
function engine(name: string): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.method === 'POST' && req.url === '/oauth2/revoke') return void res.writeHead(200).end();
      if (req.method === 'DELETE' && req.url?.startsWith('/admin/oauth2/auth/sessions/consent')) return void res.writeHead(204).end();
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ engine: name }));
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => new Promise((r) => server.close(() => r())) })),
  );
}

async function activeRefresh(dsn: string, n: number): Promise<string[]> {
  return withClient(dsn, async (c) => (await c.query<{ signature: string }>(`SELECT signature FROM hydra_oauth2_refresh WHERE active ORDER BY signature LIMIT $1`, [n])).rows.map((r) => r.signature));
}

async function stillActive(dsn: string, signatures: string[]): Promise<number> {
  return withClient(dsn, async (c) => (await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM hydra_oauth2_refresh WHERE active AND signature = ANY($1::text[])`, [signatures])).rows[0]!.n);
}

/** Polls a real condition until it holds (fails after `ms`). */
async function until(probe: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('local edge (router + queue + consumer in one Miniflare)', () => {
  let pair: DbPair;
  let edge: LocalEdge;
  let blueEngine: Awaited<ReturnType<typeof engine>>;
  let greenEngine: Awaited<ReturnType<typeof engine>>;

  beforeAll(async () => {
    pair = await createDbPair('edge');
    await withClient(pair.greenDsn, async (c) => {
      await loadHydraV1Schema(c);
      await seedHydraV1(c, { rows: 300, seed: 11, dirty: [] });
    });
    [blueEngine, greenEngine] = await Promise.all([engine('blue'), engine('green')]);
    edge = await startEdge({ upstreamUrl: blueEngine.url, greenDsn: pair.greenDsn, hmacKey: KEY, profile: 'hydra-v1', batchSize: 50, onLog: () => undefined });
  });

  afterAll(async () => {
    await edge?.stop();
    await Promise.all([blueEngine?.close(), greenEngine?.close()]);
    await pair?.drop();
  });

  it('applies revocations sent while the consumer was paused once it resumes, and dead-letters forged ones', async () => {
    const [forgedTarget, ...targets] = await activeRefresh(pair.greenDsn, 41);
    await edge.pauseConsumer();
    const answers = await Promise.all(
      targets.map((sig) => fetch(`${edge.url}/oauth2/revoke`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=ory_rt_nonce.${encodeURIComponent(sig)}` })),
    );
    expect(answers.map((r) => r.status)).toEqual(targets.map(() => 200));
    const forged = await signRevocation({ v: 1, id: crypto.randomUUID(), kind: 'refresh-rotate', at: new Date().toISOString(), signature: forgedTarget! }, 'wrong-key');
    const duplicate = await signRevocation({ v: 1, id: crypto.randomUUID(), kind: 'refresh-rotate', at: new Date().toISOString(), signature: targets[0]! }, KEY);
    await edge.enqueue([forged, { nonsense: true }, duplicate, duplicate]);
    expect(await stillActive(pair.greenDsn, targets)).toBe(targets.length);

    await edge.resumeConsumer();
    await until(async () => (await stillActive(pair.greenDsn, targets)) === 0);
    await until(async () => (await edge.dlq()).length >= 2);
    const letters = await edge.dlq();
    expect(letters.map((l) => l.reason).sort()).toEqual(['bad-signature', 'malformed']);
    expect(await stillActive(pair.greenDsn, [forgedTarget!])).toBe(1);
    const replayed = await withClient(pair.greenDsn, async (c) => (await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM bluegreen_green.replayed`)).rows[0]!.n);
    expect(replayed).toBe(targets.length + 1);
  });

  it('proxies to the upstream the route object names and follows a fenced flip', async () => {
    const before = await fetch(`${edge.url}/health`);
    expect(await before.json()).toEqual({ engine: 'blue' });
    const epoch = Number(before.headers.get('x-route-epoch'));
    expect(epoch).toBeGreaterThan(0);
    expect(before.headers.get('x-held-ms')).toBe('0');
    await edge.setUpstream(greenEngine.url);
    const after = await fetch(`${edge.url}/health`);
    expect(await after.json()).toEqual({ engine: 'green' });
    expect(Number(after.headers.get('x-route-epoch'))).toBe(epoch + 1);
    expect(await edge.route()).toMatchObject({ upstream: greenEngine.url, epoch: epoch + 1, fence: null });
  });

  it('refuses the admin endpoint without the right token', async () => {
    const wrong = await fetch(`${edge.url}/__bluegreen/route/state`, { method: 'POST', headers: { authorization: 'Bearer nope' } });
    expect(wrong.status).toBe(401);
    expect(await wrong.text()).not.toContain(edge.routeAdmin.token);
  });
});
