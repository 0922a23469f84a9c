// The stand-in auth service over the fixture schema, v1 (consent tables) and v2 (flow table):
// introspect, revoke, refresh rotation and consent revocation, admin clients, client credentials and
// the authorization-code flow (login, consent, code exchange, PKCE, OIDC), through real HTTP and
// Postgres, with the write log each request leaves.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadHydraV1Schema, seedHydraV1 } from '../support/fixture/seed.ts';
import { popSource } from '../src/sources/pop.ts';
import { connect } from '../src/db/connect.ts';
import { rawTokenFor, s256, signatureOf, startStandin, STANDIN_SERVER, type Standin } from '../support/standin/server.ts';
import { checkWrites, type RecordedWrite } from '../support/demo/writes.ts';
import { createDbPair, seedBlue, V2_MIGRATIONS, withClient, type DbPair } from './harness.ts';

let pair: DbPair;
const services: Partial<Record<'hydra-v1' | 'hydra-v2', Standin>> = {};

beforeAll(async () => {
  pair = await createDbPair('standin');
  await seedBlue(pair, { rows: 300, seed: 5, dirty: [] });
  const green = await connect('green', pair.greenDsn);
  try {
    await loadHydraV1Schema(green);
    await seedHydraV1(green, { rows: 300, seed: 5, dirty: [] });
    const source = popSource(V2_MIGRATIONS);
    for (const m of await source.pending(green)) await source.apply(green, m);
  } finally {
    await green.end();
  }
  services['hydra-v1'] = await startStandin({ dsn: pair.blueDsn, profile: 'hydra-v1', connections: 2 });
  services['hydra-v2'] = await startStandin({ dsn: pair.greenDsn, profile: 'hydra-v2', connections: 2 });
}, 60_000);

afterAll(async () => {
  await Promise.all(Object.values(services).map((s) => s?.stop()));
  await pair?.drop();
});

async function post(base: string, path: string, form: Record<string, string>): Promise<Response> {
  return fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(form) });
}

