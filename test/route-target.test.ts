// The cutover's `route` target against the real router (bundled by wrangler, in Miniflare through
// support/edge.ts): prepare raises the fence and requests are held, commit releases them to green,
// verify reads the new epoch, rollback flips back through a new fence; the coordinator rolls a
// committed route back when a later target fails; a wrong or unset token fails with a hint and an
// exit code and never shows the token; a fence whose hold budget ran out refuses the commit and the
// router stays on blue; requests that do not drain make prepare fail with the fence lowered.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ActionFailed, runAction, type ActionEnv } from '../src/cutover/actions.ts';
import { twoPhaseCutover } from '../src/cutover/coordinator.ts';
import { RouteAdminError, runRoute, type RouteAction, type RouteSaved } from '../src/cutover/route.ts';
import { actionOf, cutoverSchema, type TargetSpec } from '../src/cutover/schema.ts';
import { ExitCode } from '../src/errors.ts';
import { startEdge, type LocalEdge } from '../support/edge.ts';
import { createDbPair, type DbPair } from './harness.ts';

/** A tiny engine answering with its own name; `/slow?ms=N` answers after N ms. */
function engine(name: string): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://x');
      const ms = url.pathname === '/slow' ? Number(url.searchParams.get('ms') ?? 0) : 0;
      setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ engine: name })), ms);
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        close: () => new Promise((r) => {
          server.closeAllConnections();
          server.close(() => r());
        }),
      }),
    ),
  );
}

