// The edge router Worker: proxies OAuth traffic to the engine the RouteFence Durable Object names
// (route-fence.ts; cutover flips it through a fence) and, for every access-removing answer, puts a
// signed revocation message on the queue BEFORE answering. If the message cannot be sent the client
// gets 503 and retries, so a revocation is never silently dropped. Refresh grants go through the
// per-token coalescer (coalescer.ts). The cutover tool drives the fence through the admin endpoint
// POST /__bluegreen/route/{init|raise|commit|lower|state} (bearer ROUTE_ADMIN_TOKEN).

import { signRevocation, type RevocationBody } from './message.ts';
import { RefreshCoalescer, type Exchanged } from './coalescer.ts';
import { ROUTE_INSTANCE, RouteFence, type Grant, type Outcome } from './route-fence.ts';
import { classify, clientOf } from './routes.ts';
import { sha256Hex, tokenSignature } from './token.ts';

export { RefreshCoalescer, RouteFence };

/** Bindings of the router (wrangler.router.jsonc). */
export interface RouterEnv {
  /** The route and its fence (one instance, ROUTE_INSTANCE): read on every request. */
  ROUTE: DurableObjectNamespace<RouteFence>;
  /** Secret the cutover tool presents to the admin endpoint; unset disables the endpoint. */
  ROUTE_ADMIN_TOKEN?: string;
  /** Producer for the revocations queue. */
  REVOCATIONS: Queue;
  /** Secret shared with the consumer and `migrate drain`. */
  REVOCATION_HMAC_KEY: string;
  /** How long a refresh answer is replayed, in seconds ("0" disables coalescing). */
  COALESCE_WINDOW_SECONDS?: string;
  /** The refresh-token coalescer. */
  COALESCER: DurableObjectNamespace<RefreshCoalescer>;
}

// Path prefix of the admin endpoint (never proxied). Not exported: a Worker's main module may export
// handlers and classes only. src/cutover/route.ts spells the same path.
const ADMIN_PREFIX = '/__bluegreen/route/';

const DEFAULT_WINDOW_SECONDS = 30;

function oauthError(status: number, error: string, description: string, retryAfter?: number): Response {
  const headers: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store' };
  if (retryAfter !== undefined) headers['retry-after'] = String(retryAfter);
  return new Response(JSON.stringify({ error, error_description: description }), { status, headers });
}

function success(status: number): boolean {
  return status >= 200 && status < 300;
}

/** Sends one signed revocation; false when the queue refused it. */
async function announce(env: RouterEnv, body: RevocationBody): Promise<boolean> {
  try {
    await env.REVOCATIONS.send(await signRevocation(body, env.REVOCATION_HMAC_KEY), { contentType: 'json' });
    return true;
  } catch (err) {
    console.error(`revocation ${body.id} (${body.kind}) not queued: ${String(err)}`);
    return false;
  }
}

const unrecorded = () => oauthError(503, 'temporarily_unavailable', 'the revocation could not be recorded; retry the request', 1);

/** Reads a form body as text without workerd's "not text" warning for urlencoded bodies. */
async function bodyText(request: Request): Promise<string> {
  return new TextDecoder().decode(await request.arrayBuffer());
}

function forwardHeaders(request: Request): Headers {
  const headers = new Headers(request.headers);
  headers.delete('host');
  headers.delete('content-length');
  return headers;
}

async function revokeToken(request: Request, target: URL, env: RouterEnv): Promise<Response> {
  const text = await bodyText(request);
  const form = new URLSearchParams(text);
  const res = await fetch(target, { method: 'POST', headers: forwardHeaders(request), body: text });
  const signature = tokenSignature(form.get('token') ?? '');
  if (!success(res.status) || !signature) return res;
  const client = clientOf(request.headers.get('authorization'), form);
  const sent = await announce(env, { v: 1, id: crypto.randomUUID(), kind: 'token-revoke', at: new Date().toISOString(), signature, ...(client ? { client } : {}) });
  return sent ? res : unrecorded();
}

async function revokeConsent(request: Request, target: URL, env: RouterEnv): Promise<Response> {
  const res = await fetch(target, { method: 'DELETE', headers: forwardHeaders(request) });
  const subject = target.searchParams.get('subject');
  if (!success(res.status) || !subject) return res;
  const client = target.searchParams.get('client') || undefined;
  const sent = await announce(env, { v: 1, id: crypto.randomUUID(), kind: 'consent-revoke', at: new Date().toISOString(), subject, ...(client ? { client } : {}) });
  return sent ? res : unrecorded();
}

