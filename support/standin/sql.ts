// The stand-in engine's statements, per schema shape. Token tables are the same in v1 and v2 (v2 adds
// nid); consent lives in the consent tables (v1) or the flow table (v2), named by the replay profile's
// declared semantics so the engine and replay never disagree about where consent is. Login and
// consent requests are the four v1 tables, or one hydra_oauth2_flow row (v2) whose state moves
// 1 -> 4 -> 6 as the flow goes. Every writing statement returns one row per row it wrote: `tbl`
// (schema.table), `key` (the row's primary key, jsonb) and `op`, the stand-in's write log.

import { literal, qualified, ident } from '../../src/db/sql.ts';
import { PROFILE_SEMANTICS, type ReplayProfile } from '../../src/replay/semantics.ts';

/** What a statement did to a row: `deactivate` is an update turning `active` off. */
export type WriteOp = 'insert' | 'update' | 'delete' | 'deactivate';

/** The statements for one schema shape. */
export interface StandinSql {
  /** $1 signature -> the access row's facts, when it still grants access. */
  introspectAccess: string;
  /** $1 signature -> the refresh row's facts, when it is active. */
  introspectRefresh: string;
  /** $1 signature -> request id of either token. */
  requestOf: string;
  /** $1 request id: delete access rows. */
  deleteAccessByRequest: string;
  /** $1 request id: deactivate refresh rows. */
  deactivateRefreshByRequest: string;
  /** $1 signature: claim an active refresh token (deactivate, return its request id). */
  claimRefresh: string;
  /** $1 old refresh signature, $2 new signature: new refresh row copied from the old one. */
  insertRefresh: string;
  /** $1 old refresh signature, $2 new signature: new access row for the same grant. */
  insertAccess: string;
  /** $1 subject, $2 client or null: delete consent rows (tokens cascade; the cascaded rows are returned too). */
  deleteConsent: string;
  /** $1 id, $2 name, $3 secret hash, $4 redirect URIs, $5 grant types, $6 response types, $7 scope, $8 owner, $9 contacts, $10 audience (text[] lists), $11 metadata (JSON text), $12 auth method. */
  createClient: string;
  /** As createClient, for the client `$1`; a NULL `$3` keeps the secret. */
  updateClient: string;
  /** $1 client id, $2 signature, $3 request id, $4 scope (text[]), $5 form data, $6 session data: an access token, when the client may use client_credentials. */
  clientCredentials: string;
  /** $1 challenge, $2 verifier, $3 csrf, $4 client id, $5 request URL, $6 scope, $7 audience (text[]): a login request. */
  loginRequest: string;
  /** $1 login challenge, $2 subject, $3 remember, $4 remember_for, $5 acr, $6 session id, $7 consent challenge, $8 its verifier, $9 its csrf: login handled and used, a login session, a consent request. */
  loginAccept: string;
  /** $1 consent challenge -> the pending consent request (request_url, client_id, subject, requested_scope), locked. */
  consentRequest: string;
  /** $1 consent challenge, $2 granted scope, $3 granted audience (text[]), $4 remember, $5 remember_for, $6 session access token, $7 session id token (JSON text), $8 code signature, $9 request id, $10 form data, $11 session data, $12 store PKCE, $13 store OIDC: consent handled and used, the code. */
  consentAccept: string;
  /** $1 code signature: deactivate an active code, returning its request id, client and granted scope. */
  claimCode: string;
  /** $1 code signature -> the PKCE row's form data, if any. */
  pkceOf: string;
  /** $1 code signature, $2 access signature, $3 refresh signature or NULL, $4 form data: the code's PKCE and OIDC rows go, its tokens come. */
  exchangeCode: string;
}

const FACTS = `subject AS sub, client_id, request_id, extract(epoch FROM requested_at)::bigint AS iat`;
/** The one network of the v2 fixture (what the nid backfill assigns). */
const NETWORK = '(SELECT n.id FROM public.networks n LIMIT 1)';

