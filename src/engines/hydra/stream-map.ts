// Hydra 1.x -> 2.x: green's change log (blue's v1 rows) mapped into green's v2 tables (issue G, item 2),
// as a StreamMapping for src/stream/apply-changes.ts. Every statement reads the batch from
// `pg_temp.bluegreen_batch` (whole blue transactions, in (lsn, seq) order); they run in one green
// transaction with the mapped mark, in this order.
//
// Semantics:
//   * Last change wins: per table and primary key, only the batch's LAST change (by lsn, seq) is
//     applied: a delete DELETEs the v2 row by key, anything else UPSERTs (INSERT ... ON CONFLICT (pk)
//     DO UPDATE) the row. The upserted row merges, column by column, the newest value the batch holds
//     for the key; a column the batch never sent (TOASTed and unchanged) keeps green's current value.
//   * 1:1 tables (hydra_client, hydra_jwk, hydra_oauth2_authentication_session, hydra_oauth2_access,
//     hydra_oauth2_refresh; the fixture has no code/oidc/pkce/logout/obfuscated tables) convert as the
//     fixture migrations do: nid = the network the nid backfill assigns (SELECT id FROM networks LIMIT
//     1; an existing row keeps its own), client lists (redirect_uris, grant_types, response_types,
//     audience, and contacts into contacts_json) become jsonb arrays whose elements are exactly the
//     pipe-split text (what the migration's string pasting gives for clean values, and what cleanup's
//     escaping makes it give for the others), metadata is copied into hydra_client_settings as jsonb,
//     columns v2 added keep their defaults, columns v2 lacks are dropped.
//   * Flow merge: the four v1 login/consent tables are kept, as their latest known rows, in staging
//     tables bluegreen_green.v1_<table> (seeded from green's flow row the first time a login is
//     touched, since the copy brought the flows and not the v1 rows). For every login challenge the
//     batch touches (a login row's challenge; a consent row's login_challenge, in the batch, in staging
//     or through green's flow by consent_challenge_id) the flow row is recomputed from the staging rows
//     with 20211011000007000000_flow_fill's SELECT and the state the engine's post-migration repair
//     gives ('{}' read as no error); a login whose request is gone loses its flow row (its tokens are
//     detached, challenge_id NULL, and recorded, as cleanup does for a consent without login).
//   * Order: token deletes; client, settings, key and session upserts; flows; token upserts; then
//     session, key, settings and client deletes (children before parents both ways).
//   * Nothing is dropped silently: a change the v2 constraints would refuse (a token whose client or
//     flow is missing on green, a flow whose login was never handled, two consents for one login,
//     text that is not JSON where v2 has jsonb, a truncate, a key change, a TOASTed column with no row
//     to keep it from) is recorded in bluegreen_green.unmapped with its reason and not applied.

import { ident, literal, qualified } from '../../db/sql.ts';
import type { MappingStatement, StreamMapping } from '../types.ts';

const STAGE = 'bluegreen_green';
const NETWORK = '(SELECT n.id FROM public.networks n LIMIT 1)';

/** Exactly the pipe-split elements as a jsonb array; '' and NULL give [] as in the migration. */
const pipeList = (text: string): string => `(CASE WHEN ${text} IS NULL OR ${text} = '' THEN '[]'::jsonb ELSE to_jsonb(string_to_array(${text}, '|')) END)`;

/** A v1 table with its primary key and columns (as in sql/fixtures/hydra-v1/schema.sql). */
interface V1Table {
  /** Table name in schema public. */
  name: string;
  /** Primary key columns. */
  key: readonly string[];
  /** Every column, with its v1 type (the staging tables use the types). */
  columns: Readonly<Record<string, string>>;
}

