// Helpers for the workerd tests: the router's one RouteFence instance, its admin endpoint (through
// the router's own fetch handler), and pointing the route at an engine through a real fenced flip.

import { env, exports } from 'cloudflare:workers';
import { ROUTE_INSTANCE, type RouteState } from '../src/queue-consumer/route-fence.ts';

/** The admin token the test config gives the router. */
export const ADMIN_TOKEN = env.ROUTE_ADMIN_TOKEN ?? '';

/** The RouteFence instance the router reads. */
export function routeStub(): DurableObjectStub<import('../src/queue-consumer/route-fence.ts').RouteFence> {
  return env.ROUTE.get(env.ROUTE.idFromName(ROUTE_INSTANCE));
}

/** POST /__bluegreen/route/<op> through the router; `token: null` sends no Authorization header. */
export function admin(op: string, body: unknown = {}, token: string | null = ADMIN_TOKEN): Promise<Response> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token !== null) headers.authorization = `Bearer ${token}`;
  return exports.default.fetch(`https://auth.example/__bluegreen/route/${op}`, { method: 'POST', headers, body: JSON.stringify(body) });
}

/** Points the router at `upstream`: seeds the route the first time, else flips it through a fence. */
export async function routeTo(upstream: string): Promise<RouteState> {
  const stub = routeStub();
  const now = await stub.state();
  if (now.upstream === upstream && !now.fence) return now;
  if (now.upstream === null) {
    const seeded = await stub.init({ upstream });
    if (!seeded.ok) throw new Error(seeded.message);
    return seeded.value;
  }
  const raised = await stub.raise({ holdMs: 10_000, drainMs: 5_000 });
  if (!raised.ok) throw new Error(raised.message);
  if (raised.value.inflight > 0) throw new Error(`${raised.value.inflight} requests still in flight`);
  const committed = await stub.commit({ fenceId: raised.value.fenceId, upstream });
  if (!committed.ok) throw new Error(committed.message);
  return committed.value;
}
