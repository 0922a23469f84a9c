// The stand-in auth service (DESIGN.md): Hydra cannot run here, so the demo and the end-to-end tests
// talk to this small Hydra-shaped HTTP service over the fixture schema. It writes like an engine, with
// v1 or v2 semantics: admin client create and update, client-credentials grants, the
// authorization-code flow (authorize -> login accept -> consent accept -> code exchange, with PKCE and
// OpenID Connect), refresh rotation, revocation, consent revocation and introspection. It says it is
// a stand-in in every response's Server header, and answers /oauth2/auth with the login challenge as
// JSON instead of redirecting to a login UI. Admin paths are served with and without the `/admin`
// prefix (Hydra 1.x served them at the root of its admin port, 2.x under /admin). Tokens look like
// Hydra's, `<prefix>_<nonce>.<signature>`, and the database stores only the signature; seeded rows have
// no raw token, so `st_x.<signature>` is accepted as the raw token of a seeded row. It does not check
// client secrets or expiry. Each committed request that carries an `x-request-id` header is kept in a
// write log (the rows it wrote, and blue's WAL position before its commit), for the demo's checks.

import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { clientOf } from '../../src/queue-consumer/routes.ts';
import type { ReplayProfile } from '../../src/replay/semantics.ts';
import { standinSql, type StandinSql, type WriteOp } from './sql.ts';

export type { WriteOp };

/** The Server header of every response. */
export const STANDIN_SERVER = 'pg-bluegreen-standin (a stand-in, not Ory Hydra)';

/** Where the stand-in says it lives in the request URLs it stores. */
const ISSUER = 'https://auth.example.test';

/** Options of the stand-in. */
export interface StandinOptions {
  /** Database the service runs on. */
  dsn: string;
  /** Schema shape: v1 consent tables or v2 flow table. */
  profile: ReplayProfile;
  /** Pool size (default 8). */
  connections?: number;
  /** Port (default: any free one). */
  port?: number;
}

/** What kind of request wrote a row (the demo counts writes by it). */
export type WriteKind =
  | 'client-created'
  | 'client-updated'
  | 'client-credentials'
  | 'login-requested'
  | 'login-accepted'
  | 'consent-granted'
  | 'code-exchanged'
  | 'refresh-rotated'
  | 'token-revoked'
  | 'consent-revoked';

/** One row a request wrote. */
export interface StandinWrite {
  /** `schema.table`. */
  table: string;
  /** The row's primary key, column -> value as text. */
  key: Record<string, string>;
  /** What happened to it. */
  op: WriteOp;
}

/** A committed request that wrote rows. */
export interface StandinLogEntry {
  /** The request's `x-request-id`. */
  request: string;
  /** What the request was. */
  kind: WriteKind;
  /** pg_current_wal_insert_lsn() just before COMMIT: the commit lies after it. */
  lsn: string;
  /** The rows written, in statement order. */
  writes: StandinWrite[];
}

/** A running stand-in. */
export interface Standin {
  /** Base URL, e.g. http://127.0.0.1:PORT. */
  url: string;
  /** The committed writes of requests carrying `x-request-id: <request>` (every attempt of it). */
  writesOf(request: string): StandinLogEntry[];
  /** Stops the server and closes the pool. */
  stop(): Promise<void>;
}

/** The raw token for a stored signature: what a client of a seeded row would hold. */
export function rawTokenFor(signature: string, prefix = 'st_x'): string {
  return `${prefix}.${signature}`;
}

/** The stored signature of a raw token (`<prefix>_<nonce>.<signature>`), or null. */
export function signatureOf(token: string): string | null {
  const dot = token.lastIndexOf('.');
  return dot > 0 && dot < token.length - 1 ? token.slice(dot + 1) : null;
}

/** The S256 code challenge of a PKCE verifier (RFC 7636). */
export function s256(verifier: string): string {
  return crypto.createHash('sha256').update(verifier).digest('base64url');
}