describe('cutover route target against the real router', () => {
  let pair: DbPair;
  let edge: LocalEdge;
  let blue: Awaited<ReturnType<typeof engine>>;
  let green: Awaited<ReturnType<typeof engine>>;
  let env: ActionEnv;

  /** A configured route target (schema defaults applied) flipping to green. */
  const target = (over: Record<string, unknown> = {}): TargetSpec =>
    cutoverSchema.parse({ targets: [{ name: 'router', kind: 'route', url: edge.url, token: 'env:ROUTE_TOKEN', holdMs: 5_000, drainMs: 1_000, commit: { upstream: green.url }, ...over }] }).targets[0]!;
  const phase = (t: TargetSpec, p: 'prepare' | 'commit' | 'verify' | 'rollback') => actionOf(t, p) as RouteAction;

  async function call(path = '/health'): Promise<{ engine: string; epoch: number; heldMs: number }> {
    const res = await fetch(`${edge.url}${path}`);
    const body = (await res.json()) as { engine: string };
    return { engine: body.engine, epoch: Number(res.headers.get('x-route-epoch')), heldMs: Number(res.headers.get('x-held-ms')) };
  }

  beforeAll(async () => {
    pair = await createDbPair('route');
    [blue, green] = await Promise.all([engine('blue'), engine('green')]);
    edge = await startEdge({ upstreamUrl: blue.url, greenDsn: pair.greenDsn, hmacKey: 'route-target-test', profile: 'hydra-v1', onLog: () => undefined });
    env = { blueDsn: pair.blueDsn, greenDsn: pair.greenDsn, kv: () => { throw new Error('no KV in this test'); }, env: { ROUTE_TOKEN: edge.routeAdmin.token } };
  }, 180_000);

  afterAll(async () => {
    await edge?.stop();
    await Promise.all([blue?.close(), green?.close()]);
    await pair?.drop();
  });

  beforeEach(async () => {
    if ((await edge.route()).upstream !== blue.url) await edge.setUpstream(blue.url);
  });

  it('holds requests from prepare to commit, releases them to green, verifies the epoch and rolls back through a new fence', async () => {
    const t = target();
    const before = await edge.route();
    const prepared = await runAction(phase(t, 'prepare'), env);
    const saved = JSON.parse(prepared.value!) as RouteSaved;
    expect(saved).toMatchObject({ epoch: before.epoch + 1, previousUpstream: blue.url });
    let answered = false;
    const held = call().finally(() => (answered = true));
    await new Promise((r) => setTimeout(r, 300));
    expect(answered).toBe(false);
    expect((await edge.route()).held).toBe(1);

    await runAction(phase(t, 'commit'), env, { saved: prepared.value });
    expect(await held).toMatchObject({ engine: 'green', epoch: saved.epoch });
    expect((await held).heldMs).toBeGreaterThanOrEqual(250);
    await runAction(phase(t, 'verify'), env, { saved: prepared.value });
    expect(await call()).toMatchObject({ engine: 'green', epoch: saved.epoch });

    await runAction(phase(t, 'rollback'), env, { saved: prepared.value });
    expect(await edge.route()).toMatchObject({ upstream: blue.url, epoch: saved.epoch + 1, fence: null });
    expect(await call()).toMatchObject({ engine: 'blue', epoch: saved.epoch + 1 });
    // Rollback is idempotent: a second one finds the route already back.
    await runAction(phase(t, 'rollback'), env, { saved: prepared.value });
    expect((await edge.route()).epoch).toBe(saved.epoch + 1);
  });

  it('rolls a committed route back when a later target fails in the coordinator', async () => {
    const failing = cutoverSchema.parse({ targets: [{ name: 'fails', kind: 'command', commit: { argv: ['false'] }, rollback: { argv: ['true'] } }] }).targets[0]!;
    const outcome = await twoPhaseCutover([target(), failing], env, { timeoutMs: 30_000 });
    expect(outcome.rolledBack).toBe(true);
    expect(outcome.failure).toMatchObject({ target: 'fails', phase: 'commit' });
    expect(outcome.rollbackOrder).toEqual(['fails', 'router']);
    expect(outcome.rollbackFailures).toEqual([]);
    expect((await edge.route()).upstream).toBe(blue.url);
    expect((await call()).engine).toBe('blue');
  });

  it('fails with a hint and an exit code on a wrong or unset token, never showing it', async () => {
    const t = target();
    const wrong = { ...env, env: { ROUTE_TOKEN: 'not-the-router-token' } };
    const err = await runAction(phase(t, 'prepare'), wrong).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ActionFailed);
    expect((err as ActionFailed).message).toMatch(/refused the token \(401/);
    expect((err as ActionFailed).hint).toMatch(/ROUTE_ADMIN_TOKEN/);
    for (const secret of ['not-the-router-token', edge.routeAdmin.token]) expect(JSON.stringify({ m: (err as Error).message, h: (err as ActionFailed).hint })).not.toContain(secret);
    const direct = await runRoute(phase(t, 'prepare'), wrong.env, null).catch((e: unknown) => e);
    expect(direct).toBeInstanceOf(RouteAdminError);
    expect((direct as RouteAdminError).exitCode).toBe(ExitCode.config);
    const unset = await runRoute(phase(t, 'prepare'), {}, null).catch((e: unknown) => e);
    expect(unset).toMatchObject({ exitCode: ExitCode.config, message: expect.stringContaining('ROUTE_TOKEN') });
    expect(await edge.route()).toMatchObject({ upstream: blue.url, fence: null });
  });

  it('refuses the commit once the hold budget ran out; the router went back to blue and rollback has nothing to do', async () => {
    const t = target({ holdMs: 300, drainMs: 0 });
    const before = await edge.route();
    const prepared = await runAction(phase(t, 'prepare'), env);
    const held = await call();
    expect(held).toMatchObject({ engine: 'blue', epoch: before.epoch });
    expect(held.heldMs).toBeGreaterThanOrEqual(200);
    const err = await runAction(phase(t, 'commit'), env, { saved: prepared.value }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ActionFailed);
    expect((err as ActionFailed).message).toMatch(/fence-expired/);
    expect((err as ActionFailed).hint).toMatch(/holdMs/);
    await runAction(phase(t, 'rollback'), env, { saved: prepared.value });
    expect(await edge.route()).toMatchObject({ upstream: blue.url, epoch: before.epoch, fence: null, last: { outcome: 'expired' } });
  });

  it('fails prepare when requests to blue do not drain in time, with the fence lowered again', async () => {
    const slow = call('/slow?ms=1500');
    const deadline = Date.now() + 5_000;
    while ((await edge.route()).inflight < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const err = await runAction(phase(target({ drainMs: 100 }), 'prepare'), env).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ActionFailed);
    expect((err as ActionFailed).message).toMatch(/still in flight/);
    expect(await edge.route()).toMatchObject({ upstream: blue.url, fence: null, last: { outcome: 'lowered' } });
    expect((await slow).engine).toBe('blue');
  });
});