const TABLE = {
  client: 'public.hydra_client',
  settings: 'public.hydra_client_settings',
  session: 'public.hydra_oauth2_authentication_session',
  login: 'public.hydra_oauth2_authentication_request',
  loginHandled: 'public.hydra_oauth2_authentication_request_handled',
  consent: 'public.hydra_oauth2_consent_request',
  consentHandled: 'public.hydra_oauth2_consent_request_handled',
  flow: 'public.hydra_oauth2_flow',
  access: 'public.hydra_oauth2_access',
  refresh: 'public.hydra_oauth2_refresh',
  code: 'public.hydra_oauth2_code',
  oidc: 'public.hydra_oauth2_oidc',
  pkce: 'public.hydra_oauth2_pkce',
} as const;

/** A `schema.table` name, quoted. */
const q = (table: string): string => {
  const [schema = 'public', name = table] = table.split('.');
  return qualified(schema, name);
};

/** The write-log columns for a row of `table` whose key columns are read from alias `a`. */
const logged = (table: string, key: readonly string[], op: WriteOp, a: string): string =>
  `${literal(table)}::text AS tbl, jsonb_build_object(${key.map((k) => `${literal(k)}, ${a}.${ident(k)}`).join(', ')}) AS key, ${literal(op)}::text AS op`;

/** A text[] parameter as a pipe list (v1) or a jsonb array (v2). */
const pipe = (param: string): string => `array_to_string(${param}::text[], '|')`;
const jsonList = (param: string): string => `to_jsonb(${param}::text[])`;

const TOKEN_COLUMNS = 'signature, request_id, requested_at, client_id, scope, granted_scope, form_data, session_data, subject, active, requested_audience, granted_audience, challenge_id';
/** The tables whose rows hang off a handled consent by challenge_id (ON DELETE CASCADE in both shapes). */
const CONSENT_CHILDREN = [TABLE.access, TABLE.refresh, TABLE.code, TABLE.oidc, TABLE.pkce] as const;

/** Statements for a profile's schema. */
export function standinSql(profile: ReplayProfile): StandinSql {
  const s = PROFILE_SEMANTICS[profile];
  const v2 = profile !== 'hydra-v1';
  const access = ident(s.tokens.access.table);
  const refresh = ident(s.tokens.refresh.table);
  const c = s.consent;
  const copy = (into: string) =>
    `INSERT INTO ${into} SELECT (jsonb_populate_record(NULL::${into}, to_jsonb(r) || jsonb_build_object('signature', $2::text, 'requested_at', now()::timestamp, 'active', true))).*
       FROM ${refresh} r WHERE r.signature = $1`;
  // v1: the consent request's challenge; v2: the flow row's key (its login challenge).
  const consentKey = v2 ? 'login_challenge' : 'challenge';
  const cascaded = [
    ...(v2 ? [] : [`SELECT ${logged(TABLE.consentHandled, ['challenge'], 'delete', 'h')} FROM ${q(TABLE.consentHandled)} h JOIN gone g ON h.challenge = g.challenge`]),
    ...CONSENT_CHILDREN.map((t) => `SELECT ${logged(t, ['signature'], 'delete', 'x')} FROM ${q(t)} x JOIN gone g ON x.challenge_id = g.challenge`),
  ];
  return {
    introspectAccess: `SELECT ${FACTS} FROM ${access} WHERE signature = $1 AND active`,
    introspectRefresh: `SELECT ${FACTS} FROM ${refresh} WHERE signature = $1 AND active`,
    requestOf: `SELECT request_id FROM ${access} WHERE signature = $1 UNION SELECT request_id FROM ${refresh} WHERE signature = $1 LIMIT 1`,
    deleteAccessByRequest: `DELETE FROM ${access} t WHERE request_id = $1 RETURNING ${logged(TABLE.access, ['signature'], 'delete', 't')}`,
    deactivateRefreshByRequest: `UPDATE ${refresh} t SET active = false WHERE request_id = $1 AND active RETURNING ${logged(TABLE.refresh, ['signature'], 'deactivate', 't')}`,
    claimRefresh: `UPDATE ${refresh} t SET active = false WHERE signature = $1 AND active RETURNING request_id, client_id, subject, ${logged(TABLE.refresh, ['signature'], 'deactivate', 't')}`,
    insertRefresh: `${copy(refresh)} RETURNING ${logged(TABLE.refresh, ['signature'], 'insert', s.tokens.refresh.table)}`,
    insertAccess: `${copy(access)} RETURNING ${logged(TABLE.access, ['signature'], 'insert', s.tokens.access.table)}`,
    // The rows the delete cascades to are read in the same statement, from the snapshot it started with.
    deleteConsent: `WITH gone AS (
  DELETE FROM ${ident(c.table)} c WHERE ${ident(c.challengeColumn)} IS NOT NULL AND ${ident(c.subjectColumn)} = $1 AND ($2::text IS NULL OR ${ident(c.clientColumn)} = $2)
  RETURNING c.${ident(c.challengeColumn)} AS challenge${v2 ? `, c.${ident(consentKey)}` : ''}
)
SELECT ${logged(`public.${c.table}`, [consentKey], 'delete', 'g')} FROM gone g
${cascaded.map((sql) => `UNION ALL ${sql}`).join('\n')}`,
    ...(v2 ? v2Statements() : v1Statements()),
  };
}