/** `name type, ...` as a column map. */
const cols = (spec: string): Record<string, string> => Object.fromEntries(spec.split(',').map((c) => c.trim().split(' ') as [string, string]));
const CLIENT: V1Table = {
  name: 'hydra_client',
  key: ['pk'],
  columns: cols(
    'pk integer, id varchar(255), client_name text, client_secret text, redirect_uris text, grant_types text, response_types text, scope text, owner text, ' +
      'policy_uri text, tos_uri text, client_uri text, logo_uri text, contacts text, client_secret_expires_at integer, sector_identifier_uri text, jwks text, ' +
      'jwks_uri text, token_endpoint_auth_method varchar(25), audience text, metadata text, created_at timestamp, updated_at timestamp',
  ),
};
const JWK: V1Table = { name: 'hydra_jwk', key: ['pk'], columns: cols('pk integer, sid varchar(255), kid varchar(255), version integer, keydata text, created_at timestamp') };
const SESSION: V1Table = { name: 'hydra_oauth2_authentication_session', key: ['id'], columns: cols('id varchar(40), authenticated_at timestamp, subject varchar(255), remember boolean') };
const TOKEN_COLUMNS = cols('signature varchar(255), request_id varchar(40), requested_at timestamp, client_id varchar(255), scope text, granted_scope text, form_data text, session_data text, subject varchar(255), active boolean, requested_audience text, granted_audience text, challenge_id varchar(40)');
const ACCESS: V1Table = { name: 'hydra_oauth2_access', key: ['signature'], columns: TOKEN_COLUMNS };
const REFRESH: V1Table = { name: 'hydra_oauth2_refresh', key: ['signature'], columns: TOKEN_COLUMNS };
const LOGIN: V1Table = {
  name: 'hydra_oauth2_authentication_request',
  key: ['challenge'],
  columns: cols('challenge varchar(40), requested_scope text, verifier varchar(40), csrf varchar(40), subject varchar(255), request_url text, skip boolean, client_id varchar(255), requested_at timestamp, authenticated_at timestamp, oidc_context text, login_session_id varchar(40), requested_at_audience text'),
};
const LOGIN_HANDLED: V1Table = {
  name: 'hydra_oauth2_authentication_request_handled',
  key: ['challenge'],
  columns: cols('challenge varchar(40), subject varchar(255), remember boolean, remember_for integer, error text, acr text, requested_at timestamp, authenticated_at timestamp, was_used boolean, forced_subject_identifier varchar(255), context text'),
};
const CONSENT: V1Table = {
  name: 'hydra_oauth2_consent_request',
  key: ['challenge'],
  columns: cols('challenge varchar(40), verifier varchar(40), client_id varchar(255), subject varchar(255), request_url text, skip boolean, requested_scope text, csrf varchar(40), authenticated_at timestamp, requested_at timestamp, oidc_context text, forced_subject_identifier varchar(255), login_session_id varchar(40), login_challenge varchar(40), requested_at_audience text, acr text, context text'),
};
const CONSENT_HANDLED: V1Table = {
  name: 'hydra_oauth2_consent_request_handled',
  key: ['challenge'],
  columns: cols('challenge varchar(40), granted_scope text, remember boolean, remember_for integer, error text, requested_at timestamp, session_access_token text, session_id_token text, authenticated_at timestamp, was_used boolean, granted_at_audience text, handled_at timestamp'),
};
const FLOW_SOURCES = [LOGIN, LOGIN_HANDLED, CONSENT, CONSENT_HANDLED] as const;
const ALL = [CLIENT, JWK, SESSION, ACCESS, REFRESH, ...FLOW_SOURCES] as const;

const rel = (t: V1Table): string => literal(`public.${t.name}`);
const v2 = (t: V1Table): string => qualified('public', t.name);
const staged = (t: V1Table): string => qualified(STAGE, `v1_${t.name}`);
const FLOW = qualified('public', 'hydra_oauth2_flow');

/** A column computed for the v2 row: from the v1 columns `from` (kept from green when none was sent). */
interface Computed {
  /** The v2 column. */
  column: string;
  /** SQL over `l.row` (the merged jsonb row) and `t0` (green's current row, may be NULL). */
  expr: string;
  /** The v1 columns it reads; when the batch sent none of them, green's value stays. */
  from: readonly string[];
}

/** How one v1 table lands in one table on green. */
interface Target {
  /** The v1 table. */
  v1: V1Table;
  /** The table on green (`schema.table`, quoted). */
  table: string;
  /** v1 columns copied unchanged (typed through the target's row type). */
  copied: readonly string[];
  /** Columns computed. */
  computed: readonly Computed[];
}

/** v1 column -> v2 value: `CASE` keeps green's value for a column the batch did not send. */
function valueOf(column: string, expr: string, from: readonly string[]): string {
  const sent = from.map((c) => `l.row ? ${literal(c)}`).join(' OR ');
  return `CASE WHEN ${sent} THEN ${expr} ELSE t0.${ident(column)} END`;
}

