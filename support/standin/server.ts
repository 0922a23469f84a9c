// The stand-in auth service (DESIGN.md): Hydra cannot run here, so the demo and the end-to-end tests
// talk to this small Hydra-shaped HTTP service over the fixture schema. It introspects, revokes,
// rotates refresh tokens and revokes consent with v1 or v2 semantics, and says it is a stand-in in
// every response's Server header. Tokens look like Hydra's, `<prefix>_<nonce>.<signature>`, and the
// database stores only the signature; seeded rows have no raw token, so `st_x.<signature>` is
// accepted as the raw token of a seeded row. It does not check client credentials or expiry.

import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import type { ReplayProfile } from '../../src/replay/semantics.ts';
import { standinSql } from './sql.ts';

/** The Server header of every response. */
export const STANDIN_SERVER = 'pg-bluegreen-standin (a stand-in, not Ory Hydra)';

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

/** A running stand-in. */
export interface Standin {
  /** Base URL, e.g. http://127.0.0.1:PORT. */
  url: string;
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

function newToken(prefix: 'ory_at' | 'ory_rt'): { raw: string; signature: string } {
  const signature = crypto.randomBytes(32).toString('base64url');
  return { raw: `${prefix}_${crypto.randomBytes(24).toString('base64url')}.${signature}`, signature };
}

function send(res: http.ServerResponse, status: number, body?: unknown): void {
  res.writeHead(status, { server: STANDIN_SERVER, ...(body === undefined ? {} : { 'content-type': 'application/json' }) });
  res.end(body === undefined ? undefined : JSON.stringify(body));
}

async function readForm(req: http.IncomingMessage): Promise<URLSearchParams> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function inTx<T>(pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    const out = await fn(c);
    await c.query('COMMIT');
    return out;
  } catch (err) {
    await c.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    c.release();
  }
}

/** Starts the stand-in on `opts.dsn`. */
export async function startStandin(opts: StandinOptions): Promise<Standin> {
  const sql = standinSql(opts.profile);
  const pool = new pg.Pool({ connectionString: opts.dsn, max: opts.connections ?? 8 });
  pool.on('error', () => {});
  const consentPath = opts.profile === 'hydra-v1' ? '/oauth2/auth/sessions/consent' : '/admin/oauth2/auth/sessions/consent';

  const introspect = async (form: URLSearchParams) => {
    const signature = signatureOf(form.get('token') ?? '');
    if (!signature) return { active: false };
    const a = await pool.query(sql.introspectAccess, [signature]);
    const r = a.rowCount ? a : await pool.query(sql.introspectRefresh, [signature]);
    const row = r.rows[0];
    return row ? { active: true, sub: row.sub, client_id: row.client_id, iat: Number(row.iat), token_use: a.rowCount ? 'access_token' : 'refresh_token' } : { active: false };
  };

  // RFC 7009: revoking an unknown token succeeds too. Hydra revokes the whole grant (request id).
  const revoke = async (form: URLSearchParams): Promise<void> => {
    const signature = signatureOf(form.get('token') ?? '');
    if (!signature) return;
    await inTx(pool, async (c) => {
      const req = (await c.query(sql.requestOf, [signature])).rows[0]?.request_id as string | undefined;
      if (!req) return;
      await c.query(sql.deleteAccessByRequest, [req]);
      await c.query(sql.deactivateRefreshByRequest, [req]);
    });
  };

  // Rotation: the old refresh token is deactivated, the grant's access tokens deleted, new ones issued.
  const refresh = async (form: URLSearchParams): Promise<{ status: number; body: unknown }> => {
    if (form.get('grant_type') !== 'refresh_token') return { status: 400, body: { error: 'unsupported_grant_type', error_description: 'the stand-in only serves refresh_token grants' } };
    const old = signatureOf(form.get('refresh_token') ?? '');
    if (!old) return { status: 400, body: { error: 'invalid_request', error_description: 'refresh_token is missing or malformed' } };
    const at = newToken('ory_at');
    const rt = newToken('ory_rt');
    const ok = await inTx(pool, async (c) => {
      const claimed = (await c.query(sql.claimRefresh, [old])).rows[0] as { request_id: string } | undefined;
      if (!claimed) return false;
      await c.query(sql.deleteAccessByRequest, [claimed.request_id]);
      await c.query(sql.insertRefresh, [old, rt.signature]);
      await c.query(sql.insertAccess, [old, at.signature]);
      return true;
    });
    if (!ok) return { status: 400, body: { error: 'invalid_grant', error_description: 'the refresh token is inactive, rotated away or unknown' } };
    return { status: 200, body: { access_token: at.raw, refresh_token: rt.raw, token_type: 'bearer', expires_in: 3600, scope: '' } };
  };

  const server = http.createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://standin');
      const path = url.pathname.replace(/\/+$/, '');
      try {
        if (req.method === 'POST' && (path === '/oauth2/introspect' || path === '/admin/oauth2/introspect')) return send(res, 200, await introspect(await readForm(req)));
        if (req.method === 'POST' && path === '/oauth2/revoke') {
          await revoke(await readForm(req));
          return send(res, 200);
        }
        if (req.method === 'POST' && path === '/oauth2/token') {
          const out = await refresh(await readForm(req));
          return send(res, out.status, out.body);
        }
        if (req.method === 'DELETE' && path === consentPath) {
          const subject = url.searchParams.get('subject');
          if (!subject) return send(res, 400, { error: 'invalid_request', error_description: 'subject is required' });
          await pool.query(sql.deleteConsent, [subject, url.searchParams.get('client')]);
          return send(res, 204);
        }
        if (req.method === 'GET' && path === '/health/ready') return send(res, 200, { status: 'ok', standin: true, profile: opts.profile });
        return send(res, 404, { error: 'not_found', error_description: `the stand-in does not serve ${req.method} ${path}` });
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
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await pool.end();
    },
  };
}