function newToken(prefix: 'ory_at' | 'ory_rt' | 'ory_ac'): { raw: string; signature: string } {
  const signature = crypto.randomBytes(32).toString('base64url');
  return { raw: `${prefix}_${crypto.randomBytes(24).toString('base64url')}.${signature}`, signature };
}

/** A challenge, verifier or csrf value: 32 hex digits (the columns are varchar(40)). */
const hex = (): string => crypto.randomBytes(16).toString('hex');

function send(res: http.ServerResponse, status: number, body?: unknown): void {
  res.writeHead(status, { server: STANDIN_SERVER, ...(body === undefined ? {} : { 'content-type': 'application/json' }) });
  res.end(body === undefined ? undefined : JSON.stringify(body));
}

async function readBody(req: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** A JSON object body, or null when the body is not one. */
async function readJson(req: http.IncomingMessage): Promise<Record<string, unknown> | null> {
  try {
    const v: unknown = JSON.parse((await readBody(req)) || '{}');
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** An answer, and what the request wrote when it committed. */
interface Outcome {
  status: number;
  body?: unknown;
  writes?: StandinWrite[];
  /** Set once committed: the WAL position read before COMMIT. */
  lsn?: string;
}

const oauthError = (status: number, error: string, description: string): Outcome => ({ status, body: { error, error_description: description } });

/** Runs `fn` in one transaction; an answer of 400 or more rolls back. Returns the WAL position read before COMMIT. */
async function inTx(pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<Outcome>): Promise<Outcome> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    const out = await fn(c);
    if (out.status >= 400) {
      await c.query('ROLLBACK');
      return out;
    }
    const lsn = (await c.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0]!.lsn;
    await c.query('COMMIT');
    return { ...out, lsn };
  } catch (err) {
    await c.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    c.release();
  }
}

/** The write-log rows a statement returned (`tbl`, `key`, `op`). */
function written(rows: readonly { tbl?: string; key?: Record<string, unknown>; op?: WriteOp }[]): StandinWrite[] {
  return rows.filter((r) => r.tbl && r.key && r.op).map((r) => ({ table: r.tbl!, key: Object.fromEntries(Object.entries(r.key!).map(([k, v]) => [k, String(v)])), op: r.op! }));
}

/** A list field of a JSON body: an array of strings without `|` (v1 keeps lists pipe-delimited). */
function listField(body: Record<string, unknown>, name: string): string[] | string {
  const v = body[name] ?? [];
  if (!Array.isArray(v) || !v.every((e) => typeof e === 'string')) return `${name} must be an array of strings`;
  if (v.some((e) => e.includes('|'))) return `${name}: values must not contain '|'`;
  return v as string[];
}

/** The bind parameters of createClient / updateClient from a client body, or the reason it is invalid. */
function clientParams(id: string, body: Record<string, unknown>, secretHash: string | null): unknown[] | string {
  const lists = ['redirect_uris', 'grant_types', 'response_types', 'contacts', 'audience'].map((n) => listField(body, n));
  const bad = lists.find((l): l is string => typeof l === 'string');
  if (bad) return bad;
  const [redirect, grants, responses, contacts, audience] = lists as string[][];
  const text = (n: string, fallback = ''): string => (typeof body[n] === 'string' ? (body[n] as string) : fallback);
  const metadata = body.metadata === undefined ? '{}' : JSON.stringify(body.metadata);
  return [id, text('client_name'), secretHash, redirect, grants, responses, text('scope'), text('owner'), contacts, audience, metadata, text('token_endpoint_auth_method', 'client_secret_basic')];
}

const scopeList = (scope: string | null | undefined): string[] => (scope ?? '').split(' ').filter(Boolean);

/** Starts the stand-in on `opts.dsn`. */
export async function startStandin(opts: StandinOptions): Promise<Standin> {
  const sql: StandinSql = standinSql(opts.profile);
  const pool = new pg.Pool({ connectionString: opts.dsn, max: opts.connections ?? 8 });
  pool.on('error', () => {});

  const log = new Map<string, StandinLogEntry[]>();

  const introspect = async (form: URLSearchParams) => {
    const signature = signatureOf(form.get('token') ?? '');
    if (!signature) return { active: false };
    const a = await pool.query(sql.introspectAccess, [signature]);
    const r = a.rowCount ? a : await pool.query(sql.introspectRefresh, [signature]);
    const row = r.rows[0];
    return row ? { active: true, sub: row.sub, client_id: row.client_id, iat: Number(row.iat), token_use: a.rowCount ? 'access_token' : 'refresh_token' } : { active: false };
  };

  // RFC 7009: revoking an unknown token succeeds too. Hydra revokes the whole grant (request id).
  const revoke = (form: URLSearchParams): Promise<Outcome> =>
    inTx(pool, async (c) => {
      const signature = signatureOf(form.get('token') ?? '');
      const req = signature ? ((await c.query(sql.requestOf, [signature])).rows[0]?.request_id as string | undefined) : undefined;
      if (!req) return { status: 200 };
      const writes = [...written((await c.query(sql.deleteAccessByRequest, [req])).rows), ...written((await c.query(sql.deactivateRefreshByRequest, [req])).rows)];
      return { status: 200, writes };
    });

  // Rotation: the old refresh token is deactivated, the grant's access tokens deleted, new ones issued.
  const refresh = async (form: URLSearchParams): Promise<Outcome> => {
    const old = signatureOf(form.get('refresh_token') ?? '');
    if (!old) return oauthError(400, 'invalid_request', 'refresh_token is missing or malformed');
    const at = newToken('ory_at');
    const rt = newToken('ory_rt');
    return inTx(pool, async (c) => {
      const claimed = await c.query(sql.claimRefresh, [old]);
      const request = claimed.rows[0] as { request_id: string } | undefined;
      if (!request) return oauthError(400, 'invalid_grant', 'the refresh token is inactive, rotated away or unknown');
      const writes = written(claimed.rows);
      writes.push(...written((await c.query(sql.deleteAccessByRequest, [request.request_id])).rows));
      writes.push(...written((await c.query(sql.insertRefresh, [old, rt.signature])).rows));
      writes.push(...written((await c.query(sql.insertAccess, [old, at.signature])).rows));
      return { status: 200, body: { access_token: at.raw, refresh_token: rt.raw, token_type: 'bearer', expires_in: 3600, scope: '' }, writes };
    });
  };

  const clientCredentials = async (req: http.IncomingMessage, form: URLSearchParams): Promise<Outcome> => {
    const client = clientOf(req.headers.authorization ?? null, form);
    if (!client) return oauthError(401, 'invalid_client', 'client authentication is missing');
    const at = newToken('ory_at');
    const scope = scopeList(form.get('scope'));
    const formData = new URLSearchParams({ grant_type: 'client_credentials', scope: scope.join(' ') }).toString();
    const session = JSON.stringify({ id_token: null, extra: {}, client_id: client });
    return inTx(pool, async (c) => {
      const writes = written((await c.query(sql.clientCredentials, [client, at.signature, crypto.randomUUID(), scope, formData, session])).rows);
      if (!writes.length) return oauthError(401, 'invalid_client', `client ${client} is unknown or may not use the client_credentials grant`);
      return { status: 200, body: { access_token: at.raw, token_type: 'bearer', expires_in: 3600, scope: scope.join(' ') }, writes };
    });
  };

  const exchangeCode = async (form: URLSearchParams): Promise<Outcome> => {
    const code = signatureOf(form.get('code') ?? '');
    if (!code) return oauthError(400, 'invalid_request', 'code is missing or malformed');
    const at = newToken('ory_at');
    const rt = newToken('ory_rt');
    return inTx(pool, async (c) => {
      const claimed = await c.query(sql.claimCode, [code]);
      const grant = claimed.rows[0] as { client_id: string; granted_scope: string } | undefined;
      if (!grant) return oauthError(400, 'invalid_grant', 'the authorization code is unknown or was used already');
      const client = form.get('client_id');
      if (client && client !== grant.client_id) return oauthError(400, 'invalid_grant', 'the authorization code was issued to another client');
      const pkce = (await c.query<{ form_data: string }>(sql.pkceOf, [code])).rows[0];
      if (pkce) {
        const challenge = new URLSearchParams(pkce.form_data).get('code_challenge');
        if (s256(form.get('code_verifier') ?? '') !== challenge) return oauthError(400, 'invalid_grant', 'the PKCE code_verifier does not match the code_challenge');
      }
      const scopes = grant.granted_scope.split('|');
      const offline = scopes.includes('offline_access') || scopes.includes('offline');
      const formData = new URLSearchParams({ grant_type: 'authorization_code' }).toString();
      const writes = written(claimed.rows);
      writes.push(...written((await c.query(sql.exchangeCode, [code, at.signature, offline ? rt.signature : null, formData])).rows));
      const idToken = scopes.includes('openid') ? `standin.${Buffer.from(JSON.stringify({ aud: grant.client_id, iat: Math.floor(Date.now() / 1000) })).toString('base64url')}.` : undefined;
      return {
        status: 200,
        body: { access_token: at.raw, ...(offline ? { refresh_token: rt.raw } : {}), ...(idToken ? { id_token: idToken } : {}), token_type: 'bearer', expires_in: 3600, scope: scopes.join(' ') },
        writes,
      };
    });
  };

  const token = async (req: http.IncomingMessage): Promise<Outcome & { kind?: WriteKind }> => {
    const form = new URLSearchParams(await readBody(req));
    switch (form.get('grant_type')) {
      case 'refresh_token':
        return { ...(await refresh(form)), kind: 'refresh-rotated' };
      case 'client_credentials':
        return { ...(await clientCredentials(req, form)), kind: 'client-credentials' };
      case 'authorization_code':
        return { ...(await exchangeCode(form)), kind: 'code-exchanged' };
      default:
        return oauthError(400, 'unsupported_grant_type', 'the stand-in serves refresh_token, client_credentials and authorization_code grants');
    }
  };

  const saveClient = async (req: http.IncomingMessage, id: string | null): Promise<Outcome> => {
    const body = await readJson(req);
    if (!body) return oauthError(400, 'invalid_request', 'the body must be a JSON object');
    const clientId = id ?? (typeof body.client_id === 'string' && body.client_id ? body.client_id : crypto.randomUUID());
    const secret = typeof body.client_secret === 'string' ? body.client_secret : id ? null : crypto.randomBytes(24).toString('base64url');
    // Hydra keeps a hash of the secret; the stand-in keeps a SHA-256 (it never checks secrets).
    const params = clientParams(clientId, body, secret === null ? null : `$sha256$${crypto.createHash('sha256').update(secret).digest('hex')}`);
    if (typeof params === 'string') return oauthError(400, 'invalid_client_metadata', params);
    return inTx(pool, async (c) => {
      let writes: StandinWrite[];
      try {
        writes = written((await c.query(id ? sql.updateClient : sql.createClient, params)).rows);
      } catch (err) {
        if ((err as { code?: string }).code === '23505') return oauthError(409, 'conflict', `client ${clientId} exists already`);
        throw err;
      }
      if (!writes.length) return oauthError(404, 'not_found', `no client ${clientId}`);
      const [, , , redirect_uris, grant_types, response_types, scope, owner, contacts, audience] = params;
      const client = { client_id: clientId, client_name: params[1], redirect_uris, grant_types, response_types, scope, owner, contacts, audience, metadata: body.metadata ?? {}, token_endpoint_auth_method: params[11] };
      return { status: id ? 200 : 201, body: { ...client, ...(secret !== null && !id ? { client_secret: secret } : {}) }, writes };
    });
  };

  // /oauth2/auth: the login request; the answer carries the challenge instead of a redirect to a login UI.
  const authorize = (url: URL): Promise<Outcome> => {
    const client = url.searchParams.get('client_id');
    if (url.searchParams.get('response_type') !== 'code') return Promise.resolve(oauthError(400, 'unsupported_response_type', 'the stand-in serves response_type=code'));
    if (!client) return Promise.resolve(oauthError(400, 'invalid_request', 'client_id is required'));
    const challenge = hex();
    const requestUrl = `${ISSUER}${url.pathname}${url.search}`;
    return inTx(pool, async (c) => {
      const writes = written((await c.query(sql.loginRequest, [challenge, hex(), hex(), client, requestUrl, scopeList(url.searchParams.get('scope')), scopeList(url.searchParams.get('audience'))])).rows);
      if (!writes.length) return oauthError(400, 'invalid_client', `client ${client} is unknown`);
      return { status: 200, body: { login_challenge: challenge, redirect_to: `${ISSUER}/login?login_challenge=${challenge}` }, writes };
    });
  };

  const acceptLogin = async (req: http.IncomingMessage, challenge: string | null): Promise<Outcome> => {
    const body = await readJson(req);
    if (!challenge) return oauthError(400, 'invalid_request', 'login_challenge is required');
    if (!body || typeof body.subject !== 'string' || !body.subject) return oauthError(400, 'invalid_request', 'the body must be a JSON object with a subject');
    const remember = body.remember === true;
    const rememberFor = typeof body.remember_for === 'number' ? body.remember_for : 0;
    const consent = hex();
    const verifier = hex();
    return inTx(pool, async (c) => {
      const params = [challenge, body.subject, remember, rememberFor, typeof body.acr === 'string' ? body.acr : '0', hex(), consent, verifier, hex()];
      const writes = written((await c.query(sql.loginAccept, params)).rows);
      if (!writes.length) return oauthError(404, 'not_found', `no pending login request ${challenge}`);
      return { status: 200, body: { consent_challenge: consent, redirect_to: `${ISSUER}/oauth2/auth?login_verifier=${verifier}` }, writes };
    });
  };

  const acceptConsent = async (req: http.IncomingMessage, challenge: string | null): Promise<Outcome> => {
    const body = await readJson(req);
    if (!challenge) return oauthError(400, 'invalid_request', 'consent_challenge is required');
    if (!body) return oauthError(400, 'invalid_request', 'the body must be a JSON object');
    const code = newToken('ory_ac');
    return inTx(pool, async (c) => {
      const pending = (await c.query<{ request_url: string; client_id: string; subject: string; requested_scope: string }>(sql.consentRequest, [challenge])).rows[0];
      if (!pending) return oauthError(404, 'not_found', `no pending consent request ${challenge}`);
      const auth = new URL(pending.request_url).searchParams;
      const granted = listField(body, 'grant_scope');
      const audience = listField(body, 'grant_access_token_audience');
      if (typeof granted === 'string' || typeof audience === 'string') return oauthError(400, 'invalid_request', String(typeof granted === 'string' ? granted : audience));
      const scopes = granted.length ? granted : pending.requested_scope.split('|').filter(Boolean);
      const session = (body.session ?? {}) as { access_token?: unknown; id_token?: unknown };
      const formData = new URLSearchParams([...auth].filter(([k]) => ['client_id', 'redirect_uri', 'response_type', 'scope', 'state', 'nonce', 'code_challenge', 'code_challenge_method'].includes(k))).toString();
      const sessionData = JSON.stringify({ id_token: { subject: pending.subject, nonce: auth.get('nonce') ?? '' }, extra: session.access_token ?? {} });
      const params = [
        challenge, scopes, audience, body.remember === true, typeof body.remember_for === 'number' ? body.remember_for : 0,
        JSON.stringify(session.access_token ?? {}), JSON.stringify(session.id_token ?? {}), code.signature, crypto.randomUUID(), formData, sessionData,
        auth.has('code_challenge'), scopes.includes('openid'),
      ];
      const writes = written((await c.query(sql.consentAccept, params)).rows);
      const redirect = new URL(auth.get('redirect_uri') ?? `${ISSUER}/callback`);
      redirect.searchParams.set('code', code.raw);
      redirect.searchParams.set('scope', scopes.join(' '));
      if (auth.get('state')) redirect.searchParams.set('state', auth.get('state')!);
      return { status: 200, body: { redirect_to: redirect.toString(), code: code.raw }, writes };
    });
  };

  const revokeConsent = (url: URL): Promise<Outcome> | Outcome => {
    const subject = url.searchParams.get('subject');
    if (!subject) return oauthError(400, 'invalid_request', 'subject is required');
    return inTx(pool, async (c) => ({ status: 204, writes: written((await c.query(sql.deleteConsent, [subject, url.searchParams.get('client')])).rows) }));
  };

  /** The answer to one request, and the kind of write it is. */
  const route = async (req: http.IncomingMessage, url: URL): Promise<Outcome & { kind?: WriteKind }> => {
    const path = url.pathname.replace(/\/+$/, '');
    const admin = path.replace(/^\/admin(?=\/)/, '');
    const method = req.method ?? 'GET';
    if (method === 'POST' && (path === '/oauth2/introspect' || path === '/admin/oauth2/introspect')) return { status: 200, body: await introspect(new URLSearchParams(await readBody(req))) };
    if (method === 'POST' && path === '/oauth2/revoke') return { ...(await revoke(new URLSearchParams(await readBody(req)))), kind: 'token-revoked' };
    if (method === 'POST' && path === '/oauth2/token') return token(req);
    if (method === 'DELETE' && admin === '/oauth2/auth/sessions/consent') return { ...(await revokeConsent(url)), kind: 'consent-revoked' };
    if (method === 'GET' && path === '/oauth2/auth') return { ...(await authorize(url)), kind: 'login-requested' };
    if (method === 'PUT' && admin === '/oauth2/auth/requests/login/accept') return { ...(await acceptLogin(req, url.searchParams.get('login_challenge'))), kind: 'login-accepted' };
    if (method === 'PUT' && admin === '/oauth2/auth/requests/consent/accept') return { ...(await acceptConsent(req, url.searchParams.get('consent_challenge'))), kind: 'consent-granted' };
    if (method === 'POST' && admin === '/clients') return { ...(await saveClient(req, null)), kind: 'client-created' };
    const clientPath = /^\/clients\/([^/]+)$/.exec(admin);
    if (method === 'PUT' && clientPath) return { ...(await saveClient(req, decodeURIComponent(clientPath[1]!))), kind: 'client-updated' };
    if (method === 'GET' && path === '/health/ready') return { status: 200, body: { status: 'ok', standin: true, profile: opts.profile } };
    return oauthError(404, 'not_found', `the stand-in does not serve ${method} ${path}`);
  };

  const server = http.createServer((req, res) => {
    void (async () => {
      try {
        const out = await route(req, new URL(req.url ?? '/', 'http://standin'));
        const request = req.headers['x-request-id'];
        if (typeof request === 'string' && out.kind && out.writes?.length && out.lsn) {
          log.set(request, [...(log.get(request) ?? []), { request, kind: out.kind, lsn: out.lsn, writes: out.writes }]);
        }
        return send(res, out.status, out.body);
      } catch (err) {
        return send(res, 500, { error: 'server_error', error_description: (err as Error).message.slice(0, 200) });
      }
    })();
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    writesOf: (request) => log.get(request) ?? [],
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await pool.end();
    },
  };
}