const keyJoin = (t: V1Table, a: string, b: string): string => t.key.map((k) => `${a}.${ident(k)} = ${b}.${ident(k)}`).join(' AND ');
/** Quoted column names, optionally qualified. */
const list = (columns: readonly string[], alias = ''): string => columns.map((c) => `${alias}${ident(c)}`).join(', ');
/** `c = EXCLUDED.c, ...` and the test that any of them changes. */
const setExcluded = (columns: readonly string[]): string =>
  `${columns.map((c) => `${ident(c)} = EXCLUDED.${ident(c)}`).join(', ')}\n WHERE (${list(columns, 't.')}) IS DISTINCT FROM (${list(columns, 'EXCLUDED.')})`;

/** Marks the latest changes of `t` that must not be applied (`reason` is a CASE yielding text or NULL). */
function skipStatement(t: Target, reason: string): MappingStatement {
  return {
    id: `check ${t.v1.name}`,
    sql: `UPDATE pg_temp.bluegreen_latest l SET skip = x.reason
  FROM (SELECT l.relation, l.k, ${reason} AS reason
          FROM pg_temp.bluegreen_latest l
          CROSS JOIN LATERAL jsonb_populate_record(NULL::${t.table}, l.src) p
          LEFT JOIN ${t.table} t0 ON ${keyJoin(t.v1, 't0', 'p')}
         WHERE l.relation = ${rel(t.v1)} AND l.op <> 'D' AND l.skip IS NULL) x
 WHERE l.relation = x.relation AND l.k = x.k AND x.reason IS NOT NULL`,
  };
}

/** The reason a row cannot be inserted for want of TOASTed values green does not have. */
function toastReason(t: Target): string {
  const all = Object.keys(t.v1.columns).map(literal).join(', ');
  return `WHEN t0 IS NULL AND NOT (l.row ?& ARRAY[${all}]) THEN 'columns not sent (TOAST unchanged) and no row on green to keep them from'`;
}

/** UPSERT of the latest non-delete changes of `t` that were not skipped. */
function upsertStatement(t: Target): MappingStatement {
  const columns = [...t.copied, ...t.computed.map((c) => c.column)];
  const values = [...t.copied.map((c) => valueOf(c, `p.${ident(c)}`, [c])), ...t.computed.map((c) => (c.from.length ? valueOf(c.column, c.expr, c.from) : c.expr))];
  const settable = columns.filter((c) => !t.v1.key.includes(c));
  return {
    id: `upsert ${t.v1.name}`,
    sql: `INSERT INTO ${t.table} AS t (${list(columns)})
SELECT ${values.join(',\n       ')}
  FROM pg_temp.bluegreen_latest l
  CROSS JOIN LATERAL jsonb_populate_record(NULL::${t.table}, l.row) p
  LEFT JOIN ${t.table} t0 ON ${keyJoin(t.v1, 't0', 'p')}
 WHERE l.relation = ${rel(t.v1)} AND l.op <> 'D' AND l.skip IS NULL
ON CONFLICT (${list(t.v1.key)}) DO UPDATE SET ${setExcluded(settable)}`,
  };
}

/** DELETE of the rows whose latest change is a delete. */
function deleteStatement(t: Target): MappingStatement {
  return {
    id: `delete ${t.v1.name}`,
    sql: `DELETE FROM ${t.table} t
 USING pg_temp.bluegreen_latest l CROSS JOIN LATERAL jsonb_populate_record(NULL::${t.table}, l.src) p
 WHERE l.relation = ${rel(t.v1)} AND l.op = 'D' AND ${keyJoin(t.v1, 't', 'p')}`,
  };
}

const NID: Computed = { column: 'nid', expr: `coalesce(t0.nid, ${NETWORK})`, from: [] };
const listColumn = (column: string, from = column): Computed => ({ column, expr: pipeList(`(l.row ->> ${literal(from)})`), from: [from] });
const CLIENT_LIST_COLUMNS = ['redirect_uris', 'grant_types', 'response_types', 'audience'];
const copiedOf = (t: V1Table, except: readonly string[] = []): string[] => Object.keys(t.columns).filter((c) => !except.includes(c));