async function send(base: string, method: string, path: string, body: unknown, request?: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${base}${path}`, { method, headers: { 'content-type': 'application/json', ...(request ? { 'x-request-id': request } : {}) }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await res.text();
  return { status: res.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

async function active(base: string, token: string): Promise<boolean> {
  return ((await (await post(base, '/oauth2/introspect', { token })).json()) as { active: boolean }).active;
}

for (const profile of ['hydra-v1', 'hydra-v2'] as const) {
  describe(`stand-in (${profile})`, () => {
    const dsn = (): string => (profile === 'hydra-v1' ? pair.blueDsn : pair.greenDsn);
    const base = (): string => services[profile]!.url;
    const grant = (offset: number) =>
      withClient(dsn(), async (c) => (await c.query(`SELECT a.signature AS access, r.signature AS refresh, a.subject, a.client_id, a.challenge_id FROM hydra_oauth2_access a
        JOIN hydra_oauth2_refresh r USING (request_id) WHERE a.active AND r.active AND a.challenge_id IS NOT NULL ORDER BY a.signature OFFSET $1 LIMIT 1`, [offset])).rows[0] as { access: string; refresh: string; subject: string; client_id: string });

    it('introspects a seeded token given as st_x.<signature> and says it is a stand-in', async () => {
      const g = await grant(0);
      const res = await post(base(), '/oauth2/introspect', { token: rawTokenFor(g.access) });
      expect(res.headers.get('server')).toBe(STANDIN_SERVER);
      expect(await res.json()).toMatchObject({ active: true, sub: g.subject, client_id: g.client_id, token_use: 'access_token' });
      expect(await active(base(), 'st_x.no-such-signature')).toBe(false);
    });

    it('revokes the whole grant: the access and the refresh token both become inactive', async () => {
      const g = await grant(1);
      expect((await post(base(), '/oauth2/revoke', { token: rawTokenFor(g.refresh) })).status).toBe(200);
      expect(await active(base(), rawTokenFor(g.access))).toBe(false);
      expect(await active(base(), rawTokenFor(g.refresh))).toBe(false);
      expect((await post(base(), '/oauth2/revoke', { token: 'st_x.unknown' })).status).toBe(200);
    });

    it('rotates a refresh token: new tokens work, the old refresh and access tokens do not, reuse is refused', async () => {
      const g = await grant(2);
      const res = await post(base(), '/oauth2/token', { grant_type: 'refresh_token', refresh_token: rawTokenFor(g.refresh) });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { access_token: string; refresh_token: string };
      expect(body.access_token).toMatch(/^ory_at_[\w-]+\.[\w-]+$/);
      expect(await active(base(), body.access_token)).toBe(true);
      expect(await active(base(), body.refresh_token)).toBe(true);
      expect(await active(base(), rawTokenFor(g.refresh))).toBe(false);
      expect(await active(base(), rawTokenFor(g.access))).toBe(false);
      const reuse = await post(base(), '/oauth2/token', { grant_type: 'refresh_token', refresh_token: rawTokenFor(g.refresh) });
      expect(reuse.status).toBe(400);
      expect(await reuse.json()).toMatchObject({ error: 'invalid_grant' });
    });

    it("revokes a subject's consent for a client on the profile's admin path, and its tokens with it", async () => {
      const g = await grant(3);
      const path = profile === 'hydra-v1' ? '/oauth2/auth/sessions/consent' : '/admin/oauth2/auth/sessions/consent';
      const res = await fetch(`${base()}${path}?subject=${encodeURIComponent(g.subject)}&client=${encodeURIComponent(g.client_id)}`, { method: 'DELETE' });
      expect(res.status).toBe(204);
      expect(await active(base(), rawTokenFor(g.access))).toBe(false);
      expect(await active(base(), rawTokenFor(g.refresh))).toBe(false);
    });

    const clientBody = { client_name: 'Window app', redirect_uris: ['https://w.example.test/cb', 'https://w.example.test/silent'], grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'], scope: 'openid offline_access profile', contacts: ['ops@w.example.test'], audience: [], metadata: { team: 'w' } };

    it('creates and updates a client on the admin API (lists in the profile\'s form), logging the rows it wrote', async () => {
      const id = `client-${profile}`;
      const created = await send(base(), 'POST', '/admin/clients', { ...clientBody, client_id: id }, `create-${profile}`);
      expect(created.status).toBe(201);
      expect(created.json).toMatchObject({ client_id: id, grant_types: clientBody.grant_types });
      expect(typeof created.json.client_secret).toBe('string');
      expect((await send(base(), 'POST', '/admin/clients', { ...clientBody, client_id: id })).status).toBe(409);
      const updated = await send(base(), 'PUT', `/admin/clients/${id}`, { ...clientBody, client_name: 'Window app 2', contacts: ['a@w.example.test', 'b@w.example.test'], metadata: { team: 'w2' } }, `update-${profile}`);
      expect(updated.status).toBe(200);
      expect((await send(base(), 'PUT', '/admin/clients/no-such-client', clientBody)).status).toBe(404);
      const row = await withClient(dsn(), async (c) => (await c.query(`SELECT * FROM hydra_client WHERE id = $1`, [id])).rows[0] as Record<string, unknown>);
      expect(row.client_name).toBe('Window app 2');
      if (profile === 'hydra-v1') {
        expect(row).toMatchObject({ redirect_uris: 'https://w.example.test/cb|https://w.example.test/silent', contacts: 'a@w.example.test|b@w.example.test', metadata: '{"team":"w2"}' });
      } else {
        expect(row).toMatchObject({ redirect_uris: clientBody.redirect_uris, contacts_json: ['a@w.example.test', 'b@w.example.test'], audience: [] });
        const settings = await withClient(dsn(), async (c) => (await c.query('SELECT settings FROM hydra_client_settings WHERE client_pk = $1', [row.pk])).rows[0]);
        expect(settings).toEqual({ settings: { team: 'w2' } });
      }
      const log = services[profile]!.writesOf(`update-${profile}`);
      expect(log.map((e) => e.kind)).toEqual(['client-updated']);
      expect(log[0]!.writes[0]).toEqual({ table: 'public.hydra_client', key: { id }, op: 'update' });
      expect(services[profile]!.writesOf(`create-${profile}`)[0]!.lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    });

    it('issues a client-credentials access token (no refresh token) to a client allowed to use the grant', async () => {
      const id = `cc-${profile}`;
      expect((await send(base(), 'POST', '/admin/clients', { ...clientBody, client_id: id })).status).toBe(201);
      const res = await post(base(), '/oauth2/token', { grant_type: 'client_credentials', client_id: id, scope: 'profile' });
      expect(res.status).toBe(200);
      const body = (await res.json()) as Record<string, string>;
      expect(body.refresh_token).toBeUndefined();
      expect(await (await post(base(), '/oauth2/introspect', { token: body.access_token! })).json()).toMatchObject({ active: true, sub: id, client_id: id });
      const basic = `Basic ${Buffer.from(`${id}:secret`).toString('base64')}`;
      const viaBasic = await fetch(`${base()}/oauth2/token`, { method: 'POST', headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=client_credentials' });
      expect(viaBasic.status).toBe(200);
      expect((await post(base(), '/oauth2/token', { grant_type: 'client_credentials', client_id: 'no-such-client' })).status).toBe(401);
    });

    /** The whole authorization-code flow up to the code; returns the challenges and the code. */
    async function codeFlow(client: string, subject: string, extra: Record<string, string>, scope: string): Promise<{ login: string; consent: string; code: string }> {
      const q = new URLSearchParams({ client_id: client, response_type: 'code', redirect_uri: 'https://w.example.test/cb', scope, state: 'st-1', ...extra });
      const auth = await send(base(), 'GET', `/oauth2/auth?${q}`, undefined, `auth-${subject}`);
      expect(auth.status).toBe(200);
      const login = String(auth.json.login_challenge);
      const accepted = await send(base(), 'PUT', `/admin/oauth2/auth/requests/login/accept?login_challenge=${login}`, { subject, remember: true, remember_for: 3600 }, `login-${subject}`);
      expect(accepted.status).toBe(200);
      expect((await send(base(), 'PUT', `/admin/oauth2/auth/requests/login/accept?login_challenge=${login}`, { subject })).status).toBe(404);
      const consent = String(accepted.json.consent_challenge);
      const granted = await send(base(), 'PUT', `/admin/oauth2/auth/requests/consent/accept?consent_challenge=${consent}`, { grant_scope: scope.split(' '), remember: true, session: { id_token: { email: `${subject}@w.example.test` } } }, `consent-${subject}`);
      expect(granted.status).toBe(200);
      expect(String(granted.json.redirect_to)).toContain('state=st-1');
      return { login, consent, code: String(granted.json.code) };
    }

    it('runs the authorization-code flow with PKCE and OpenID Connect: login, consent, code, exchange', async () => {
      const client = `flow-${profile}`;
      await send(base(), 'POST', '/admin/clients', { ...clientBody, client_id: client });
      const verifier = 'v'.repeat(43);
      const subject = `flow-user-${profile}`;
      const { login, consent, code } = await codeFlow(client, subject, { code_challenge: s256(verifier), code_challenge_method: 'S256', nonce: 'n-1' }, 'openid offline_access profile');
      const sig = signatureOf(code)!;
      const rows = (table: string) => withClient(dsn(), async (c) => (await c.query(`SELECT signature, active, challenge_id FROM ${table} WHERE signature = $1`, [sig])).rows);
      expect(await rows('hydra_oauth2_code')).toEqual([{ signature: sig, active: true, challenge_id: consent }]);
      expect(await rows('hydra_oauth2_pkce')).toHaveLength(1);
      expect(await rows('hydra_oauth2_oidc')).toHaveLength(1);
      if (profile === 'hydra-v2') {
        const flow = await withClient(dsn(), async (c) => (await c.query('SELECT state, subject, consent_challenge_id, granted_scope FROM hydra_oauth2_flow WHERE login_challenge = $1', [login])).rows[0]);
        expect(flow).toEqual({ state: 6, subject, consent_challenge_id: consent, granted_scope: 'openid|offline_access|profile' });
      } else {
        const handled = await withClient(dsn(), async (c) => (await c.query('SELECT h.was_used, r.login_challenge FROM hydra_oauth2_consent_request_handled h JOIN hydra_oauth2_consent_request r USING (challenge) WHERE challenge = $1', [consent])).rows[0]);
        expect(handled).toEqual({ was_used: true, login_challenge: login });
      }
      const wrong = await post(base(), '/oauth2/token', { grant_type: 'authorization_code', code, code_verifier: 'w'.repeat(43), client_id: client });
      expect(wrong.status).toBe(400);
      expect(await rows('hydra_oauth2_code')).toEqual([{ signature: sig, active: true, challenge_id: consent }]);
      const res = await fetch(`${base()}/oauth2/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-request-id': `exchange-${subject}` }, body: new URLSearchParams({ grant_type: 'authorization_code', code, code_verifier: verifier, client_id: client }) });
      expect(res.status).toBe(200);
      const tokens = (await res.json()) as Record<string, string>;
      expect(tokens.id_token).toBeTruthy();
      expect(await (await post(base(), '/oauth2/introspect', { token: tokens.access_token! })).json()).toMatchObject({ active: true, sub: subject, client_id: client });
      expect(await active(base(), tokens.refresh_token!)).toBe(true);
      expect(await rows('hydra_oauth2_code')).toEqual([{ signature: sig, active: false, challenge_id: consent }]);
      expect(await rows('hydra_oauth2_pkce')).toEqual([]);
      expect(await rows('hydra_oauth2_oidc')).toEqual([]);
      const at = await withClient(dsn(), async (c) => (await c.query('SELECT challenge_id FROM hydra_oauth2_access WHERE signature = $1', [signatureOf(tokens.access_token!)])).rows[0]);
      expect(at).toEqual({ challenge_id: consent });
      expect((await post(base(), '/oauth2/token', { grant_type: 'authorization_code', code, code_verifier: verifier })).status).toBe(400);
      const log = services[profile]!.writesOf(`exchange-${subject}`)[0]!;
      expect(log.kind).toBe('code-exchanged');
      expect(log.writes.map((w) => `${w.table}:${w.op}`).sort()).toEqual(['public.hydra_oauth2_access:insert', 'public.hydra_oauth2_code:deactivate', 'public.hydra_oauth2_oidc:delete', 'public.hydra_oauth2_pkce:delete', 'public.hydra_oauth2_refresh:insert']);
      const loginWrites = services[profile]!.writesOf(`login-${subject}`)[0]!.writes.map((w) => w.table);
      expect(loginWrites).toEqual(profile === 'hydra-v1'
        ? ['public.hydra_oauth2_authentication_session', 'public.hydra_oauth2_authentication_request', 'public.hydra_oauth2_authentication_request_handled', 'public.hydra_oauth2_consent_request']
        : ['public.hydra_oauth2_authentication_session', 'public.hydra_oauth2_flow']);
    });

    it('runs the flow without PKCE or openid, and a consent revocation takes the code-flow tokens with it', async () => {
      const client = `flow2-${profile}`;
      await send(base(), 'POST', '/admin/clients', { ...clientBody, client_id: client });
      const subject = `flow2-user-${profile}`;
      const { code } = await codeFlow(client, subject, {}, 'offline_access');
      const sig = signatureOf(code)!;
      const count = (table: string) => withClient(dsn(), async (c) => Number((await c.query(`SELECT count(*) AS n FROM ${table} WHERE signature = $1`, [sig])).rows[0].n));
      expect([await count('hydra_oauth2_pkce'), await count('hydra_oauth2_oidc')]).toEqual([0, 0]);
      const res = await post(base(), '/oauth2/token', { grant_type: 'authorization_code', code });
      const tokens = (await res.json()) as Record<string, string>;
      expect(tokens.id_token).toBeUndefined();
      expect(await active(base(), tokens.refresh_token!)).toBe(true);
      const path = profile === 'hydra-v1' ? '/oauth2/auth/sessions/consent' : '/admin/oauth2/auth/sessions/consent';
      const revoked = await fetch(`${base()}${path}?subject=${subject}&client=${client}`, { method: 'DELETE', headers: { 'x-request-id': `revoke-${subject}` } });
      expect(revoked.status).toBe(204);
      expect(await active(base(), tokens.access_token!)).toBe(false);
      expect(await active(base(), tokens.refresh_token!)).toBe(false);
      expect(await count('hydra_oauth2_code')).toBe(0);
      const tables = services[profile]!.writesOf(`revoke-${subject}`)[0]!.writes.map((w) => `${w.table}:${w.op}`).sort();
      expect(tables).toEqual([
        ...(profile === 'hydra-v1' ? ['public.hydra_oauth2_access:delete', 'public.hydra_oauth2_code:delete', 'public.hydra_oauth2_consent_request:delete', 'public.hydra_oauth2_consent_request_handled:delete'] : ['public.hydra_oauth2_access:delete', 'public.hydra_oauth2_code:delete', 'public.hydra_oauth2_flow:delete']),
        'public.hydra_oauth2_refresh:delete',
      ]);
    });
  });
}

