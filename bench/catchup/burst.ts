// The catch-up bench's write load on blue (bench/catchup.ts): Hydra-shaped engine requests, one blue
// transaction per request as Hydra commits them, generated inside the server by one procedure so the
// burst itself takes seconds. One "cycle" is:
//   * a new login + consent flow, as its five requests: login request (1 insert); login accepted
//     (session insert, handled-login insert, login request update); consent request (insert, handled
//     login marked used); consent accepted (1 insert); code exchange (handled consent marked used,
//     access and refresh token inserted): 10 changes in 5 transactions;
//   * two refresh rotations of existing grants (old refresh deactivated, old access deleted, new access
//     and refresh inserted under the same request id): 4 changes each;
//   * one revocation of an existing grant (access deleted, refresh deactivated): 2 changes;
//   * every 25th cycle a client update (name, metadata), every 50th a janitor transaction deleting 40
//     rotated-out refresh tokens.
// About 20.8 row changes in 8.1 transactions per cycle. The grants come from pools filled once from
// the seed (schema `bench`, not published), each grant used once, so every change hits a real row.

/** Row changes per cycle (for sizing; the procedure counts the real ones). */
export const CHANGES_PER_CYCLE = 20.8;
/** Blue transactions (engine requests) per cycle. */
export const TXNS_PER_CYCLE = 8.06;
/** Grants a cycle takes from the pool (two rotations, one revocation). */
export const GRANTS_PER_CYCLE = 3;
const JANITOR_EVERY = 50;
const JANITOR_ROWS = 40;
const CLIENT_EVERY = 25;

/** The pools, filled from the seed: active grants (access + refresh of one request) and rotated-out refresh tokens. */
export const POOLS_SQL = `
CREATE SCHEMA bench;
CREATE TABLE bench.grant_pool AS
SELECT row_number() OVER (ORDER BY md5(r.signature))::int AS n, r.request_id, a.signature AS access, r.signature AS refresh,
       r.client_id, r.subject, r.challenge_id, r.scope
  FROM public.hydra_oauth2_refresh r JOIN public.hydra_oauth2_access a USING (request_id)
 WHERE r.active;
ALTER TABLE bench.grant_pool ADD PRIMARY KEY (n);
CREATE TABLE bench.janitor_pool AS
SELECT row_number() OVER (ORDER BY md5(r.signature))::int AS n, r.signature
  FROM public.hydra_oauth2_refresh r WHERE NOT r.active;
ALTER TABLE bench.janitor_pool ADD PRIMARY KEY (n)`;

/** The pools' sizes. */
export const POOL_SIZES_SQL = `SELECT (SELECT count(*) FROM bench.grant_pool)::int AS grants, (SELECT count(*) FROM bench.janitor_pool)::int AS janitor`;

/** A statement whose affected rows are counted as changes. */
const counted = (sql: string): string => `${sql};\n    GET DIAGNOSTICS n = ROW_COUNT; changes := changes + n;`;
const commit = 'COMMIT; txns := txns + 1;';
const b64 = (a: string, b: string): string => `translate(encode(decode(md5(${a}) || md5(${b}), 'hex'), 'base64'), '+/=', '-_')`;
const flip = (hex: string): string => `translate(${hex}, '0123456789abcdef', 'fedcba9876543210')`;
const SESSION_DATA = `'{"id_token":{"id_token_claims":{"jti":"' || md5(sig) || '","sub":"' || subj || '","aud":["' || cl || '"],"iat":' || extract(epoch FROM now())::bigint || '}},"expires_at":{"access_token":' || (extract(epoch FROM now())::bigint + 3600) || '}}'`;

function tokenInsert(table: 'hydra_oauth2_access' | 'hydra_oauth2_refresh', grant: string): string {
  return counted(`INSERT INTO public.${table} (signature, request_id, requested_at, client_id, scope, granted_scope, form_data, session_data, subject,
        active, requested_audience, granted_audience, challenge_id)
      VALUES (sig, req, now(), cl, scope, scope, '${grant}', ${SESSION_DATA}, subj, true, '', '', chal)`);
}

/**
 * bench.burst(first, cycles, changes, txns): runs cycles first .. first + cycles - 1 (cycle c takes
 * grants 3c-2 .. 3c), committing after every request; returns the row changes and transactions.
 */