const CLIENT_T: Target = { v1: CLIENT, table: v2(CLIENT), copied: copiedOf(CLIENT, CLIENT_LIST_COLUMNS), computed: [...CLIENT_LIST_COLUMNS.map((c) => listColumn(c)), listColumn('contacts_json', 'contacts'), NID] };
const JWK_T: Target = { v1: JWK, table: v2(JWK), copied: copiedOf(JWK), computed: [NID] };
const SESSION_T: Target = { v1: SESSION, table: v2(SESSION), copied: copiedOf(SESSION), computed: [NID] };
const ACCESS_T: Target = { v1: ACCESS, table: v2(ACCESS), copied: copiedOf(ACCESS), computed: [NID] };
const REFRESH_T: Target = { v1: REFRESH, table: v2(REFRESH), copied: copiedOf(REFRESH), computed: [NID] };
const STAGED_T = FLOW_SOURCES.map((t): Target => ({ v1: t, table: staged(t), copied: copiedOf(t), computed: [] }));

/** The key of a change as text: the primary key values (of the new row, or the old key of a delete). */
function keyText(src: string): string {
  const arms = ALL.map((t) => `WHEN ${rel(t)} THEN jsonb_build_array(${t.key.map((k) => `${src} -> ${literal(k)}`).join(', ')})::text`);
  return `CASE b.relation ${arms.join(' ')} END`;
}
const RELATIONS = ALL.map(rel).join(', ');

/** The batch's last change per table and key, with the merged row (newest value per column). */
const LATEST: MappingStatement = {
  id: 'latest changes',
  sql: `CREATE TEMP TABLE bluegreen_latest ON COMMIT DROP AS
WITH c AS (
  SELECT b.lsn, b.seq, b.relation, b.op, b.row, coalesce(b.row, b.key) AS src, ${keyText('coalesce(b.row, b.key)')} AS k
    FROM pg_temp.bluegreen_batch b
   WHERE b.op IN ('I', 'U', 'D') AND b.relation IN (${RELATIONS})
)
SELECT DISTINCT ON (c.relation, c.k) c.relation, c.k, c.op, c.lsn, c.seq, c.src,
       CASE WHEN c.op = 'D' THEN NULL ELSE
         (SELECT jsonb_object_agg(m.col, m.val)
            FROM (SELECT DISTINCT ON (e.key) e.key AS col, e.value AS val
                    FROM c c2 CROSS JOIN LATERAL jsonb_each(c2.row) e
                   WHERE c2.relation = c.relation AND c2.k = c.k AND c2.op <> 'D'
                   ORDER BY e.key, c2.lsn DESC, c2.seq DESC) m)
       END AS row,
       NULL::text AS skip
  FROM c
 ORDER BY c.relation, c.k, c.lsn DESC, c.seq DESC`,
};

/** Changes no statement applies: truncates, key changes, tables without a mapping. */
const UNMAPPABLE: MappingStatement = {
  id: 'unmappable changes',
  sql: `INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row)
SELECT b.lsn, b.seq, b.relation, coalesce(b.key, b.row, '{}'::jsonb)::text,
       CASE WHEN b.op = 'T' THEN 'TRUNCATE on blue: not applied to green (would empty the v2 table and its children)'
            WHEN b.relation NOT IN (${RELATIONS}) THEN 'no mapping for this table'
            ELSE 'primary key changed: the row under the old key stays on green' END,
       coalesce(b.row, b.key)
  FROM pg_temp.bluegreen_batch b
 WHERE b.op = 'T' OR b.relation NOT IN (${RELATIONS})
    OR (b.op = 'U' AND b.key IS NOT NULL AND ${keyText('b.key')} <> ${keyText('b.row')})
ON CONFLICT DO NOTHING`,
};

/** Everything marked skipped, recorded. */
const RECORD_SKIPPED: MappingStatement = {
  id: 'record unmapped',
  sql: `INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row)
SELECT l.lsn, l.seq, l.relation, l.k, l.skip, l.row FROM pg_temp.bluegreen_latest l WHERE l.skip IS NOT NULL
ON CONFLICT DO NOTHING`,
};

const CLIENT_EXISTS = (client: string): string => `EXISTS (SELECT 1 FROM public.hydra_client c WHERE c.id = ${client} AND c.nid = coalesce(t0.nid, ${NETWORK}))`;
/** Tokens: the client and the flow (consent_challenge_id) they reference must be on green. */
const tokenCheck = (t: Target): MappingStatement =>
  skipStatement(
    t,
    `CASE ${toastReason(t)}
          WHEN NOT ${CLIENT_EXISTS('p.client_id')} THEN 'the token''s client is not on green (v2 foreign key (client_id, nid))'
          WHEN p.challenge_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ${FLOW} f WHERE f.consent_challenge_id = p.challenge_id)
            THEN 'the token''s consent has no flow row on green (v2 foreign key challenge_id -> hydra_oauth2_flow)' END`,
  );
