// The demo's window traffic: real OAuth requests sent through the edge router to the engine on blue
// while `apply` runs, written like an engine's day: token revokes, refresh rotations and consent
// revokes of seeded grants, admin client creates and updates, client-credentials grants, and full
// authorization-code flows (login, consent, code exchange; with and without PKCE and OpenID Connect),
// some followed by a rotation, a token revoke or a consent revoke. Every request carries an
// `x-request-id`; the rows each successful one wrote are taken from the engine's write log, so the
// demo can check every one of them on green after cutover (writes.ts) and count what was captured,
// replayed, lost and resurrected.

import { createHash } from 'node:crypto';
import type pg from 'pg';
import { rawTokenFor, s256, signatureOf, type StandinLogEntry } from '../standin/server.ts';

/** What a code flow does after the code exchange. */
export type FlowFollowUp = 'none' | 'rotate' | 'revoke-token' | 'revoke-consent';

/** One planned operation: one request, or a short script of requests (a flow, a client's life). */
export type TrafficOp =
  | { kind: 'revoke'; token: string; signature: string }
  | { kind: 'rotate'; token: string; signature: string }
  | { kind: 'consent'; subject: string; client: string }
  | { kind: 'client'; client: string; update: boolean; grant: boolean; flow: boolean }
  | { kind: 'client-credentials'; client: string }
  | { kind: 'code-flow'; client: string; subject: string; pkce: boolean; openid: boolean; then: FlowFollowUp };

/** The planned requests and what each one must leave inactive. */
export interface TrafficPlan {
  /** Operations in send order. */
  ops: TrafficOp[];
  /** Signatures that must be inactive (or gone) on the live side afterwards (tokens issued in the window are added as they are revoked). */
  mustBeInactive: string[];
}

/** Clean grants only: dirty rows (subjects `user-dirty-*`, clients of owner `owner-dirty`) are quarantined by cleanup and never reach green. */
const CLEAN_GRANT = `a.subject NOT LIKE 'user-dirty-%' AND EXISTS (SELECT 1 FROM hydra_client c WHERE c.id = a.client_id AND c.owner <> 'owner-dirty')`;

/**
 * Plans `count` access-removing requests on distinct clean grants of blue (half revokes, a third
 * rotations, the rest consent revokes), plus the engine's other writes in proportion: count/40
 * clients created (half updated, a third granted client credentials, a third running a code flow),
 * count/12 client-credentials grants and count/8 authorization-code flows on seeded clients.
 */
export async function planTraffic(blue: pg.Client, count: number): Promise<TrafficPlan> {
  const { rows } = await blue.query<{ access: string; refresh: string; subject: string; client_id: string }>(
    `SELECT a.signature AS access, r.signature AS refresh, a.subject, a.client_id
       FROM hydra_oauth2_access a JOIN hydra_oauth2_refresh r USING (request_id)
      WHERE a.active AND r.active AND a.challenge_id IS NOT NULL AND ${CLEAN_GRANT} ORDER BY md5(a.signature) LIMIT $1`,
    [count * 3],
  );
  const consentCount = Math.floor(count / 6);
  const bySubjectClient = new Map<string, typeof rows>();
  for (const g of rows) bySubjectClient.set(`${g.subject}\u0000${g.client_id}`, [...(bySubjectClient.get(`${g.subject}\u0000${g.client_id}`) ?? []), g]);
  const consentKeys = [...bySubjectClient.keys()].slice(0, consentCount);
  const taken = new Set(consentKeys);
  const free = rows.filter((g) => !taken.has(`${g.subject}\u0000${g.client_id}`));
  const revokes = free.slice(0, Math.floor(count / 2));
  const rotations = free.slice(revokes.length, revokes.length + (count - revokes.length - consentKeys.length));
  const ops: TrafficOp[] = [];
  const mustBeInactive: string[] = [];
  for (const g of revokes) {
    ops.push({ kind: 'revoke', token: rawTokenFor(g.refresh), signature: g.refresh });
    mustBeInactive.push(g.access, g.refresh);
  }
  for (const g of rotations) {
    ops.push({ kind: 'rotate', token: rawTokenFor(g.refresh), signature: g.refresh });
    mustBeInactive.push(g.refresh);
  }
  for (const key of consentKeys) {
    const [subject, client] = key.split('\u0000') as [string, string];
    ops.push({ kind: 'consent', subject, client });
    for (const g of bySubjectClient.get(key) ?? []) mustBeInactive.push(g.access, g.refresh);
  }
  ops.push(...(await engineOps(blue, count)));
  return { ops: interleave(ops), mustBeInactive };
}

