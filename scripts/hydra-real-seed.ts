// Seeds a database that holds Ory Hydra v1.11's REAL schema (built from its own migrations folder by
// scripts/check-hydra.ts), not our fixture schema: support/fixture/seed.ts targets sql/fixtures/hydra-v1,
// which is modelled on Hydra but differs (no code/oidc/pkce tables, no amr, no logout requests).
// Every statement is our own SQL against the column names Hydra v1.11 has. Dev-only: never imported
// by bin/migrate.ts.

import type pg from 'pg';

/** One dirty-row class production leaves behind, and how to plant it on a v1.11 schema. */
export interface RealDirtyClass {
  /** Short name used in the summary. */
  name: string;
  /** What the rows are. */
  description: string;
  /** Statements that plant the rows (run with foreign-key triggers off: these rows got in that way). */
  sql: string[];
}

const TOKEN_TABLES = ['hydra_oauth2_access', 'hydra_oauth2_refresh', 'hydra_oauth2_code', 'hydra_oauth2_oidc', 'hydra_oauth2_pkce'] as const;

/** Clean, consistent data: clients, sessions, handled logins and consents, and tokens for each grant. */
export async function seedClean(db: pg.Client, flows: number): Promise<void> {
  const clients = Math.max(5, Math.floor(flows / 10));
  await db.query(
    `INSERT INTO hydra_client (id, client_name, client_secret, redirect_uris, grant_types, response_types, scope, owner,
       policy_uri, tos_uri, client_uri, logo_uri, contacts, sector_identifier_uri, jwks, jwks_uri, request_uris,
       allowed_cors_origins, audience, metadata)
     SELECT 'client-' || k, 'Client ' || k, 'secret', 'https://app' || k || '.test/cb' || CASE WHEN k % 2 = 0 THEN '|https://app' || k || '.test/silent' ELSE '' END,
       'authorization_code|refresh_token', 'code', 'openid offline', 'owner', '', '', '', '', CASE WHEN k % 3 = 0 THEN 'ops@example.test' ELSE '' END,
       '', '', '', '', '', CASE WHEN k % 4 = 0 THEN 'https://api.test' ELSE '' END, CASE WHEN k % 5 = 0 THEN '{"team":"a"}' ELSE '{}' END
       FROM generate_series(1, $1::int) k`,
    [clients],
  );
  await db.query(
    `INSERT INTO hydra_oauth2_authentication_session (id, authenticated_at, subject, remember)
     SELECT 'sess-' || k, now() - interval '1 day', 'user-' || (k % 50), k % 2 = 0 FROM generate_series(1, $1::int) k`,
    [flows],
  );
  await db.query(
    `INSERT INTO hydra_oauth2_authentication_request (challenge, requested_scope, verifier, csrf, subject, request_url, skip, client_id,
       requested_at, authenticated_at, oidc_context, login_session_id, requested_at_audience)
     SELECT 'login-' || k, 'openid|offline', 'lv-' || k, 'lc-' || k, 'user-' || (k % 50), 'https://hydra.test/oauth2/auth?x=' || k, false,
       'client-' || (1 + k % $2::int), now() - interval '2 hours', now() - interval '2 hours', '{}', 'sess-' || k, ''
       FROM generate_series(1, $1::int) k`,
    [flows, clients],
  );
  await db.query(
    `INSERT INTO hydra_oauth2_authentication_request_handled (challenge, subject, remember, remember_for, error, acr, authenticated_at, was_used, context, amr)
     SELECT 'login-' || k, 'user-' || (k % 50), k % 2 = 0, 3600, '{}', '', now() - interval '2 hours', true, '{}', ''
       FROM generate_series(1, $1::int) k`,
    [flows],
  );
  await db.query(
    `INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf,
       authenticated_at, requested_at, oidc_context, login_session_id, login_challenge, requested_at_audience, acr, context, amr)
     SELECT 'consent-' || k, 'cv-' || k, 'client-' || (1 + k % $2::int), 'user-' || (k % 50), 'https://hydra.test/oauth2/auth?x=' || k, false,
       'openid|offline', 'cc-' || k, now() - interval '2 hours', now() - interval '2 hours', '{}', 'sess-' || k, 'login-' || k, '', '', '{}', ''
       FROM generate_series(1, $1::int) k`,
    [flows, clients],
  );
  await db.query(
    `INSERT INTO hydra_oauth2_consent_request_handled (challenge, granted_scope, remember, remember_for, error, session_access_token,
       session_id_token, authenticated_at, was_used, granted_at_audience, handled_at)
     SELECT 'consent-' || k, 'openid|offline', k % 2 = 0, 0, '{}', '{"a":' || k || '}', '{}', now() - interval '2 hours', true, '', now() - interval '2 hours'
       FROM generate_series(1, $1::int) k`,
    [flows],
  );
  for (const t of TOKEN_TABLES) {
    await db.query(
      `INSERT INTO ${t} (signature, request_id, requested_at, client_id, scope, granted_scope, form_data, session_data, subject, active,
         requested_audience, granted_audience, challenge_id)
       SELECT '${t.slice('hydra_oauth2_'.length)}-' || k, 'req-' || k, now() - interval '1 hour', 'client-' || (1 + k % $2::int), 'openid|offline',
         'openid|offline', '', '{}', 'user-' || (k % 50), true, '', '', 'consent-' || k
         FROM generate_series(1, $1::int) k`,
      [flows, clients],
    );
  }
}

const token = (table: string, sig: string, client: string, challenge: string | null): string =>
  `INSERT INTO ${table} (signature, request_id, client_id, scope, granted_scope, form_data, session_data, subject, active, challenge_id)
   VALUES ('${sig}', 'req-${sig}', '${client}', 'openid', 'openid', '', '{}', 'user-1', true, ${challenge === null ? 'NULL' : `'${challenge}'`})`;

