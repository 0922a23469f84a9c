// The stand-in auth service over the fixture schema, v1 (consent tables) and v2 (flow table):
// introspect, revoke, refresh rotation and consent revocation, through real HTTP and Postgres.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadHydraV1Schema, seedHydraV1 } from '../support/fixture/seed.ts';
import { popSource } from '../src/sources/pop.ts';
import { connect } from '../src/db/connect.ts';
import { rawTokenFor, startStandin, STANDIN_SERVER, type Standin } from '../support/standin/server.ts';
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
  });
}