const plainCheck = (t: Target): MappingStatement => skipStatement(t, `CASE ${toastReason(t)} END`);

/** hydra_client_settings follows the client's metadata (20211011000014000000_client_settings_table). */
const SETTINGS_UPSERT: MappingStatement = {
  id: 'upsert hydra_client_settings',
  sql: `WITH src AS (
  SELECT c.pk, c.nid, c.metadata FROM pg_temp.bluegreen_latest l
    JOIN public.hydra_client c ON c.pk = (l.src ->> 'pk')::int
   WHERE l.relation = ${rel(CLIENT)} AND l.op <> 'D' AND l.skip IS NULL AND l.row ? 'metadata'
), bad AS (
  INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row)
  SELECT l.lsn, l.seq, 'public.hydra_client_settings', l.k, 'metadata is not JSON: hydra_client_settings.settings is jsonb', l.row
    FROM pg_temp.bluegreen_latest l JOIN src ON src.pk = (l.src ->> 'pk')::int
   WHERE l.relation = ${rel(CLIENT)} AND NOT ${STAGE}.is_json(coalesce(nullif(src.metadata, ''), '{}'))
  ON CONFLICT DO NOTHING
)
INSERT INTO public.hydra_client_settings AS s (client_pk, nid, settings)
SELECT src.pk, src.nid, CAST(coalesce(nullif(src.metadata, ''), '{}') AS jsonb) FROM src
 WHERE ${STAGE}.is_json(coalesce(nullif(src.metadata, ''), '{}'))
ON CONFLICT (client_pk) DO UPDATE SET nid = EXCLUDED.nid, settings = EXCLUDED.settings
 WHERE (s.nid, s.settings) IS DISTINCT FROM (EXCLUDED.nid, EXCLUDED.settings)`,
};
const SETTINGS_DELETE: MappingStatement = {
  id: 'delete hydra_client_settings',
  sql: `DELETE FROM public.hydra_client_settings s USING pg_temp.bluegreen_latest l
 WHERE l.relation = ${rel(CLIENT)} AND l.op = 'D' AND s.client_pk = (l.src ->> 'pk')::int`,
};

// ---- The flow merge -------------------------------------------------------------------------------

/** Login challenges the batch touches, directly or through a consent challenge. */
const FLOW_LOGINS: MappingStatement = {
  id: 'affected logins',
  sql: `CREATE TEMP TABLE bluegreen_flow_logins ON COMMIT DROP AS
WITH consent AS (
  SELECT DISTINCT l.src ->> 'challenge' AS challenge FROM pg_temp.bluegreen_latest l WHERE l.relation IN (${rel(CONSENT)}, ${rel(CONSENT_HANDLED)})
), logins AS (
  SELECT l.src ->> 'challenge' AS login_challenge FROM pg_temp.bluegreen_latest l WHERE l.relation IN (${rel(LOGIN)}, ${rel(LOGIN_HANDLED)})
  UNION SELECT b.row ->> 'login_challenge' FROM pg_temp.bluegreen_batch b WHERE b.relation = ${rel(CONSENT)} AND b.row IS NOT NULL
  UNION SELECT s.login_challenge FROM ${staged(CONSENT)} s JOIN consent USING (challenge)
  UNION SELECT f.login_challenge FROM ${FLOW} f JOIN consent c ON c.challenge = f.consent_challenge_id
)
SELECT DISTINCT login_challenge FROM logins WHERE login_challenge IS NOT NULL`,
};