/** The engine's other writes: clients, client-credentials grants and code flows, sized by `count`. */
async function engineOps(blue: pg.Client, count: number): Promise<TrafficOp[]> {
  const clients = await blue.query<{ id: string; cc: boolean }>(
    `SELECT id, 'client_credentials' = ANY (string_to_array(grant_types, '|')) AS cc FROM hydra_client WHERE owner <> 'owner-dirty' ORDER BY pk`,
  );
  const cc = clients.rows.filter((c) => c.cc).map((c) => c.id);
  const code = clients.rows.filter((c) => !c.cc).map((c) => c.id);
  const ops: TrafficOp[] = [];
  for (let i = 0; i < Math.max(4, Math.floor(count / 40)); i++) ops.push({ kind: 'client', client: `window-client-${i}`, update: i % 2 === 0, grant: i % 3 === 0, flow: i % 3 === 1 });
  if (cc.length) for (let i = 0; i < Math.floor(count / 12); i++) ops.push({ kind: 'client-credentials', client: cc[i % cc.length]! });
  const followUps: FlowFollowUp[] = ['rotate', 'revoke-consent', 'revoke-token', 'none', 'none'];
  if (code.length) {
    for (let i = 0; i < Math.floor(count / 8); i++) {
      ops.push({ kind: 'code-flow', client: code[i % code.length]!, subject: `window-user-${i}`, pkce: i % 2 === 0, openid: (i >> 1) % 2 === 0, then: followUps[i % followUps.length]! });
    }
  }
  return ops;
}

/** Shuffles ops deterministically (by a hash of each op), so the kinds mix as real traffic does. */
export function interleave<T extends TrafficOp>(ops: readonly T[]): T[] {
  const key = (op: T): string => createHash('sha256').update(JSON.stringify(op)).digest('hex');
  return ops.map((op) => ({ op, k: key(op) })).sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0)).map((x) => x.op);
}

/** Kinds of operation that remove access (the revocations the demo follows through replay and stream). */
export const REVOCATION_KINDS: ReadonlySet<StandinLogEntry['kind']> = new Set(['token-revoked', 'refresh-rotated', 'consent-revoked']);

/** Cursor over a plan, shared by the phases of a window. */
export interface TrafficCursor {
  /** Next op to send. */
  next: number;
  /** Ops that succeeded. */
  ok: number;
}

/** What the traffic of a window did, for the demo's checks (shared by its phases like the cursor). */
export interface TrafficRecord {
  /** The engine's write log of a request id. */
  writesOf: (request: string) => StandinLogEntry[];
  /** Access-removing requests sent, and how many succeeded. */
  revocations: { sent: number; ok: number };
  /** The write log of every request that succeeded. */
  requests: StandinLogEntry[];
  /** Tokens issued in the window and revoked or rotated away by it (the plan's list holds the seeded ones). */
  mustBeInactive: string[];
  /** Every HTTP attempt as the client saw it (issue H: blackout, failures and latency around the flip). */
  timings: RequestTiming[];
}

/** One HTTP attempt, seen from the client. */
export interface RequestTiming {
  /** When it was sent (ms since the epoch). */
  at: number;
  /** Until the answer (or the failure), in ms. */
  ms: number;
  /** How long the router held it behind a fence (its x-held-ms header; 0 when absent). */
  heldMs: number;
  /** HTTP status, 0 when the connection failed. */
  status: number;
  /** The route epoch that answered (x-route-epoch), null when absent. */
  epoch: number | null;
}

/** An empty record reading the engine's write log through `writesOf`. */
export function newRecord(writesOf: TrafficRecord['writesOf']): TrafficRecord {
  return { writesOf, revocations: { sent: 0, ok: 0 }, requests: [], mustBeInactive: [], timings: [] };
}