async function tokenGrant(request: Request, target: URL, env: RouterEnv): Promise<Response> {
  const text = await bodyText(request);
  const form = new URLSearchParams(text);
  const token = form.get('refresh_token');
  if (form.get('grant_type') !== 'refresh_token' || !token) {
    return fetch(target, { method: 'POST', headers: forwardHeaders(request), body: text });
  }
  const tokenHash = await sha256Hex(token);
  const windowSeconds = Number(env.COALESCE_WINDOW_SECONDS ?? DEFAULT_WINDOW_SECONDS);
  const stub = env.COALESCER.get(env.COALESCER.idFromName(tokenHash));
  let answer: Exchanged;
  try {
    answer = await stub.exchange({ url: target.toString(), tokenHash, token, headers: Object.fromEntries(forwardHeaders(request)), body: text, windowSeconds: Number.isFinite(windowSeconds) ? windowSeconds : DEFAULT_WINDOW_SECONDS });
  } catch (err) {
    console.error(`refresh grant failed before an answer: ${String(err)}`);
    return oauthError(502, 'temporarily_unavailable', 'the authorization server could not be reached; retry the request', 1);
  }
  const signature = tokenSignature(token);
  if (success(answer.status) && signature) {
    // Every delivered answer announces the rotation under one id per old token, so a retry after a
    // 503 announces it again and replay deduplicates the copies.
    const id = `rot-${(await sha256Hex(signature)).slice(0, 40)}`;
    const client = clientOf(request.headers.get('authorization'), form);
    if (!(await announce(env, { v: 1, id, kind: 'refresh-rotate', at: new Date().toISOString(), signature, ...(client ? { client } : {}) }))) return unrecorded();
  }
  const headers = new Headers(answer.headers);
  headers.set('x-coalesced', answer.source);
  return new Response(answer.body, { status: answer.status, headers });
}

function routeStub(env: RouterEnv): DurableObjectStub<RouteFence> {
  return env.ROUTE.get(env.ROUTE.idFromName(ROUTE_INSTANCE));
}

/** Constant-time token check: both sides are hashed first, so lengths leak nothing either. */
async function authorized(request: Request, env: RouterEnv): Promise<boolean> {
  const presented = request.headers.get('authorization')?.match(/^Bearer\s+(.+)$/i)?.[1] ?? '';
  if (!env.ROUTE_ADMIN_TOKEN || !presented) return false;
  const digest = async (text: string) => crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  const [a, b] = await Promise.all([digest(presented), digest(env.ROUTE_ADMIN_TOKEN)]);
  return crypto.subtle.timingSafeEqual(a, b);
}

const json = (status: number, body: unknown) => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', 'cache-control': 'no-store' } });

function num(body: Record<string, unknown>, key: string): number | undefined {
  return typeof body[key] === 'number' && Number.isFinite(body[key]) ? body[key] : undefined;
}

function str(body: Record<string, unknown>, key: string): string | undefined {
  return typeof body[key] === 'string' && body[key] !== '' ? body[key] : undefined;
}

function httpUrl(text: string | undefined): string | undefined {
  if (!text) return undefined;
  try {
    const u = new URL(text);
    return u.protocol === 'http:' || u.protocol === 'https:' ? text : undefined;
  } catch {
    return undefined;
  }
}