// The demo's write check on the same seed as v1 (blue) and as migrated v2 (green): a row is present
// through the conversions, and a row green lacks, still holds or holds differently is lost.
describe('checkWrites: blue v1 rows against green v2 rows', () => {
  it('finds seeded rows through the conversions and the flow merge, and names what differs', async () => {
    const blue = await connect('blue', pair.blueDsn);
    const green = await connect('green', pair.greenDsn);
    try {
      const seeded = "requested_at < '2022-01-01'";
      const client = (await blue.query(`SELECT id FROM hydra_client WHERE redirect_uris LIKE '%|%' AND metadata <> '{}' ORDER BY pk LIMIT 1`)).rows[0].id as string;
      const [kept, gone, stays] = (await blue.query(`SELECT signature FROM hydra_oauth2_access WHERE ${seeded} AND challenge_id IS NULL ORDER BY signature DESC LIMIT 3`)).rows.map((r) => r.signature as string) as [string, string, string];
      const refresh = (await blue.query(`SELECT signature FROM hydra_oauth2_refresh WHERE ${seeded} AND NOT active ORDER BY signature DESC LIMIT 1`)).rows[0].signature as string;
      // Green was migrated without the engine's repair: an unhandled login keeps state 1, a used consent's flow reads 128.
      const unhandled = (await blue.query(`SELECT r.challenge FROM hydra_oauth2_authentication_request r WHERE NOT EXISTS (SELECT 1 FROM hydra_oauth2_authentication_request_handled h WHERE h.challenge = r.challenge) ORDER BY 1 LIMIT 1`)).rows[0].challenge as string;
      const used = (await blue.query(`SELECT challenge FROM hydra_oauth2_consent_request_handled WHERE was_used AND error = '{}' AND ${seeded} ORDER BY 1 LIMIT 1`)).rows[0].challenge as string;
      const writes: RecordedWrite[] = [
        { kind: 'client-updated', table: 'public.hydra_client', key: { id: client } },
        { kind: 'client-credentials', table: 'public.hydra_oauth2_access', key: { signature: kept } },
        { kind: 'refresh-rotated', table: 'public.hydra_oauth2_refresh', key: { signature: refresh } },
        { kind: 'login-requested', table: 'public.hydra_oauth2_authentication_request', key: { challenge: unhandled } },
      ];
      expect(await checkWrites(blue, green, writes)).toMatchObject({ made: 4, present: 4, lost: 0, missing: [] });

      await green.query(`UPDATE hydra_client SET redirect_uris = '["https://elsewhere.example.test"]' WHERE id = $1`, [client]);
      await green.query('DELETE FROM hydra_oauth2_access WHERE signature = $1', [gone]);
      await blue.query('DELETE FROM hydra_oauth2_access WHERE signature = $1', [stays]);
      const lost = await checkWrites(blue, green, [
        ...writes,
        { kind: 'token-revoked', table: 'public.hydra_oauth2_access', key: { signature: gone } },
        { kind: 'token-revoked', table: 'public.hydra_oauth2_access', key: { signature: stays } },
        { kind: 'consent-granted', table: 'public.hydra_oauth2_consent_request_handled', key: { challenge: used } },
      ]);
      expect(lost).toMatchObject({ made: 7, present: 3, lost: 4, byKind: { 'client-updated': { lost: 1 }, 'token-revoked': { made: 2, lost: 2 }, 'consent-granted': { lost: 1 } } });
      expect(lost.missing.map((m) => m.reason)).toEqual([
        expect.stringContaining('redirect_uris differs through pipe-list-to-json-array'),
        expect.stringContaining('absent on green'),
        expect.stringContaining('deleted on blue, still on green'),
        expect.stringMatching(/flow state 128 on green, the v1 rows say 6/),
      ]);
    } finally {
      await Promise.all([blue.end(), green.end()]);
    }
  });
});