/** First touch of a login the copy brought: its v1 rows, as far as they exist, rebuilt from its flow row. */
const FLOW_SEED: MappingStatement = {
  id: 'seed staging from flows',
  sql: `WITH seed AS (
  SELECT f.* FROM ${FLOW} f JOIN pg_temp.bluegreen_flow_logins a USING (login_challenge)
   WHERE NOT EXISTS (SELECT 1 FROM ${staged(LOGIN)} s WHERE s.challenge = f.login_challenge)
), ar AS (
  INSERT INTO ${staged(LOGIN)} (challenge, requested_scope, verifier, csrf, subject, request_url, skip, client_id, requested_at, oidc_context, login_session_id, requested_at_audience)
  SELECT login_challenge, requested_scope, login_verifier, login_csrf, subject, request_url, login_skip, client_id, requested_at, oidc_context, login_session_id, requested_at_audience FROM seed
  ON CONFLICT DO NOTHING RETURNING 1
), lh AS (
  INSERT INTO ${staged(LOGIN_HANDLED)} (challenge, subject, remember, remember_for, error, acr, requested_at, authenticated_at, was_used, forced_subject_identifier, context)
  SELECT login_challenge, subject, login_remember, login_remember_for, login_error, acr, requested_at, login_authenticated_at, login_was_used, forced_subject_identifier, context FROM seed
   WHERE state <> 1
  ON CONFLICT DO NOTHING RETURNING 1
), cr AS (
  INSERT INTO ${staged(CONSENT)} (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf, requested_at, oidc_context, forced_subject_identifier, login_session_id, login_challenge, requested_at_audience, acr, context)
  SELECT consent_challenge_id, consent_verifier, client_id, subject, request_url, consent_skip, requested_scope, consent_csrf, requested_at, oidc_context, forced_subject_identifier, login_session_id, login_challenge, requested_at_audience, acr, context FROM seed
   WHERE consent_challenge_id IS NOT NULL
  ON CONFLICT DO NOTHING RETURNING 1
), ch AS (
  INSERT INTO ${staged(CONSENT_HANDLED)} (challenge, granted_scope, remember, remember_for, error, requested_at, session_access_token, session_id_token, was_used, granted_at_audience, handled_at)
  SELECT consent_challenge_id, granted_scope, consent_remember, consent_remember_for, consent_error::text, requested_at, session_access_token::text, session_id_token::text, consent_was_used, granted_at_audience, consent_handled_at FROM seed
   WHERE consent_challenge_id IS NOT NULL AND consent_error IS NOT NULL
  ON CONFLICT DO NOTHING RETURNING 1
)
SELECT 1 FROM ar UNION ALL SELECT 1 FROM lh UNION ALL SELECT 1 FROM cr UNION ALL SELECT 1 FROM ch`,
};

/** '{}' and '' are Hydra 1.11's "no error" (as src/engines/hydra/repairs.ts reads them). */
const REAL_ERROR = (col: string): string => `(${col} IS NOT NULL AND ${col}::text NOT IN ('{}', ''))`;

/**
 * The flow rows of the affected logins, from the staging rows: flow_fill's SELECT, with the state the
 * post-migration repair leaves ('{}' no error). `rank` > 1: another consent of the same login (v2
 * holds one); `problem`: why the row cannot be written.
 */
