// The flow merge of the Hydra stream mapping: the four v1 login/consent tables are kept, as their
// latest known rows, in staging tables bluegreen_green.v1_<table> (seeded from green's flow row the
// first time a login is touched, since the copy brought the flows and not the v1 rows). For every
// login the batch touches, its flow row is rebuilt from the staging rows with
// 20211011000007000000_flow_fill's SELECT and the state the engine's post-migration repair gives
// ('{}' read as no error). What v2 refuses is held under cleanup's rule for it, with cleanup's
// tie-break for two consents of one login (src/engines/hydra/cleanup.ts).

import { ident, literal } from '../../../db/sql.ts';
import type { MappingStatement } from '../../types.ts';
import { columnType, CONSENT_WITHOUT_LOGIN, setExcluded } from './statements.ts';
import {
  CONSENT, CONSENT_HANDLED, FLOW, FLOW_SOURCES, list, LOGIN, LOGIN_HANDLED, NETWORK, rel, REWRITES, RUN_ID, source, STAGE, staged, tempTable, v2, type V1Table,
} from './tables.ts';

/** Every statement of the flow merge has work only in a batch with changes of the four login/consent tables. */
export const FLOW_READS: readonly string[] = FLOW_SOURCES.map(source);

/** The batch's newest LSN: where rows derived from several changes (a flow) are filed. */
const BATCH_LSN = '(SELECT max(b.lsn) FROM pg_temp.bluegreen_batch b)';

/** Login challenges the batch touches, directly or through a consent challenge. */
const FLOW_LOGINS_QUERY = `WITH consent AS (
  SELECT DISTINCT l.src ->> 'challenge' AS challenge FROM pg_temp.bluegreen_latest l WHERE l.relation IN (${rel(CONSENT)}, ${rel(CONSENT_HANDLED)})
), logins AS (
  SELECT l.src ->> 'challenge' AS login_challenge FROM pg_temp.bluegreen_latest l WHERE l.relation IN (${rel(LOGIN)}, ${rel(LOGIN_HANDLED)})
  UNION SELECT b.row ->> 'login_challenge' FROM pg_temp.bluegreen_batch b WHERE b.relation = ${rel(CONSENT)} AND b.row IS NOT NULL
  UNION SELECT s.login_challenge FROM ${staged(CONSENT)} s JOIN consent USING (challenge)
  UNION SELECT f.login_challenge FROM ${FLOW} f JOIN consent c ON c.challenge = f.consent_challenge_id
)
SELECT DISTINCT login_challenge FROM logins WHERE login_challenge IS NOT NULL`;
/** The affected logins into the session's pg_temp.bluegreen_flow_logins. */
export const FLOW_LOGINS: MappingStatement = { id: 'affected logins', reads: FLOW_READS, sql: `INSERT INTO pg_temp.bluegreen_flow_logins\n${FLOW_LOGINS_QUERY}` };