type FlowStatements = Pick<StandinSql, 'createClient' | 'updateClient' | 'clientCredentials' | 'loginRequest' | 'loginAccept' | 'consentRequest' | 'consentAccept' | 'claimCode' | 'pkceOf' | 'exchangeCode'>;

/** The code, and its PKCE and OIDC rows when asked for, from CTE `src` (with the code's columns; v2 also nid). */
function codeRows(columns: string): string {
  return `code AS (INSERT INTO ${q(TABLE.code)} (${columns}) SELECT ${columns} FROM src RETURNING signature),
pkce AS (INSERT INTO ${q(TABLE.pkce)} (${columns}) SELECT ${columns} FROM src WHERE $12 RETURNING signature),
oidc AS (INSERT INTO ${q(TABLE.oidc)} (${columns}) SELECT ${columns} FROM src WHERE $13 RETURNING signature)`;
}

const CODE_LOG = [TABLE.code, TABLE.pkce, TABLE.oidc].map((t, i) => `SELECT ${logged(t, ['signature'], 'insert', 'x')} FROM ${['code', 'pkce', 'oidc'][i]} x`).join('\nUNION ALL ');

/** Shared by both shapes: the code's statements (the tables are alike; v2's nid is carried by the copy). */
const CODE_STATEMENTS: Pick<StandinSql, 'claimCode' | 'pkceOf' | 'exchangeCode'> = {
  claimCode: `UPDATE ${q(TABLE.code)} t SET active = false WHERE signature = $1 AND active RETURNING request_id, client_id, granted_scope, ${logged(TABLE.code, ['signature'], 'deactivate', 't')}`,
  pkceOf: `SELECT form_data FROM ${q(TABLE.pkce)} WHERE signature = $1`,
  exchangeCode: `WITH p AS (DELETE FROM ${q(TABLE.pkce)} WHERE signature = $1 RETURNING signature),
o AS (DELETE FROM ${q(TABLE.oidc)} WHERE signature = $1 RETURNING signature),
${(['access', 'refresh'] as const).map((t) => `${t[0]} AS (
  INSERT INTO ${q(TABLE[t])} SELECT (jsonb_populate_record(NULL::${q(TABLE[t])}, to_jsonb(c) || jsonb_build_object('signature', $${t === 'access' ? 2 : 3}::text, 'requested_at', now()::timestamp, 'active', true, 'form_data', $4::text))).*
    FROM ${q(TABLE.code)} c WHERE c.signature = $1${t === 'refresh' ? ' AND $3::text IS NOT NULL' : ''}
  RETURNING signature)`).join(',\n')}
SELECT ${logged(TABLE.pkce, ['signature'], 'delete', 'x')} FROM p x
UNION ALL SELECT ${logged(TABLE.oidc, ['signature'], 'delete', 'x')} FROM o x
UNION ALL SELECT ${logged(TABLE.access, ['signature'], 'insert', 'x')} FROM a x
UNION ALL SELECT ${logged(TABLE.refresh, ['signature'], 'insert', 'x')} FROM r x`,
};