const FLOW_BUILD: MappingStatement = {
  id: 'rebuild flows',
  sql: `CREATE TEMP TABLE bluegreen_flow_new ON COMMIT DROP AS
WITH j AS (
  SELECT ar.challenge AS login_challenge, ${NETWORK} AS nid, ar.requested_scope, ar.verifier AS login_verifier, ar.csrf AS login_csrf, ar.subject,
         ar.request_url, ar.skip AS login_skip, ar.client_id, ar.requested_at, ar.requested_at AS login_initialized_at, ar.oidc_context,
         ar.login_session_id, ar.requested_at_audience,
         lh.challenge AS lh_challenge, coalesce(lh.remember, false) AS login_remember, coalesce(lh.remember_for, 0) AS login_remember_for,
         lh.error AS login_error, coalesce(lh.acr, '') AS acr, lh.authenticated_at AS login_authenticated_at,
         coalesce(lh.was_used, false) AS login_was_used, coalesce(lh.forced_subject_identifier, '') AS forced_subject_identifier,
         coalesce(lh.context, '{}') AS context,
         cr.challenge AS consent_challenge_id, coalesce(cr.skip, false) AS consent_skip, cr.verifier AS consent_verifier, cr.csrf AS consent_csrf,
         ch.granted_scope, ch.granted_at_audience, coalesce(ch.remember, false) AS consent_remember, ch.remember_for AS consent_remember_for,
         ch.handled_at AS consent_handled_at, coalesce(ch.was_used, false) AS consent_was_used,
         ch.challenge AS ch_challenge, ch.error AS ch_error, ch.session_id_token AS ch_id_token, ch.session_access_token AS ch_access_token,
         row_number() OVER (PARTITION BY ar.challenge ORDER BY (ch.challenge IS NOT NULL) DESC, ch.remember DESC NULLS LAST, cr.requested_at DESC NULLS LAST, cr.challenge) AS rank
    FROM ${staged(LOGIN)} ar
    JOIN pg_temp.bluegreen_flow_logins a ON a.login_challenge = ar.challenge
    LEFT JOIN ${staged(LOGIN_HANDLED)} lh ON lh.challenge = ar.challenge
    LEFT JOIN ${staged(CONSENT)} cr ON cr.login_challenge = ar.challenge
    LEFT JOIN ${staged(CONSENT_HANDLED)} ch ON ch.challenge = cr.challenge
), typed AS (
  SELECT j.*,
         CASE WHEN ${STAGE}.is_json(j.ch_error) THEN j.ch_error::jsonb END AS consent_error,
         CASE WHEN ${STAGE}.is_json(j.ch_id_token) THEN j.ch_id_token::jsonb END AS session_id_token,
         CASE WHEN ${STAGE}.is_json(j.ch_access_token) THEN j.ch_access_token::jsonb END AS session_access_token
    FROM j
)
SELECT t.*,
       CASE WHEN t.lh_challenge IS NULL AND t.consent_challenge_id IS NOT NULL THEN NULL
            WHEN t.lh_challenge IS NULL THEN 1
            WHEN ${REAL_ERROR('t.login_error')} THEN 128
            WHEN ${REAL_ERROR('t.consent_error')} THEN 129
            WHEN t.consent_error IS NOT NULL AND t.consent_was_used THEN 6
            WHEN t.consent_error IS NOT NULL THEN 5
            WHEN t.consent_challenge_id IS NOT NULL THEN 4
            WHEN t.login_was_used THEN 3
            ELSE 2 END AS state,
       CASE WHEN t.rank > 1 THEN 'another consent request of the same login is kept (v2 holds one consent per login)'
            WHEN t.lh_challenge IS NULL AND t.consent_challenge_id IS NOT NULL THEN 'consent request for a login that was never handled (v2 state would be NULL)'
            WHEN t.ch_challenge IS NOT NULL AND (NOT ${STAGE}.is_json(t.ch_error) OR NOT ${STAGE}.is_json(t.ch_id_token) OR NOT ${STAGE}.is_json(t.ch_access_token))
              THEN 'handled consent error or session text is not JSON (v2 jsonb)'
            WHEN NOT EXISTS (SELECT 1 FROM public.hydra_client c WHERE c.id = t.client_id AND c.nid = t.nid) THEN 'the flow''s client is not on green'
            WHEN t.login_session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.hydra_oauth2_authentication_session s WHERE s.id = t.login_session_id)
              THEN 'the flow''s login session is not on green'
       END AS problem
  FROM typed t`,
};

const FLOW_COLUMNS = [
  'login_challenge', 'nid', 'requested_scope', 'login_verifier', 'login_csrf', 'subject', 'request_url', 'login_skip', 'client_id', 'requested_at',
  'login_initialized_at', 'oidc_context', 'login_session_id', 'requested_at_audience', 'state', 'login_remember', 'login_remember_for', 'login_error',
  'acr', 'login_authenticated_at', 'login_was_used', 'forced_subject_identifier', 'context', 'consent_challenge_id', 'consent_skip', 'consent_verifier',
  'consent_csrf', 'granted_scope', 'granted_at_audience', 'consent_remember', 'consent_remember_for', 'consent_handled_at', 'consent_was_used',
  'consent_error', 'session_id_token', 'session_access_token',
] as const;
const FLOW_SET = FLOW_COLUMNS.filter((c) => c !== 'login_challenge');

/** The batch's last change of any source row of the login: where an unmapped flow is filed. */
const FLOW_PROBLEMS: MappingStatement = {
  id: 'unmapped flows',
  sql: `INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row)
SELECT (SELECT max(b.lsn) FROM pg_temp.bluegreen_batch b), 0, 'public.hydra_oauth2_flow',
       jsonb_build_array(n.login_challenge, n.consent_challenge_id)::text, n.problem,
       to_jsonb(n) - 'rank' - 'problem'
  FROM pg_temp.bluegreen_flow_new n WHERE n.problem IS NOT NULL
UNION ALL
SELECT l.lsn, l.seq, l.relation, l.k, 'consent request without login_challenge: v2''s flow merge has no row for it', l.row
  FROM pg_temp.bluegreen_latest l WHERE l.relation = ${rel(CONSENT)} AND l.op <> 'D' AND l.row ->> 'login_challenge' IS NULL
ON CONFLICT DO NOTHING`,
};

