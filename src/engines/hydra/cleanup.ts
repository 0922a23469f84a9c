// Hydra 1.x -> 2.x cleanup knowledge: the dirty-row classes its migrations reject that no foreign
// key reveals (FK orphans are derived from the catalog instead), which duplicate stays, the dangling
// references Hydra's own migration sets to NULL (followed, not quarantined), the values that can be
// rewritten so the migration converts them without losing access (pipe lists escaped, broken session
// JSON replaced), and which rows grant access (what "access changes" counts).

import { tieBreakWhere } from '../tie-break.ts';
import type { AccessCarrier, ColumnRewrite, EngineCleanupRule, NullRewrite, TieBreak } from '../types.ts';
import { CLIENT, CLIENT_LISTS, FLOW_LISTS } from './lists.ts';

const CONSENT = { schema: 'public', name: 'hydra_oauth2_consent_request' };
/** Every token table whose challenge_id points at a consent (v1: the handled row). */
const TOKEN_TABLES = ['access', 'refresh', 'code', 'oidc', 'pkce'].map((t) => `public.hydra_oauth2_${t}`);
const HANDLED = 'public.hydra_oauth2_consent_request_handled';
const LOGIN = 'public.hydra_oauth2_authentication_request';
const LOGIN_HANDLED = 'public.hydra_oauth2_authentication_request_handled';

/** A handled consent's error column holds '{}' (or nothing) when the consent was granted. */
const GRANTED = (h: string): string => `(${h}.error IS NULL OR ${h}.error IN ('', '{}'))`;

/**
 * Two consents for one login: v2's flow table holds one per login (its primary key). The one that
 * stays is the one that grants access: handled (granted, not an error), then remembered, then
 * referenced by an active token, then the newest.
 */
export const CONSENT_TIE_BREAK: TieBreak = {
  noun: 'consent',
  groupColumn: 'login_challenge',
  groupNoun: 'login',
  keyColumn: 'challenge',
  order: [
    { name: 'handled', unlike: 'not handled', boolean: true, sql: (r) => `EXISTS (SELECT 1 FROM ${HANDLED} h WHERE h.challenge = ${r}.challenge AND ${GRANTED('h')})` },
    { name: 'remembered', unlike: 'not remembered', boolean: true, sql: (r) => `EXISTS (SELECT 1 FROM ${HANDLED} h WHERE h.challenge = ${r}.challenge AND h.remember AND ${GRANTED('h')})` },
    {
      name: 'referenced by active tokens',
      unlike: 'no active token',
      boolean: true,
      sql: (r) =>
        `(EXISTS (SELECT 1 FROM public.hydra_oauth2_access a WHERE a.challenge_id = ${r}.challenge AND a.active) ` +
        `OR EXISTS (SELECT 1 FROM public.hydra_oauth2_refresh f WHERE f.challenge_id = ${r}.challenge AND f.active))`,
    },
    { name: 'newest', unlike: 'older', boolean: false, sql: (r) => `${r}.requested_at` },
  ],
};

/**
 * A list as the inside of JSON strings: `to_json` escapes `"`, `\` and control characters and
 * leaves `|` alone, so the migration's `'["' || replace(list, '|', '","') || '"]'` yields an array
 * whose elements are exactly the pipe-split original strings.
 */
const jsonEscaped = (c: string): string => `substr(to_json(t.${c})::text, 2, length(to_json(t.${c})::text) - 2)`;

/** Rewrites a pipe list into its escaped form where that differs (a `"`, a `\` or a control character). */
const escapeList = (column: string): ColumnRewrite => ({ column, where: `t.${column} IS NOT NULL AND ${jsonEscaped(column)} <> t.${column}`, set: jsonEscaped(column) });

/** Replaces text that is not JSON with '{}' (what the migration's own COALESCE gives a missing value). */
const emptyJson = (column: string): ColumnRewrite => ({ column, where: `NOT bluegreen_quarantine.is_json(t.${column})`, set: `'{}'` });

/** A rule that keeps its rows and rewrites the given columns; its `where` is any column needing it. */
function rewriteRule(name: string, table: string, columns: ColumnRewrite[], says: string, reason: string): EngineCleanupRule {
  return { name, table, where: columns.map((c) => `(${c.where})`).join(' OR '), reason, rewrite: { columns, says } };
}

const ESCAPED = 'escaped (\\ and \" inside JSON strings), so the migration\'s JSON pasting yields exactly the original elements';
const LIST_REASON = 'a pipe-delimited list holds a quote, backslash or control character; the 2.x string pasting into JSON would fail (22P02) or change the value';
const flowLists = (table: string): ColumnRewrite[] => FLOW_LISTS.filter((l) => l.table === table).map((l) => escapeList(l.column));
const EMPTIED = "set to '{}' (the claims or context are lost on green, not the consent and its tokens)";
const JSON_REASON = 'text that is not valid JSON; the 2.x flow merge casts it to jsonb (22P02)';