/** v1: pipe-delimited lists, the four login/consent tables. */
function v1Statements(): FlowStatements {
  const clientValues = `$2, $3, ${pipe('$4')}, ${pipe('$5')}, ${pipe('$6')}, $7, $8, ${pipe('$9')}, ${pipe('$10')}, $11, $12`;
  return {
    createClient: `WITH c AS (
  INSERT INTO ${q(TABLE.client)} (id, client_name, client_secret, redirect_uris, grant_types, response_types, scope, owner, contacts, audience, metadata, token_endpoint_auth_method, created_at, updated_at)
  VALUES ($1, ${clientValues}, now(), now()) RETURNING id)
SELECT ${logged(TABLE.client, ['id'], 'insert', 'c')} FROM c`,
    updateClient: `WITH c AS (
  UPDATE ${q(TABLE.client)} SET client_name = $2, client_secret = coalesce($3, client_secret), redirect_uris = ${pipe('$4')}, grant_types = ${pipe('$5')},
    response_types = ${pipe('$6')}, scope = $7, owner = $8, contacts = ${pipe('$9')}, audience = ${pipe('$10')}, metadata = $11, token_endpoint_auth_method = $12, updated_at = now()
  WHERE id = $1 RETURNING id)
SELECT ${logged(TABLE.client, ['id'], 'update', 'c')} FROM c`,
    clientCredentials: `WITH t AS (
  INSERT INTO ${q(TABLE.access)} (${TOKEN_COLUMNS})
  SELECT $2, $3, now(), c.id, ${pipe('$4')}, ${pipe('$4')}, $5, $6, c.id, true, '', '', NULL
    FROM ${q(TABLE.client)} c WHERE c.id = $1 AND 'client_credentials' = ANY (string_to_array(c.grant_types, '|'))
  RETURNING signature)
SELECT ${logged(TABLE.access, ['signature'], 'insert', 't')} FROM t`,
    loginRequest: `WITH r AS (
  INSERT INTO ${q(TABLE.login)} (challenge, requested_scope, verifier, csrf, subject, request_url, skip, client_id, requested_at, authenticated_at, oidc_context, login_session_id, requested_at_audience)
  SELECT $1, ${pipe('$6')}, $2, $3, '', $5, false, c.id, now(), NULL, '{}', NULL, ${pipe('$7')} FROM ${q(TABLE.client)} c WHERE c.id = $4
  RETURNING challenge)
SELECT ${logged(TABLE.login, ['challenge'], 'insert', 'r')} FROM r`,
    // Login handled and used at once: the consent request it leads to is created in the same statement.
    loginAccept: `WITH ar AS (
  SELECT r.* FROM ${q(TABLE.login)} r
   WHERE r.challenge = $1 AND NOT EXISTS (SELECT 1 FROM ${q(TABLE.loginHandled)} h WHERE h.challenge = r.challenge)
   FOR UPDATE
), s AS (
  INSERT INTO ${q(TABLE.session)} (id, authenticated_at, subject, remember) SELECT $6, now(), $2, $3 FROM ar RETURNING id
), u AS (
  UPDATE ${q(TABLE.login)} x SET subject = $2, login_session_id = $6, authenticated_at = now() FROM ar WHERE x.challenge = ar.challenge RETURNING x.challenge
), h AS (
  INSERT INTO ${q(TABLE.loginHandled)} (challenge, subject, remember, remember_for, error, acr, requested_at, authenticated_at, was_used, forced_subject_identifier, context)
  SELECT ar.challenge, $2, $3, $4, '{}', $5, ar.requested_at, now(), true, '', '{}' FROM ar RETURNING challenge
), cr AS (
  INSERT INTO ${q(TABLE.consent)} (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf, authenticated_at, requested_at, oidc_context,
                                   forced_subject_identifier, login_session_id, login_challenge, requested_at_audience, acr, context)
  SELECT $7, $8, ar.client_id, $2, ar.request_url, false, ar.requested_scope, $9, now(), now(), ar.oidc_context, '', $6, ar.challenge, ar.requested_at_audience, $5, '{}' FROM ar
  RETURNING challenge
)
SELECT ${logged(TABLE.session, ['id'], 'insert', 's')} FROM s
UNION ALL SELECT ${logged(TABLE.login, ['challenge'], 'update', 'u')} FROM u
UNION ALL SELECT ${logged(TABLE.loginHandled, ['challenge'], 'insert', 'h')} FROM h
UNION ALL SELECT ${logged(TABLE.consent, ['challenge'], 'insert', 'cr')} FROM cr`,
    consentRequest: `SELECT cr.request_url, cr.client_id, cr.subject, cr.requested_scope FROM ${q(TABLE.consent)} cr
 WHERE cr.challenge = $1 AND NOT EXISTS (SELECT 1 FROM ${q(TABLE.consentHandled)} h WHERE h.challenge = cr.challenge) FOR UPDATE`,
    consentAccept: `WITH cr AS (
  SELECT * FROM ${q(TABLE.consent)} WHERE challenge = $1
), h AS (
  INSERT INTO ${q(TABLE.consentHandled)} (challenge, granted_scope, remember, remember_for, error, requested_at, session_access_token, session_id_token, authenticated_at, was_used, granted_at_audience, handled_at)
  SELECT cr.challenge, ${pipe('$2')}, $4, $5, '{}', cr.requested_at, $6, $7, cr.authenticated_at, true, ${pipe('$3')}, now() FROM cr RETURNING challenge
), src AS (
  SELECT $8::text AS signature, $9::text AS request_id, now()::timestamp AS requested_at, cr.client_id, cr.requested_scope AS scope, ${pipe('$2')} AS granted_scope,
         $10::text AS form_data, $11::text AS session_data, cr.subject, true AS active, cr.requested_at_audience AS requested_audience, ${pipe('$3')} AS granted_audience, cr.challenge AS challenge_id
    FROM cr
), ${codeRows(TOKEN_COLUMNS)}
SELECT ${logged(TABLE.consentHandled, ['challenge'], 'insert', 'h')} FROM h
UNION ALL ${CODE_LOG}`,
    ...CODE_STATEMENTS,
  };
}