/** First touch of a login the copy brought: its v1 rows, as far as they exist, rebuilt from its flow row. */
export const FLOW_SEED: MappingStatement = {
  id: 'seed staging from flows',
  reads: FLOW_READS,
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
/** A handled consent that granted (cleanup's GRANTED: handled, error '{}' or none). */
const GRANTED = `(ch.challenge IS NOT NULL AND (ch.error IS NULL OR ch.error IN ('', '{}')))`;
/** An active access or refresh token of consent `c`, on green or in the batch (cleanup's "referenced by active tokens"). */
const ACTIVE_TOKENS = (c: string): string =>
  `(EXISTS (SELECT 1 FROM public.hydra_oauth2_access a WHERE a.challenge_id = ${c} AND a.active)
     OR EXISTS (SELECT 1 FROM public.hydra_oauth2_refresh r WHERE r.challenge_id = ${c} AND r.active)
     OR EXISTS (SELECT 1 FROM pg_temp.bluegreen_latest t WHERE t.relation IN ('public.hydra_oauth2_access', 'public.hydra_oauth2_refresh') AND t.op <> 'D'
                   AND t.row ->> 'challenge_id' = ${c} AND (t.row ->> 'active')::boolean))`;
const JSON_OR_EMPTY = (col: string): string => `CASE WHEN ${col} IS NULL THEN NULL WHEN ${STAGE}.is_json(${col}) THEN ${col}::jsonb ELSE '{}'::jsonb END`;

/** One refusal of the flow merge: cleanup's rule for it, and which v1 row cleanup would quarantine. */
interface FlowRefusal {
  /** Condition over the built row `t`. */
  when: string;
  /** Cleanup's rule name. */
  rule: string;
  /** Why. */
  reason: string;
  /** The v1 table whose row is held (`t.<alias>_v1` holds it). */
  held: V1Table;
}
const SESSION_FK = 'hydra_oauth2_authentication_request_login_session_id_fk';
const CLIENT_FK = 'hydra_oauth2_authentication_request_client_id_fk';
/** In cleanup's order: its configured rules, then the foreign-key orphans. */
const FLOW_REFUSALS: readonly FlowRefusal[] = [
  {
    when: 't.rank > 1',
    rule: 'duplicate-consent',
    reason: 'another consent request of the same login grants more access (handled, remembered, active tokens, newer); the v2 flow table holds one consent per login (primary key login_challenge)',
    held: CONSENT,
  },
  {
    when: 't.lh_challenge IS NULL AND t.consent_challenge_id IS NOT NULL',
    rule: 'unhandled-login',
    reason: 'the login request of this consent was never handled; the v2 flow state would be NULL (state NOT NULL)',
    held: CONSENT,
  },
  {
    when: `t.ch_challenge IS NOT NULL AND NOT ${STAGE}.is_json(t.ch_error)`,
    rule: 'invalid-json-error',
    reason: 'the consent error text is not valid JSON; the v2 flow migration casts it to jsonb',
    held: CONSENT_HANDLED,
  },
  {
    when: 'NOT EXISTS (SELECT 1 FROM public.hydra_client c WHERE c.id = t.client_id AND c.nid = t.nid)',
    rule: `fk-orphans:${CLIENT_FK}`,
    reason: `public.hydra_oauth2_authentication_request(client_id) points to no public.hydra_client row (foreign key ${CLIENT_FK}): the flow's client is not on green`,
    held: LOGIN,
  },
  {
    when: 't.login_session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.hydra_oauth2_authentication_session s WHERE s.id = t.login_session_id)',
    rule: `fk-orphans:${SESSION_FK}`,
    reason: `public.hydra_oauth2_authentication_request(login_session_id) points to no public.hydra_oauth2_authentication_session row (foreign key ${SESSION_FK}): the flow's login session is not on green`,
    held: LOGIN,
  },
];
const HELD_ALIAS = new Map<V1Table, string>([[LOGIN, 'ar_v1'], [CONSENT, 'cr_v1'], [CONSENT_HANDLED, 'ch_v1']]);
const refusalCase = (pick: (r: FlowRefusal) => string): string => `CASE ${FLOW_REFUSALS.map((r) => `WHEN ${r.when} THEN ${pick(r)}`).join(' ')} END`;

/**
 * The flow rows of the affected logins, from the staging rows: flow_fill's SELECT, with the state the
 * post-migration repair leaves ('{}' no error). `rank` > 1: another consent of the same login wins
 * cleanup's tie-break (v2 holds one); `problem`, `rule`, `held_table`, `held`: why the row cannot be
 * written, under which cleanup rule, and the v1 row cleanup would quarantine for it.
 */
const FLOW_BUILD_QUERY = `WITH j AS (
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
         to_jsonb(ar) AS ar_v1, to_jsonb(cr) AS cr_v1, to_jsonb(ch) AS ch_v1,
         -- cleanup's CONSENT_TIE_BREAK: handled (granted), then remembered, then active tokens, then the newest.
         row_number() OVER (PARTITION BY ar.challenge
                            ORDER BY ${GRANTED} DESC, (${GRANTED} AND ch.remember) DESC,
                                     (cr.challenge IS NOT NULL AND ${ACTIVE_TOKENS('cr.challenge')}) DESC,
                                     cr.requested_at DESC NULLS LAST, cr.challenge) AS rank
    FROM ${staged(LOGIN)} ar
    JOIN pg_temp.bluegreen_flow_logins a ON a.login_challenge = ar.challenge
    LEFT JOIN ${staged(LOGIN_HANDLED)} lh ON lh.challenge = ar.challenge
    LEFT JOIN ${staged(CONSENT)} cr ON cr.login_challenge = ar.challenge
    LEFT JOIN ${staged(CONSENT_HANDLED)} ch ON ch.challenge = cr.challenge
), typed AS (
  SELECT j.*,
         CASE WHEN ${STAGE}.is_json(j.ch_error) THEN j.ch_error::jsonb END AS consent_error,
         -- cleanup's invalid-json rewrite: session text that is not JSON becomes '{}' (old value recorded).
         ${JSON_OR_EMPTY('j.ch_id_token')} AS session_id_token,
         ${JSON_OR_EMPTY('j.ch_access_token')} AS session_access_token
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
       ${refusalCase((r) => literal(r.reason))} AS problem,
       ${refusalCase((r) => literal(r.rule))} AS rule,
       ${refusalCase((r) => literal(`public.${r.held.name}`))} AS held_table,
       ${refusalCase((r) => `t.${HELD_ALIAS.get(r.held)!}`)} AS held
  FROM typed t`;
/** The rebuilt flows into the session's pg_temp.bluegreen_flow_new. */
export const FLOW_BUILD: MappingStatement = { id: 'rebuild flows', reads: FLOW_READS, sql: `INSERT INTO pg_temp.bluegreen_flow_new\n${FLOW_BUILD_QUERY}` };

const FLOW_COLUMNS = [
  'login_challenge', 'nid', 'requested_scope', 'login_verifier', 'login_csrf', 'subject', 'request_url', 'login_skip', 'client_id', 'requested_at',
  'login_initialized_at', 'oidc_context', 'login_session_id', 'requested_at_audience', 'state', 'login_remember', 'login_remember_for', 'login_error',
  'acr', 'login_authenticated_at', 'login_was_used', 'forced_subject_identifier', 'context', 'consent_challenge_id', 'consent_skip', 'consent_verifier',
  'consent_csrf', 'granted_scope', 'granted_at_audience', 'consent_remember', 'consent_remember_for', 'consent_handled_at', 'consent_was_used',
  'consent_error', 'session_id_token', 'session_access_token',
] as const;
const FLOW_SET = FLOW_COLUMNS.filter((c) => c !== 'login_challenge');
/** The flow row as jsonb (its v2 columns only). */
const flowRow = (n: string): string => `jsonb_build_object(${FLOW_COLUMNS.map((c) => `${literal(c)}, ${n}.${c}`).join(', ')})`;

/** Rows the stream held for a login it merges again leave the quarantine: this batch holds them anew if v2 still refuses them. */
export const FLOW_RELEASE: MappingStatement = {
  id: 'release remerged flows',
  reads: FLOW_READS,
  sql: `UPDATE ${STAGE}.unmapped u SET released_at = clock_timestamp(), release_reason = 'its login was merged again'
  FROM pg_temp.bluegreen_flow_logins a
 WHERE u.relation IN (${rel(LOGIN)}, ${rel(CONSENT)}, ${rel(CONSENT_HANDLED)}) AND u.held IS NOT NULL AND u.released_at IS NULL
   AND u.row ->> 'login_challenge' = a.login_challenge AND u.lsn < ${BATCH_LSN}`,
};

/**
 * What the flow merge refuses, in the ledger with the v1 row cleanup's rule would quarantine (it goes
 * to the quarantine table of that v1 table, next to cleanup's own): a consent without login, and
 * every rebuilt row with a problem. A login is filed at the batch's last LSN.
 */
export const FLOW_HOLD: MappingStatement = {
  id: 'hold refused flows',
  reads: FLOW_READS,
  sql: `INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row, rule, target, held)
SELECT ${BATCH_LSN}, 0, n.held_table, jsonb_build_array(n.held -> 'challenge')::text, n.problem, ${flowRow('n')}, n.rule, n.held_table, n.held
  FROM pg_temp.bluegreen_flow_new n WHERE n.problem IS NOT NULL
UNION ALL
SELECT l.lsn, l.seq, l.relation, l.k, 'consent request without login_challenge: v2''s flow merge has no row for it (its tokens stay with challenge_id NULL)',
       l.row, ${literal(CONSENT_WITHOUT_LOGIN)}, ${literal(`public.${CONSENT.name}`)}, to_jsonb(s)
  FROM pg_temp.bluegreen_latest l JOIN ${staged(CONSENT)} s ON s.challenge = l.src ->> 'challenge'
 WHERE l.relation = ${rel(CONSENT)} AND l.op <> 'D' AND s.login_challenge IS NULL
ON CONFLICT DO NOTHING`,
};

/**
 * Consents leaving green's flow table (the login's flow now holds another consent, or none): per
 * consent, the rule of its refused row (it lost cleanup's tie-break, ...), or NULL (its login is gone).
 */
const LEAVING = `SELECT f.consent_challenge_id AS challenge,
         (SELECT n.rule FROM pg_temp.bluegreen_flow_new n WHERE n.login_challenge = f.login_challenge
             AND n.consent_challenge_id = f.consent_challenge_id AND n.problem IS NOT NULL LIMIT 1) AS rule
    FROM ${FLOW} f JOIN pg_temp.bluegreen_flow_logins a USING (login_challenge)
   WHERE f.consent_challenge_id IS NOT NULL
     AND f.consent_challenge_id IS DISTINCT FROM (SELECT n.consent_challenge_id FROM pg_temp.bluegreen_flow_new n WHERE n.login_challenge = f.login_challenge AND n.problem IS NULL)
     AND (EXISTS (SELECT 1 FROM pg_temp.bluegreen_flow_new n WHERE n.login_challenge = f.login_challenge AND n.problem IS NULL)
          OR NOT EXISTS (SELECT 1 FROM pg_temp.bluegreen_flow_new n WHERE n.login_challenge = f.login_challenge))`;
/**
 * The leaving consents into the session's pg_temp.bluegreen_flow_leaving, once per batch: the ten
 * statements that move or detach their tokens read it (nothing they do changes it), and join it to
 * the tokens' challenge_id index instead of each evaluating it against the flow table.
 */
export const FLOW_LEAVING: MappingStatement = { id: 'leaving consents', reads: FLOW_READS, sql: `INSERT INTO pg_temp.bluegreen_flow_leaving\n${LEAVING}` };

/** Tokens of a leaving consent that v2 refuses with it move to the quarantine with it, under its rule (as cleanup moves dependents). */
export const moveTokens = (t: V1Table): MappingStatement => ({
  id: `move ${t.name} of refused consents`,
  reads: FLOW_READS,
  sql: `WITH moved AS (
  DELETE FROM ${v2(t)} x USING pg_temp.bluegreen_flow_leaving g WHERE g.rule IS NOT NULL AND x.challenge_id = g.challenge RETURNING x.*, g.rule AS rule_
)
INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row, rule, target, held)
SELECT ${BATCH_LSN}, 0, ${rel(t)}, jsonb_build_array(m.signature)::text,
       ${literal(`depends on a quarantined consent (foreign key ${t.name}_challenge_id_fk): its consent left the flow table`)},
       to_jsonb(m) - 'rule_', m.rule_, ${literal(`public.${t.name}`)}, to_jsonb(m) - 'rule_'
  FROM moved m
ON CONFLICT DO NOTHING`,
});

/** Tokens of a consent whose login is gone: kept with challenge_id NULL (cleanup's consent-without-login detach), the old value recorded. */
export const detachTokens = (t: V1Table): MappingStatement => {
  const reason = `its consent left the flow table (login gone): kept with challenge_id NULL, as cleanup's ${CONSENT_WITHOUT_LOGIN} rule and the 2.x merge leave it`;
  const table = `public.${t.name}`;
  return {
    id: `detach ${t.name}`,
    reads: FLOW_READS,
    sql: `WITH old AS (
  SELECT x.signature, x.challenge_id, to_jsonb(x) AS row FROM ${v2(t)} x JOIN pg_temp.bluegreen_flow_leaving g ON g.rule IS NULL AND x.challenge_id = g.challenge
), noted AS (
  INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row, rule)
  SELECT ${BATCH_LSN}, 0, ${rel(t)}, jsonb_build_array(o.signature)::text, ${literal(reason)}, o.row, ${literal(CONSENT_WITHOUT_LOGIN)} FROM old o
  ON CONFLICT DO NOTHING
), kept AS (
  INSERT INTO ${REWRITES} (run_id, rule, reason, source_table, column_name, key_columns, row, column_type)
  SELECT ${RUN_ID}, ${literal(CONSENT_WITHOUT_LOGIN)}, ${literal(reason)}, ${literal(table)}, 'challenge_id', ARRAY['signature'],
         jsonb_build_object('signature', o.signature, 'challenge_id', o.challenge_id), ${columnType(table, 'challenge_id')}
    FROM old o
)
UPDATE ${v2(t)} x SET challenge_id = NULL FROM old o WHERE x.signature = o.signature`,
  };
};

/** Flow rows whose login request is gone leave (their tokens were detached). */
export const FLOW_DELETE: MappingStatement = {
  id: 'delete flows',
  reads: FLOW_READS,
  sql: `DELETE FROM ${FLOW} f USING pg_temp.bluegreen_flow_logins a
 WHERE f.login_challenge = a.login_challenge
   AND NOT EXISTS (SELECT 1 FROM pg_temp.bluegreen_flow_new n WHERE n.login_challenge = f.login_challenge)`,
};

/** The rebuilt flows v2 accepts. */
export const FLOW_UPSERT: MappingStatement = {
  id: 'upsert flows',
  reads: FLOW_READS,
  sql: `INSERT INTO ${FLOW} AS t (${list(FLOW_COLUMNS)})
SELECT ${list(FLOW_COLUMNS, 'n.')} FROM pg_temp.bluegreen_flow_new n WHERE n.problem IS NULL
ON CONFLICT (login_challenge) DO UPDATE SET ${setExcluded(FLOW_SET)}`,
};

/**
 * Session text that is not JSON was written as '{}' (cleanup's invalid-json rewrite); the old text is
 * recorded once per value, typed as it was (text), so restore refuses it on the jsonb column as it
 * refuses cleanup's rewrites after the migrations.
 */
export const FLOW_SESSION_REWRITES: MappingStatement = {
  id: 'record session rewrites',
  reads: FLOW_READS,
  sql: `WITH old AS (
  SELECT n.login_challenge, n.ch_challenge, c.col, c.val
    FROM pg_temp.bluegreen_flow_new n
    CROSS JOIN LATERAL (VALUES ('session_id_token', n.ch_id_token), ('session_access_token', n.ch_access_token)) c(col, val)
   WHERE n.problem IS NULL AND c.val IS NOT NULL AND NOT ${STAGE}.is_json(c.val)
), noted AS (
  INSERT INTO ${STAGE}.unmapped (lsn, seq, relation, key, reason, row, rule)
  SELECT DISTINCT ${BATCH_LSN}, 0, ${rel(CONSENT_HANDLED)}, jsonb_build_array(o.ch_challenge)::text,
         'session text that is not valid JSON; written to the flow as ''{}'' (cleanup''s invalid-json rewrite)', NULL::jsonb, 'invalid-json'
    FROM old o
  ON CONFLICT DO NOTHING
)
INSERT INTO ${REWRITES} (run_id, rule, reason, source_table, column_name, key_columns, row, column_type)
SELECT ${RUN_ID}, 'invalid-json', 'session text that is not valid JSON; the 2.x flow merge casts it to jsonb (22P02)', 'public.hydra_oauth2_flow', o.col,
       ARRAY['login_challenge'], jsonb_build_object('login_challenge', o.login_challenge, o.col, o.val), 'text'
  FROM old o
 WHERE NOT EXISTS (SELECT 1 FROM ${REWRITES} r WHERE r.source_table = 'public.hydra_oauth2_flow' AND r.column_name = o.col AND r.rule = 'invalid-json'
                     AND r.row = jsonb_build_object('login_challenge', o.login_challenge, o.col, o.val))`,
};

/**
 * The session's tables of the affected logins, the rebuilt flows and the leaving consents (the
 * mapping's setup, after FLOW_SETUP and the latest changes' table). The rebuilt flows are indexed on
 * the login: the leaving consents look each flow's login up in them.
 */
export const FLOW_TABLES = [
  tempTable('bluegreen_flow_logins', FLOW_LOGINS_QUERY),
  tempTable('bluegreen_flow_new', FLOW_BUILD_QUERY),
  'CREATE INDEX IF NOT EXISTS bluegreen_flow_new_login ON pg_temp.bluegreen_flow_new (login_challenge);',
  tempTable('bluegreen_flow_leaving', LEAVING),
].join('\n');

/** The staging tables (the v1 columns and primary key, no other constraint: blue enforced them) and the ledger index the token checks read. */
export const FLOW_SETUP =
  FLOW_SOURCES.map(
    (t) => `CREATE TABLE IF NOT EXISTS ${staged(t)} (${Object.entries(t.columns).map(([c, type]) => `${ident(c)} ${type}`).join(', ')}, PRIMARY KEY (${list(t.key)}));`,
  ).join('\n') +
  `\nCREATE INDEX IF NOT EXISTS v1_consent_login_challenge_idx ON ${staged(CONSENT)} (login_challenge);` +
  // Every token whose flow is missing asks which rule holds its consent (statements.ts heldConsentRule).
  `\nCREATE INDEX IF NOT EXISTS unmapped_held_consent_idx ON ${STAGE}.unmapped ((coalesce(row ->> 'consent_challenge_id', row ->> 'challenge'))) WHERE held IS NOT NULL AND released_at IS NULL;`;