/**
 * Hydra's cleanup rules, run first and in this order; each is named after the fixture's dirty class
 * it finds. The quarantines come first; then the rewrites, which keep rows (and the access they
 * carry) and change only values the migration could not convert, each old value recorded.
 */
export const HYDRA_CLEANUP_RULES: readonly EngineCleanupRule[] = [
  {
    name: 'consent-without-login',
    table: 'public.hydra_oauth2_consent_request',
    where: 't.login_challenge IS NULL',
    reason:
      "the consent's login request is gone (login_challenge NULL, e.g. flushed by the janitor); Hydra 2.x's flow merge starts from login requests and drops such a consent silently, so it is quarantined (restorable) instead; its tokens stay with challenge_id NULL, as the merge leaves them",
    detach: TOKEN_TABLES,
  },
  {
    name: 'duplicate-consent',
    table: 'public.hydra_oauth2_consent_request',
    where: tieBreakWhere(CONSENT, CONSENT_TIE_BREAK),
    reason: 'another consent request of the same login grants more access (handled, remembered, active tokens, newer); the v2 flow table holds one consent per login (primary key login_challenge)',
    tieBreak: CONSENT_TIE_BREAK,
  },
  {
    name: 'unhandled-login',
    table: 'public.hydra_oauth2_consent_request',
    where:
      't.login_challenge IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.hydra_oauth2_authentication_request_handled h ' +
      'WHERE h.challenge = t.login_challenge)',
    reason: 'the login request of this consent was never handled; the v2 flow state would be NULL (state NOT NULL)',
  },
  // An error that is not JSON stays a quarantine: rewriting it to '{}' would turn a refused consent into a granted one.
  {
    name: 'invalid-json-error',
    table: HANDLED,
    where: 'NOT bluegreen_quarantine.is_json(t.error)',
    reason: 'the consent error text is not valid JSON; the v2 flow migration casts it to jsonb',
  },
  rewriteRule('invalid-json', HANDLED, [emptyJson('session_access_token'), emptyJson('session_id_token')], EMPTIED, `session ${JSON_REASON}`),
  rewriteRule('invalid-json-login', LOGIN, [emptyJson('oidc_context')], EMPTIED, `login request oidc_context ${JSON_REASON}`),
  rewriteRule('invalid-json-login-handled', LOGIN_HANDLED, [emptyJson('context')], EMPTIED, `handled login context ${JSON_REASON}`),
  rewriteRule('pipe-quote', CLIENT, CLIENT_LISTS.map(escapeList), ESCAPED, LIST_REASON),
  rewriteRule('pipe-quote-login', LOGIN, flowLists(LOGIN), ESCAPED, `${LIST_REASON} (carried into hydra_oauth2_flow by the merge)`),
  rewriteRule('pipe-quote-login-handled', LOGIN_HANDLED, flowLists(LOGIN_HANDLED), ESCAPED, `${LIST_REASON} (carried into hydra_oauth2_flow by the merge)`),
  rewriteRule('pipe-quote-consent', HANDLED, flowLists(HANDLED), ESCAPED, `${LIST_REASON} (carried into hydra_oauth2_flow by the merge)`),
];

const DANGLING =
  "Hydra's flow merge (2.x) sets a token's challenge_id to NULL when its consent has no flow row and keeps the token; cleanup does the same and records the old value";

/** References Hydra's own 2.x migration sets to NULL when they point nowhere (issues 3346, 3417). */
export const HYDRA_REWRITES: readonly NullRewrite[] = TOKEN_TABLES.map((table) => ({
  table,
  column: 'challenge_id',
  reason: DANGLING,
}));

/** Rows that grant access in Hydra v1: quarantining one takes it from a user or a client. */
export const HYDRA_ACCESS_CARRIERS: readonly AccessCarrier[] = [
  { kind: 'active access token', table: 'public.hydra_oauth2_access', where: 't.active' },
  { kind: 'active refresh token', table: 'public.hydra_oauth2_refresh', where: 't.active' },
  { kind: 'remembered consent', table: HANDLED, where: `t.remember AND ${GRANTED('t')}` },
  {
    kind: 'client with active tokens',
    table: 'public.hydra_client',
    where:
      '(EXISTS (SELECT 1 FROM public.hydra_oauth2_access a WHERE a.client_id = t.id AND a.active) ' +
      'OR EXISTS (SELECT 1 FROM public.hydra_oauth2_refresh f WHERE f.client_id = t.id AND f.active))',
  },
];