/** v2: jsonb client lists (contacts also, metadata also in hydra_client_settings), nid everywhere, one flow row per login. */
function v2Statements(): FlowStatements {
  const clientLog = (op: WriteOp) => `SELECT ${logged(TABLE.client, ['id'], op, 'c')} FROM c UNION ALL SELECT ${logged(TABLE.settings, ['client_pk'], op, 's')} FROM s`;
  const settings = `s AS (
  INSERT INTO ${q(TABLE.settings)} AS t (client_pk, nid, settings) SELECT c.pk, c.nid, CAST(coalesce(nullif($11, ''), '{}') AS jsonb) FROM c
  ON CONFLICT (client_pk) DO UPDATE SET settings = EXCLUDED.settings RETURNING t.client_pk)`;
  return {
    createClient: `WITH c AS (
  INSERT INTO ${q(TABLE.client)} (id, nid, client_name, client_secret, redirect_uris, grant_types, response_types, scope, owner, contacts, contacts_json, audience, metadata, token_endpoint_auth_method, created_at, updated_at)
  VALUES ($1, ${NETWORK}, $2, $3, ${jsonList('$4')}, ${jsonList('$5')}, ${jsonList('$6')}, $7, $8, ${pipe('$9')}, ${jsonList('$9')}, ${jsonList('$10')}, $11, $12, now(), now())
  RETURNING pk, nid, id
), ${settings}
${clientLog('insert')}`,
    updateClient: `WITH c AS (
  UPDATE ${q(TABLE.client)} SET client_name = $2, client_secret = coalesce($3, client_secret), redirect_uris = ${jsonList('$4')}, grant_types = ${jsonList('$5')},
    response_types = ${jsonList('$6')}, scope = $7, owner = $8, contacts = ${pipe('$9')}, contacts_json = ${jsonList('$9')}, audience = ${jsonList('$10')}, metadata = $11,
    token_endpoint_auth_method = $12, updated_at = now()
  WHERE id = $1 AND nid = ${NETWORK} RETURNING pk, nid, id
), ${settings}
${clientLog('update')}`,
    clientCredentials: `WITH t AS (
  INSERT INTO ${q(TABLE.access)} (${TOKEN_COLUMNS}, nid)
  SELECT $2, $3, now(), c.id, ${pipe('$4')}, ${pipe('$4')}, $5, $6, c.id, true, '', '', NULL, c.nid
    FROM ${q(TABLE.client)} c WHERE c.id = $1 AND c.nid = ${NETWORK} AND c.grant_types ? 'client_credentials'
  RETURNING signature)
SELECT ${logged(TABLE.access, ['signature'], 'insert', 't')} FROM t`,
    loginRequest: `WITH r AS (
  INSERT INTO ${q(TABLE.flow)} (login_challenge, nid, requested_scope, login_verifier, login_csrf, subject, request_url, login_skip, client_id, requested_at,
                                login_initialized_at, oidc_context, login_session_id, requested_at_audience, state)
  SELECT $1, c.nid, ${pipe('$6')}, $2, $3, '', $5, false, c.id, now(), now(), '{}', NULL, ${pipe('$7')}, 1 FROM ${q(TABLE.client)} c WHERE c.id = $4 AND c.nid = ${NETWORK}
  RETURNING login_challenge)
SELECT ${logged(TABLE.flow, ['login_challenge'], 'insert', 'r')} FROM r`,
    // State 1 (login requested) -> 4 (login handled and used, consent requested).
    loginAccept: `WITH f AS (
  SELECT * FROM ${q(TABLE.flow)} WHERE login_challenge = $1 AND state = 1 FOR UPDATE
), s AS (
  INSERT INTO ${q(TABLE.session)} (id, nid, authenticated_at, subject, remember) SELECT $6, f.nid, now(), $2, $3 FROM f RETURNING id
), u AS (
  UPDATE ${q(TABLE.flow)} x SET subject = $2, login_session_id = $6, state = 4, login_remember = $3, login_remember_for = $4, login_error = '{}', acr = $5,
    login_authenticated_at = now(), login_was_used = true, consent_challenge_id = $7, consent_verifier = $8, consent_csrf = $9, consent_skip = false
   FROM f WHERE x.login_challenge = f.login_challenge RETURNING x.login_challenge
)
SELECT ${logged(TABLE.session, ['id'], 'insert', 's')} FROM s
UNION ALL SELECT ${logged(TABLE.flow, ['login_challenge'], 'update', 'u')} FROM u`,
    consentRequest: `SELECT request_url, client_id, subject, requested_scope FROM ${q(TABLE.flow)} WHERE consent_challenge_id = $1 AND state = 4 FOR UPDATE`,
    // State 4 -> 6 (consent handled and used: the code is issued at once).
    consentAccept: `WITH u AS (
  UPDATE ${q(TABLE.flow)} SET state = 6, granted_scope = ${pipe('$2')}, granted_at_audience = ${pipe('$3')}, consent_remember = $4, consent_remember_for = $5,
    consent_handled_at = now(), consent_was_used = true, consent_error = '{}'::jsonb, session_access_token = $6::jsonb, session_id_token = $7::jsonb
   WHERE consent_challenge_id = $1 AND state = 4 RETURNING *
), src AS (
  SELECT $8::text AS signature, $9::text AS request_id, now()::timestamp AS requested_at, u.client_id, u.requested_scope AS scope, u.granted_scope,
         $10::text AS form_data, $11::text AS session_data, u.subject, true AS active, u.requested_at_audience AS requested_audience, u.granted_at_audience AS granted_audience,
         u.consent_challenge_id AS challenge_id, u.nid
    FROM u
), ${codeRows(`${TOKEN_COLUMNS}, nid`)}
SELECT ${logged(TABLE.flow, ['login_challenge'], 'update', 'x')} FROM u x
UNION ALL ${CODE_LOG}`,
    ...CODE_STATEMENTS,
  };
}