/** The admin endpoint the cutover tool drives the fence through; refusals are 409 with the reason. */
async function admin(request: Request, env: RouterEnv, op: string): Promise<Response> {
  if (request.method !== 'POST') return json(405, { error: 'method_not_allowed', message: 'use POST' });
  if (!(await authorized(request, env))) {
    const message = env.ROUTE_ADMIN_TOKEN ? 'missing or wrong bearer token' : 'the admin endpoint is disabled: ROUTE_ADMIN_TOKEN is not set on the router';
    return json(401, { error: 'unauthorized', message });
  }
  let body: Record<string, unknown> = {};
  const text = await bodyText(request);
  if (text.trim()) {
    try {
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
      body = parsed as Record<string, unknown>;
    } catch {
      return json(400, { error: 'bad_request', message: 'the body must be a JSON object' });
    }
  }
  const stub = routeStub(env);
  const bad = (message: string) => json(400, { error: 'bad_request', message });
  let outcome: Outcome<unknown>;
  switch (op) {
    case 'state':
      return json(200, await stub.state());
    case 'init': {
      const upstream = httpUrl(str(body, 'upstream'));
      if (!upstream) return bad('init needs {"upstream": "<http(s) URL>"}');
      outcome = await stub.init({ upstream });
      break;
    }
    case 'raise': {
      const holdMs = num(body, 'holdMs');
      const drainMs = num(body, 'drainMs');
      if (holdMs === undefined || drainMs === undefined) return bad('raise needs {"holdMs": <ms>, "drainMs": <ms>}');
      outcome = await stub.raise({ holdMs, drainMs });
      break;
    }
    case 'commit': {
      const fenceId = str(body, 'fenceId');
      const upstream = httpUrl(str(body, 'upstream'));
      if (!fenceId || !upstream) return bad('commit needs {"fenceId": "<id from raise>", "upstream": "<http(s) URL>"}');
      outcome = await stub.commit({ fenceId, upstream });
      break;
    }
    case 'lower': {
      const fenceId = str(body, 'fenceId');
      if (!fenceId) return bad('lower needs {"fenceId": "<id from raise>"}');
      outcome = await stub.lower({ fenceId });
      break;
    }
    default:
      return json(404, { error: 'not_found', message: `unknown admin operation ${JSON.stringify(op)}; use init, raise, commit, lower or state` });
  }
  if (outcome.ok) return json(200, outcome.value);
  return json(outcome.code === 'bad-request' ? 400 : 409, { error: outcome.code, message: outcome.message });
}

async function proxy(request: Request, env: RouterEnv, upstream: string): Promise<Response> {
  const url = new URL(request.url);
  const target = new URL(url.pathname + url.search, upstream);
  try {
    switch (classify(request.method, url.pathname)) {
      case 'token-revoke':
        return await revokeToken(request, target, env);
      case 'consent-revoke':
        return await revokeConsent(request, target, env);
      case 'token':
        return await tokenGrant(request, target, env);
      case 'proxy':
        return await fetch(new Request(target, request));
    }
  } catch (err) {
    console.error(`upstream ${target.origin} failed: ${String(err)}`);
    return oauthError(502, 'temporarily_unavailable', 'the authorization server could not be reached; retry the request', 1);
  }
}

/** The router's fetch handler. */
export default {
  async fetch(request, env, ctx): Promise<Response> {
    const { pathname } = new URL(request.url);
    // The whole /__bluegreen namespace belongs to the router: never proxied to the engine.
    if (pathname === '/__bluegreen' || pathname.startsWith('/__bluegreen/')) {
      return pathname.startsWith(ADMIN_PREFIX) ? admin(request, env, pathname.slice(ADMIN_PREFIX.length)) : json(404, { error: 'not_found', message: `the router serves ${ADMIN_PREFIX}<op> only` });
    }
    // One round trip to the route object per request: KV would be cheaper but is eventually
    // consistent, and a stale route sends writes to blue after the flip (docs/DECISIONS.md).
    const route = routeStub(env);
    let grant: Grant;
    try {
      grant = await route.acquire();
    } catch (err) {
      console.error(`route not readable: ${String(err)}`);
      return oauthError(503, 'temporarily_unavailable', 'the route could not be read; retry the request', 1);
    }
    if (!grant.upstream || !grant.lease) return oauthError(503, 'temporarily_unavailable', 'no upstream is configured (seed the route: POST /__bluegreen/route/init)', 5);
    const lease = grant.lease;
    let res: Response;
    try {
      res = await proxy(request, env, grant.upstream);
    } finally {
      // The upstream answered (or failed): the request no longer holds its epoch open.
      ctx.waitUntil(route.release(lease).catch((err: unknown) => console.error(`lease ${lease} not released: ${String(err)}`)));
    }
    const out = new Response(res.body, res);
    out.headers.set('x-route-epoch', String(grant.epoch));
    out.headers.set('x-held-ms', String(grant.heldMs));
    return out;
  },
} satisfies ExportedHandler<RouterEnv>;