export const BURST_PROCEDURE = `
CREATE OR REPLACE PROCEDURE bench.burst(first int, cycles int, INOUT changes bigint DEFAULT 0, INOUT txns bigint DEFAULT 0)
LANGUAGE plpgsql AS $burst$
DECLARE
  clients text[] := ARRAY(SELECT id FROM public.hydra_client ORDER BY pk);
  nclients int := cardinality(clients);
  c int; j int; n bigint; g bench.grant_pool%ROWTYPE;
  lc text; cc text; sid text; cl text; subj text; sig text; req text; scope text; chal text; rem boolean;
BEGIN
  FOR c IN first .. first + cycles - 1 LOOP
    lc := md5('bench-lc-' || c); cc := md5('bench-cc-' || c); sid := md5('bench-s-' || c);
    cl := clients[c % nclients + 1]; subj := 'bench-user-' || (c % 5000); rem := c % 3 = 0;
    ${counted(`INSERT INTO public.hydra_oauth2_authentication_request (challenge, requested_scope, verifier, csrf, subject, request_url, skip, client_id,
        requested_at, oidc_context, login_session_id, requested_at_audience)
      VALUES (lc, 'openid|offline_access', reverse(lc), ${flip('lc')}, subj, 'https://auth.example.test/oauth2/auth?state=' || substr(cc, 1, 16), false, cl,
        now(), '{}', NULL, '')`)}
    ${commit}
    ${counted(`INSERT INTO public.hydra_oauth2_authentication_session (id, authenticated_at, subject, remember) VALUES (sid, now(), subj, rem)`)}
    ${counted(`INSERT INTO public.hydra_oauth2_authentication_request_handled (challenge, subject, remember, remember_for, error, acr, requested_at,
        authenticated_at, was_used, forced_subject_identifier, context)
      VALUES (lc, subj, rem, CASE WHEN rem THEN 2592000 ELSE 0 END, '{}', '0', now(), now(), false, '', '{}')`)}
    ${counted(`UPDATE public.hydra_oauth2_authentication_request SET authenticated_at = now(), login_session_id = sid WHERE challenge = lc`)}
    ${commit}
    ${counted(`INSERT INTO public.hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf,
        authenticated_at, requested_at, oidc_context, forced_subject_identifier, login_session_id, login_challenge, requested_at_audience, acr, context)
      VALUES (cc, reverse(cc), cl, subj, 'https://auth.example.test/oauth2/auth?login_verifier=' || reverse(lc), false, 'openid|offline_access',
        ${flip('cc')}, now(), now(), '{}', '', sid, lc, '', '0', '{}')`)}
    ${counted(`UPDATE public.hydra_oauth2_authentication_request_handled SET was_used = true WHERE challenge = lc`)}
    ${commit}
    ${counted(`INSERT INTO public.hydra_oauth2_consent_request_handled (challenge, granted_scope, remember, remember_for, error, requested_at,
        session_access_token, session_id_token, authenticated_at, was_used, granted_at_audience, handled_at)
      VALUES (cc, 'openid|offline_access', rem, CASE WHEN rem THEN 2592000 ELSE 0 END, '{}', now(), '{}',
        '{"email":"' || subj || '@example.test"}', now(), false, '', now())`)}
    ${commit}
    ${counted(`UPDATE public.hydra_oauth2_consent_request_handled SET was_used = true WHERE challenge = cc`)}
    sig := ${b64(`'bench-a-' || c`, `'bench-a2-' || c`)}; req := md5('bench-req-' || c)::uuid::text; scope := 'openid|offline_access'; chal := cc;
    ${tokenInsert('hydra_oauth2_access', 'grant_type=authorization_code')}
    sig := ${b64(`'bench-r-' || c`, `'bench-r2-' || c`)};
    ${tokenInsert('hydra_oauth2_refresh', 'grant_type=authorization_code')}
    ${commit}
    FOR j IN 0 .. 2 LOOP
      SELECT * INTO g FROM bench.grant_pool p WHERE p.n = ${GRANTS_PER_CYCLE} * (c - 1) + 1 + j;
      IF NOT FOUND THEN RAISE EXCEPTION 'bench.grant_pool has no grant %: seed more rows', ${GRANTS_PER_CYCLE} * (c - 1) + 1 + j; END IF;
      ${counted('UPDATE public.hydra_oauth2_refresh SET active = false WHERE signature = g.refresh')}
      ${counted('DELETE FROM public.hydra_oauth2_access WHERE signature = g.access')}
      IF j < 2 THEN
        cl := g.client_id; subj := g.subject; req := g.request_id; scope := g.scope; chal := g.challenge_id;
        sig := ${b64(`'bench-ra-' || g.n`, `'bench-ra2-' || g.n`)};
        ${tokenInsert('hydra_oauth2_access', 'grant_type=refresh_token')}
        sig := ${b64(`'bench-rr-' || g.n`, `'bench-rr2-' || g.n`)};
        ${tokenInsert('hydra_oauth2_refresh', 'grant_type=refresh_token')}
      END IF;
      ${commit}
    END LOOP;
    IF c % ${CLIENT_EVERY} = 0 THEN
      ${counted(`UPDATE public.hydra_client SET client_name = 'Client ' || pk || ' rev ' || c, metadata = '{"rev":' || c || '}', updated_at = now()
        WHERE pk = (c / ${CLIENT_EVERY}) % nclients + 1`)}
      ${commit}
    END IF;
    IF c % ${JANITOR_EVERY} = 0 THEN
      ${counted(`DELETE FROM public.hydra_oauth2_refresh r USING bench.janitor_pool p
        WHERE r.signature = p.signature AND p.n > (c / ${JANITOR_EVERY} - 1) * ${JANITOR_ROWS} AND p.n <= (c / ${JANITOR_EVERY}) * ${JANITOR_ROWS}`)}
      ${commit}
    END IF;
  END LOOP;
END
$burst$`;

/** Rotated-out refresh tokens the janitor deletes over `cycles` cycles. */
export function janitorRows(cycles: number): number {
  return Math.floor(cycles / JANITOR_EVERY) * JANITOR_ROWS;
}