/** A login (handled or not) with one consent (handled or not), all under challenge suffix `s`. */
const flow = (s: string, o: { loginHandled: boolean; consentHandled: boolean; loginChallenge?: string | null; sessionAccessToken?: string; remember?: boolean; requestedAt?: string }): string[] => [
  `INSERT INTO hydra_oauth2_authentication_request (challenge, requested_scope, verifier, csrf, subject, request_url, skip, client_id, oidc_context)
   VALUES ('login-${s}', 'openid', 'lv-${s}', 'lc-${s}', 'user-1', 'https://hydra.test/auth', false, 'client-1', '{}') ON CONFLICT DO NOTHING`,
  ...(o.loginHandled
    ? [`INSERT INTO hydra_oauth2_authentication_request_handled (challenge, subject, remember, remember_for, error, acr, was_used, context)
        VALUES ('login-${s}', 'user-1', true, 0, '{}', '', true, '{}') ON CONFLICT DO NOTHING`]
    : []),
  `INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf, oidc_context, login_challenge, requested_at)
   VALUES ('consent-${s}', 'cv-${s}', 'client-1', 'user-1', 'https://hydra.test/auth', false, 'openid', 'cc-${s}', '{}',
           ${o.loginChallenge === null ? 'NULL' : `'${o.loginChallenge ?? `login-${s}`}'`}, ${o.requestedAt ? `'${o.requestedAt}'` : 'now()'})`,
  ...(o.consentHandled
    ? [`INSERT INTO hydra_oauth2_consent_request_handled (challenge, granted_scope, remember, remember_for, error, session_access_token, session_id_token, was_used)
        VALUES ('consent-${s}', 'openid', ${o.remember ?? true}, 0, '{}', '${o.sessionAccessToken ?? '{}'}', '{}', true)`]
    : []),
];

/** Every dirty class we know, written for the real v1.11 schema. */
export const REAL_DIRTY_CLASSES: readonly RealDirtyClass[] = [
  { name: 'orphan-client', description: 'an access token whose client was deleted', sql: [token('hydra_oauth2_access', 'dirty-orphan-client', 'client-gone', null)] },
  { name: 'orphan-challenge', description: 'an active refresh token whose challenge_id points to no handled consent', sql: [token('hydra_oauth2_refresh', 'dirty-orphan-challenge', 'client-1', 'consent-gone')] },
  {
    name: 'duplicate-consent',
    description: 'two consents for one login: the older one handled and remembered (with a live token), the newer one never handled',
    sql: [
      ...flow('dup', { loginHandled: true, consentHandled: true, remember: true, requestedAt: '2020-01-01 00:00:00' }),
      token('hydra_oauth2_access', 'dirty-dup-token', 'client-1', 'consent-dup'),
      `INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf, oidc_context, login_challenge)
       VALUES ('consent-dup2', 'cv-dup2', 'client-1', 'user-1', 'https://hydra.test/auth', false, 'openid', 'cc-dup2', '{}', 'login-dup')`,
    ],
  },
  { name: 'unhandled-login', description: 'a consent whose login request was never handled', sql: flow('unh', { loginHandled: false, consentHandled: false }) },
  { name: 'null-login-challenge', description: 'a handled consent whose login_challenge is NULL', sql: flow('nolc', { loginHandled: true, consentHandled: true, loginChallenge: null }) },
  { name: 'invalid-json-session', description: 'a handled consent whose session_access_token is not JSON', sql: flow('badjson', { loginHandled: true, consentHandled: true, sessionAccessToken: '{not json' }) },
  {
    name: 'invalid-json-oidc-context',
    description: 'a login request whose oidc_context is not JSON',
    sql: [...flow('badctx', { loginHandled: true, consentHandled: true }), `UPDATE hydra_oauth2_authentication_request SET oidc_context = 'not json' WHERE challenge = 'login-badctx'`],
  },
  {
    name: 'invalid-json-login-context',
    description: 'a handled login whose context is not JSON',
    sql: [...flow('badlctx', { loginHandled: true, consentHandled: true }), `UPDATE hydra_oauth2_authentication_request_handled SET context = '{' WHERE challenge = 'login-badlctx'`],
  },
  { name: 'pipe-quote', description: 'a client redirect URI containing a double quote', sql: [`UPDATE hydra_client SET redirect_uris = 'https://q.test/cb?x="y"|https://q.test/2' WHERE id = 'client-2'`] },
  { name: 'pipe-backslash', description: 'a client contact containing a backslash (\\q: invalid escape)', sql: [`UPDATE hydra_client SET contacts = 'ops\\qteam@example.test' WHERE id = 'client-3'`] },
  { name: 'pipe-backslash-valid-escape', description: 'a client audience containing \\n (becomes a control character)', sql: [`UPDATE hydra_client SET audience = 'https://api.test/a\\nb' WHERE id = 'client-4'`] },
  {
    name: 'scope-quote',
    description: 'a consent whose granted scope contains a double quote (converted on the flow table the migrations create)',
    sql: [...flow('scopeq', { loginHandled: true, consentHandled: true }), `UPDATE hydra_oauth2_consent_request_handled SET granted_scope = 'openid|"odd"' WHERE challenge = 'consent-scopeq'`],
  },
];

/** Plants the given classes (foreign-key triggers off for this transaction: superuser only, as the rows got in that way). */
export async function seedDirty(db: pg.Client, classes: readonly RealDirtyClass[]): Promise<void> {
  await db.query('BEGIN');
  await db.query('SET LOCAL session_replication_role = replica');
  for (const c of classes) for (const s of c.sql) await db.query(s);
  await db.query('COMMIT');
}
