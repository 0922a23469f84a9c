// The edge router Worker: proxies OAuth traffic to the engine named in KV (`upstream`; cutover flips
// it) and, for every access-removing answer, puts a signed revocation message on the queue BEFORE
// answering. If the message cannot be sent the client gets 503 and retries, so a revocation is
// never silently dropped. Refresh grants go through the per-token coalescer (coalescer.ts).

import { signRevocation, type RevocationBody } from './message.ts';
import { RefreshCoalescer, type Exchanged } from './coalescer.ts';
import { classify, clientOf } from './routes.ts';
import { sha256Hex, tokenSignature } from './token.ts';

export { RefreshCoalescer };

/** Bindings of the router (wrangler.router.jsonc). */
export interface RouterEnv {
  /** KV with key `upstream`: the engine's base URL. */
  ROUTES: KVNamespace;
  /** Producer for the revocations queue. */
  REVOCATIONS: Queue;
  /** Secret shared with the consumer and `migrate drain`. */
  REVOCATION_HMAC_KEY: string;
  /** How long a refresh answer is replayed, in seconds ("0" disables coalescing). */
  COALESCE_WINDOW_SECONDS?: string;
  /** The refresh-token coalescer. */
  COALESCER: DurableObjectNamespace<RefreshCoalescer>;
}

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

/** The router's fetch handler. */
export default {
  async fetch(request, env): Promise<Response> {
    const upstream = await env.ROUTES.get('upstream');
    if (!upstream) return oauthError(503, 'temporarily_unavailable', 'no upstream is configured (KV key "upstream")', 5);
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
  },
} satisfies ExportedHandler<RouterEnv>;