/** How {@link driveTraffic} paces a phase of traffic. */
export interface DriveOptions {
  /** Ends the phase early when it returns true (checked before each op). */
  stop?: () => boolean;
  /** Clients sending at once (default 8). */
  concurrency?: number;
  /** Send ops only up to this index (default: every op). */
  limit?: number;
  /** Where to record what the requests did (default: nothing is recorded). */
  record?: TrafficRecord;
  /** Starts at most this many ops per second (default: as fast as the clients go). */
  opsPerSecond?: number;
}

/** One HTTP request of an op. */
interface Call {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  form?: Record<string, string>;
  json?: unknown;
}

const CLIENT_BODY = {
  redirect_uris: ['https://window.example.test/cb'],
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  response_types: ['code', 'id_token'],
  scope: 'openid offline_access profile email',
  audience: ['https://api.example.test'],
  token_endpoint_auth_method: 'client_secret_basic',
};

/** Sends ops through the router until `limit` ops were sent or `stop()` says so; a 503 (message not recorded) or a dropped connection is retried, as a client would. */
export async function driveTraffic(base: string, plan: Pick<TrafficPlan, 'ops'>, cursor: TrafficCursor, opts: DriveOptions = {}): Promise<void> {
  const stop = opts.stop ?? (() => false);
  const end = Math.min(opts.limit ?? plan.ops.length, plan.ops.length);
  const record = opts.record;

  /** Sends one request (retried on 503 and lost connections); its JSON answer when it succeeded, else null. */
  const send = async (id: string, call: Call, revocation = false): Promise<Record<string, unknown> | null> => {
    if (revocation && record) record.revocations.sent++;
    const headers: Record<string, string> = { 'x-request-id': id };
    let body: string | undefined;
    if (call.form) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      body = new URLSearchParams(call.form).toString();
    } else if (call.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(call.json);
    }
    for (let attempt = 0; attempt < 5; attempt++) {
      const at = Date.now();
      const sent = performance.now();
      const res = await fetch(`${base}${call.path}`, { method: call.method, headers, ...(body === undefined ? {} : { body }) }).catch(() => null);
      const text = res ? await res.text().catch(() => null) : null;
      const epoch = res?.headers.get('x-route-epoch');
      record?.timings.push({ at, ms: performance.now() - sent, heldMs: Number(res?.headers.get('x-held-ms') ?? 0), status: text === null ? 0 : res!.status, epoch: epoch ? Number(epoch) : null });
      if (!res || text === null) continue;
      if (res.status === 503) continue;
      if (!res.ok) return null;
      if (revocation && record) record.revocations.ok++;
      record?.requests.push(...record.writesOf(id));
      return text ? (JSON.parse(text) as Record<string, unknown>) : {};
    }
    return null;
  };

  const consentRevoke = (subject: string, client: string): Call => ({ method: 'DELETE', path: `/oauth2/auth/sessions/consent?subject=${encodeURIComponent(subject)}&client=${encodeURIComponent(client)}` });

  /** The authorization-code flow through the router, then its follow-up; true when every request succeeded. */
  const codeFlow = async (id: string, op: Extract<TrafficOp, { kind: 'code-flow' }>): Promise<boolean> => {
    const verifier = createHash('sha256').update(`verifier:${op.subject}`).digest('base64url');
    const scope = `${op.openid ? 'openid ' : ''}offline_access profile`;
    const query = new URLSearchParams({ client_id: op.client, response_type: 'code', redirect_uri: 'https://window.example.test/cb', scope, state: id, ...(op.openid ? { nonce: id } : {}), ...(op.pkce ? { code_challenge: s256(verifier), code_challenge_method: 'S256' } : {}) });
    const auth = await send(`${id}:auth`, { method: 'GET', path: `/oauth2/auth?${query}` });
    if (!auth) return false;
    const login = await send(`${id}:login`, { method: 'PUT', path: `/admin/oauth2/auth/requests/login/accept?login_challenge=${auth.login_challenge}`, json: { subject: op.subject, remember: true, remember_for: 3600 } });
    if (!login) return false;
    const consent = await send(`${id}:consent`, { method: 'PUT', path: `/admin/oauth2/auth/requests/consent/accept?consent_challenge=${login.consent_challenge}`, json: { grant_scope: scope.split(' '), remember: true, remember_for: 3600, session: { id_token: { email: `${op.subject}@example.test` } } } });
    if (!consent) return false;
    const tokens = await send(`${id}:token`, { method: 'POST', path: '/oauth2/token', form: { grant_type: 'authorization_code', code: String(consent.code), client_id: op.client, redirect_uri: 'https://window.example.test/cb', ...(op.pkce ? { code_verifier: verifier } : {}) } });
    if (!tokens) return false;
    const [access, refresh] = [signatureOf(String(tokens.access_token)), signatureOf(String(tokens.refresh_token))];
    switch (op.then) {
      case 'none':
        return true;
      case 'rotate':
        if (!(await send(`${id}:rotate`, { method: 'POST', path: '/oauth2/token', form: { grant_type: 'refresh_token', refresh_token: String(tokens.refresh_token) } }, true))) return false;
        break;
      case 'revoke-token':
        if (!(await send(`${id}:revoke`, { method: 'POST', path: '/oauth2/revoke', form: { token: String(tokens.refresh_token) } }, true))) return false;
        break;
      case 'revoke-consent':
        if (!(await send(`${id}:revoke-consent`, consentRevoke(op.subject, op.client), true))) return false;
        break;
    }
    record?.mustBeInactive.push(...[access, refresh].filter((s): s is string => s !== null));
    return true;
  };

  const sendOne = async (index: number, op: TrafficOp): Promise<boolean> => {
    const id = `demo-${index}`;
    switch (op.kind) {
      case 'revoke':
        return (await send(id, { method: 'POST', path: '/oauth2/revoke', form: { token: op.token } }, true)) !== null;
      case 'rotate':
        return (await send(id, { method: 'POST', path: '/oauth2/token', form: { grant_type: 'refresh_token', refresh_token: op.token } }, true)) !== null;
      case 'consent':
        return (await send(id, consentRevoke(op.subject, op.client), true)) !== null;
      case 'client-credentials':
        return (await send(id, { method: 'POST', path: '/oauth2/token', form: { grant_type: 'client_credentials', client_id: op.client, scope: 'profile' } })) !== null;
      case 'code-flow':
        return codeFlow(id, op);
      case 'client': {
        const body = { ...CLIENT_BODY, client_id: op.client, client_name: `Window client ${index}`, owner: 'window', contacts: [`ops-${index}@example.test`], metadata: { window: index } };
        if (!(await send(`${id}:create`, { method: 'POST', path: '/admin/clients', json: body }))) return false;
        const updated = { ...body, client_name: `Window client ${index} (renamed)`, redirect_uris: [...body.redirect_uris, 'https://window.example.test/silent'], contacts: [...body.contacts, `oncall-${index}@example.test`], metadata: { window: index, updated: true } };
        if (op.update && !(await send(`${id}:update`, { method: 'PUT', path: `/admin/clients/${encodeURIComponent(op.client)}`, json: updated }))) return false;
        if (op.grant && !(await send(`${id}:grant`, { method: 'POST', path: '/oauth2/token', form: { grant_type: 'client_credentials', client_id: op.client, scope: 'profile' } }))) return false;
        return !op.flow || codeFlow(`${id}:flow`, { kind: 'code-flow', client: op.client, subject: `window-owner-${index}`, pkce: true, openid: true, then: 'none' });
      }
    }
  };

  // Pacing: op n of this phase starts no earlier than n / opsPerSecond after the phase began.
  const began = performance.now();
  let started = 0;
  const pace = async (): Promise<void> => {
    if (!opts.opsPerSecond) return;
    const due = began + (started++ * 1000) / opts.opsPerSecond;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  };
  await Promise.all(
    Array.from({ length: opts.concurrency ?? 8 }, async () => {
      while (cursor.next < end && !stop()) {
        await pace();
        if (cursor.next >= end || stop()) break;
        const index = cursor.next++;
        if (await sendOne(index, plan.ops[index]!)) cursor.ok++;
      }
    }),
  );
}