/** Tokens of a flow that is going away: kept with challenge_id NULL (as cleanup detaches them), recorded. */
const flowGone = `SELECT f.consent_challenge_id FROM ${FLOW} f JOIN pg_temp.bluegreen_flow_logins a USING (login_challenge)
   WHERE f.consent_challenge_id IS NOT NULL
     AND f.consent_challenge_id IS DISTINCT FROM (SELECT n.consent_challenge_id FROM pg_temp.bluegreen_flow_new n WHERE n.login_challenge = f.login_challenge AND n.problem IS NULL)
     AND NOT EXISTS (SELECT 1 FROM pg_temp.bluegreen_flow_new n WHERE n.login_challenge = f.login_challenge AND n.problem IS NOT NULL)`;
const detachTokens = (t: V1Table): MappingStatement => ({
  id: `detach ${t.name}`,
  sql: `WITH gone AS (${flowGone}), noted AS (
  INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row)
  SELECT (SELECT max(b.lsn) FROM pg_temp.bluegreen_batch b), 0, ${rel(t)}, jsonb_build_array(x.signature)::text,
         'its consent ' || x.challenge_id || ' left the flow table: kept with challenge_id NULL', to_jsonb(x)
    FROM ${v2(t)} x JOIN gone g ON g.consent_challenge_id = x.challenge_id
  ON CONFLICT DO NOTHING
)
UPDATE ${v2(t)} x SET challenge_id = NULL FROM gone g WHERE x.challenge_id = g.consent_challenge_id`,
});

/** Flow rows whose login request is gone, or whose consent moved, leave (their tokens were detached). */
const FLOW_DELETE: MappingStatement = {
  id: 'delete flows',
  sql: `DELETE FROM ${FLOW} f USING pg_temp.bluegreen_flow_logins a
 WHERE f.login_challenge = a.login_challenge
   AND NOT EXISTS (SELECT 1 FROM pg_temp.bluegreen_flow_new n WHERE n.login_challenge = f.login_challenge)`,
};

const FLOW_UPSERT: MappingStatement = {
  id: 'upsert flows',
  sql: `INSERT INTO ${FLOW} AS t (${list(FLOW_COLUMNS)})
SELECT ${list(FLOW_COLUMNS, 'n.')} FROM pg_temp.bluegreen_flow_new n WHERE n.problem IS NULL
ON CONFLICT (login_challenge) DO UPDATE SET ${setExcluded(FLOW_SET)}`,
};

/** The staging tables: the v1 columns and primary key, no other constraint (blue enforced them). */
const SETUP = FLOW_SOURCES.map(
  (t) => `CREATE TABLE IF NOT EXISTS ${staged(t)} (${Object.entries(t.columns).map(([c, type]) => `${ident(c)} ${type}`).join(', ')}, PRIMARY KEY (${list(t.key)}));`,
).join('\n') + `\nCREATE INDEX IF NOT EXISTS v1_consent_login_challenge_idx ON ${staged(CONSENT)} (login_challenge);`;

/** Hydra 1.x -> 2.x, for the change log (see the header for the semantics). */
export const HYDRA_STREAM_MAPPING: StreamMapping = {
  name: 'hydra v1 -> v2',
  setup: SETUP,
  statements: [
    LATEST,
    UNMAPPABLE,
    // Children's deletes first.
    deleteStatement(ACCESS_T),
    deleteStatement(REFRESH_T),
    // Parents' upserts.
    plainCheck(CLIENT_T),
    upsertStatement(CLIENT_T),
    SETTINGS_UPSERT,
    plainCheck(JWK_T),
    upsertStatement(JWK_T),
    plainCheck(SESSION_T),
    upsertStatement(SESSION_T),
    // The flow merge: staging rows, then the flows of the logins touched.
    FLOW_LOGINS,
    FLOW_SEED,
    ...STAGED_T.map(deleteStatement),
    ...STAGED_T.flatMap((t) => [plainCheck(t), upsertStatement(t)]),
    FLOW_BUILD,
    FLOW_PROBLEMS,
    detachTokens(ACCESS),
    detachTokens(REFRESH),
    FLOW_DELETE,
    FLOW_UPSERT,
    // Tokens after their client and flow.
    tokenCheck(ACCESS_T),
    upsertStatement(ACCESS_T),
    tokenCheck(REFRESH_T),
    upsertStatement(REFRESH_T),
    // Parents' deletes last.
    deleteStatement(SESSION_T),
    deleteStatement(JWK_T),
    SETTINGS_DELETE,
    deleteStatement(CLIENT_T),
    RECORD_SKIPPED,
  ],
};
