// The tables of the Hydra 1.x -> 2.x stream mapping: every v1 table Hydra writes in normal operation
// (as in sql/fixtures/hydra-v1/schema.sql) and how each lands on green (v2). Shared by the statement
// builders (statements.ts) and the flow merge (flow.ts).

import { ident, literal, qualified } from '../../../db/sql.ts';

/** Schema of the mapping's own tables on green (the unmapped ledger, the v1 staging tables). */
export const STAGE = 'bluegreen_green';
/** The network every row is assigned to: the one the nid backfill uses. */
export const NETWORK = '(SELECT n.id FROM public.networks n LIMIT 1)';
/** The quarantine's rewrite ledger (sql/state/quarantine.sql): values changed in place, restorable. */
export const REWRITES = qualified('bluegreen_quarantine', '_rewrites');
/** The run id the recorded rows carry (apply-changes sets it per batch transaction). */
export const RUN_ID = `current_setting('bluegreen.run_id')`;

/** Exactly the pipe-split elements as a jsonb array; '' and NULL give [] as in the migration. */
const pipeList = (text: string): string =>
  `(CASE WHEN ${text} IS NULL OR ${text} = '' THEN '[]'::jsonb ELSE to_jsonb(string_to_array(${text}, '|')) END)`;

/** A v1 table with its primary key and columns (as in sql/fixtures/hydra-v1/schema.sql). */
export interface V1Table {
  /** Table name in schema public. */
  name: string;
  /** Primary key columns. */
  key: readonly string[];
  /** Every column, with its v1 type (the staging tables use the types). */
  columns: Readonly<Record<string, string>>;
}

/** `name type, ...` as a column map. */
const cols = (spec: string): Record<string, string> => Object.fromEntries(spec.split(',').map((c) => c.trim().split(' ') as [string, string]));

/** hydra_client (serial pk, unique id, pipe lists). */
export const CLIENT: V1Table = {
  name: 'hydra_client',
  key: ['pk'],
  columns: cols(
    'pk integer, id varchar(255), client_name text, client_secret text, redirect_uris text, grant_types text, response_types text, scope text, owner text, ' +
      'policy_uri text, tos_uri text, client_uri text, logo_uri text, contacts text, client_secret_expires_at integer, sector_identifier_uri text, jwks text, ' +
      'jwks_uri text, token_endpoint_auth_method varchar(25), audience text, metadata text, created_at timestamp, updated_at timestamp',
  ),
};
/** hydra_jwk (serial pk). */
export const JWK: V1Table = { name: 'hydra_jwk', key: ['pk'], columns: cols('pk integer, sid varchar(255), kid varchar(255), version integer, keydata text, created_at timestamp') };
/** Login sessions. */
const SESSION: V1Table = { name: 'hydra_oauth2_authentication_session', key: ['id'], columns: cols('id varchar(40), authenticated_at timestamp, subject varchar(255), remember boolean') };

const TOKEN_COLUMNS = cols(
  'signature varchar(255), request_id varchar(40), requested_at timestamp, client_id varchar(255), scope text, granted_scope text, form_data text, ' +
    'session_data text, subject varchar(255), active boolean, requested_audience text, granted_audience text, challenge_id varchar(40)',
);
const token = (kind: string): V1Table => ({ name: `hydra_oauth2_${kind}`, key: ['signature'], columns: TOKEN_COLUMNS });
/** The five token tables (one shape): access, refresh, and the code flow's code, OIDC and PKCE rows. */
export const TOKENS: readonly V1Table[] = ['access', 'refresh', 'code', 'oidc', 'pkce'].map(token);

/** Logout requests (client_id NULL when the provider, not a relying party, started the logout). */
const LOGOUT: V1Table = {
  name: 'hydra_oauth2_logout_request',
  key: ['challenge'],
  columns: cols(
    'challenge varchar(36), verifier varchar(36), subject varchar(255), sid varchar(36), client_id varchar(255), request_url text, redir_url text, ' +
      'was_used boolean, accepted boolean, rejected boolean, rp_initiated boolean',
  ),
};
/** Pairwise (obfuscated) subjects; v2 adds nid to the primary key. */
const OBFUSCATED: V1Table = {
  name: 'hydra_oauth2_obfuscated_authentication_session',
  key: ['subject', 'client_id'],
  columns: cols('subject varchar(255), client_id varchar(255), subject_obfuscated varchar(255)'),
};

/** Login requests (merged into hydra_oauth2_flow). */
export const LOGIN: V1Table = {
  name: 'hydra_oauth2_authentication_request',
  key: ['challenge'],
  columns: cols(
    'challenge varchar(40), requested_scope text, verifier varchar(40), csrf varchar(40), subject varchar(255), request_url text, skip boolean, ' +
      'client_id varchar(255), requested_at timestamp, authenticated_at timestamp, oidc_context text, login_session_id varchar(40), requested_at_audience text',
  ),
};
/** Handled login requests (merged into hydra_oauth2_flow). */
export const LOGIN_HANDLED: V1Table = {
  name: 'hydra_oauth2_authentication_request_handled',
  key: ['challenge'],
  columns: cols(
    'challenge varchar(40), subject varchar(255), remember boolean, remember_for integer, error text, acr text, requested_at timestamp, ' +
      'authenticated_at timestamp, was_used boolean, forced_subject_identifier varchar(255), context text',
  ),
};
/** Consent requests (merged into hydra_oauth2_flow). */
export const CONSENT: V1Table = {
  name: 'hydra_oauth2_consent_request',
  key: ['challenge'],
  columns: cols(
    'challenge varchar(40), verifier varchar(40), client_id varchar(255), subject varchar(255), request_url text, skip boolean, requested_scope text, ' +
      'csrf varchar(40), authenticated_at timestamp, requested_at timestamp, oidc_context text, forced_subject_identifier varchar(255), ' +
      'login_session_id varchar(40), login_challenge varchar(40), requested_at_audience text, acr text, context text',
  ),
};
/** Handled consent requests (merged into hydra_oauth2_flow). */
export const CONSENT_HANDLED: V1Table = {
  name: 'hydra_oauth2_consent_request_handled',
  key: ['challenge'],
  columns: cols(
    'challenge varchar(40), granted_scope text, remember boolean, remember_for integer, error text, requested_at timestamp, session_access_token text, ' +
      'session_id_token text, authenticated_at timestamp, was_used boolean, granted_at_audience text, handled_at timestamp',
  ),
};
/** The four login/consent tables the flow merge reads. */
export const FLOW_SOURCES: readonly V1Table[] = [LOGIN, LOGIN_HANDLED, CONSENT, CONSENT_HANDLED];
/** Every v1 table the mapping reads. */
export const ALL: readonly V1Table[] = [CLIENT, JWK, SESSION, ...TOKENS, LOGOUT, OBFUSCATED, ...FLOW_SOURCES];

/**
 * A session temporary table with the columns of `query`, emptied at every commit: created once per
 * call (the mapping's setup; catalog work per batch cost milliseconds each), filled per batch.
 */
export const tempTable = (name: string, query: string): string => `CREATE TEMP TABLE IF NOT EXISTS ${ident(name)} ON COMMIT DELETE ROWS AS\n${query}\nWITH NO DATA;`;
/** `public.<table>`: how the change log names a relation (MappingStatement.reads). */
export const source = (t: V1Table): string => `public.${t.name}`;
/** `'public.<table>'` as a text literal (how the change log names a relation). */
export const rel = (t: V1Table): string => literal(`public.${t.name}`);
/** The table on green with the same name. */
export const v2 = (t: V1Table): string => qualified('public', t.name);
/** The staging table keeping a v1 table's latest rows on green. */
export const staged = (t: V1Table): string => qualified(STAGE, `v1_${t.name}`);
/** The v2 flow table. */
export const FLOW = qualified('public', 'hydra_oauth2_flow');
/** Quoted column names, optionally qualified. */
export const list = (columns: readonly string[], alias = ''): string => columns.map((c) => `${alias}${ident(c)}`).join(', ');

/** A column computed for the v2 row: from the v1 columns `from` (kept from green when none was sent). */
export interface Computed {
  /** The v2 column. */
  column: string;
  /** SQL over `l.row` (the merged jsonb row), `p` (it as the v2 row type) and `t0` (green's current row, may be NULL). */
  expr: string;
  /** The v1 columns it reads; when the batch sent none of them, green's value stays. */
  from: readonly string[];
}

/** How one v1 table lands in one table on green. */
export interface Target {
  /** The v1 table. */
  v1: V1Table;
  /** The table on green (`schema.table`, quoted). */
  table: string;
  /** v1 columns copied unchanged (typed through the target's row type). */
  copied: readonly string[];
  /** Columns computed. */
  computed: readonly Computed[];
  /** True when green's primary key is the v1 key plus nid (rows are per network). */
  perNetwork?: boolean;
  /** A reference column the mapping may write as NULL (l.detach set): the challenge_id of tokens. */
  detachColumn?: string;
  /**
   * True when a row the v2 constraints refuse is held in quarantine in its v2 form (restorable into
   * `table`); false for the staging tables, whose refusals are held by the flow merge.
   */
  holds: boolean;
}

/** nid: green's own for an existing row, else the network. */
const NID: Computed = { column: 'nid', expr: `coalesce(t0.nid, ${NETWORK})`, from: [] };
const listColumn = (column: string, from = column): Computed => ({ column, expr: pipeList(`(l.row ->> ${literal(from)})`), from: [from] });
const CLIENT_LIST_COLUMNS = ['redirect_uris', 'grant_types', 'response_types', 'audience'];
const copiedOf = (t: V1Table, except: readonly string[] = []): string[] => Object.keys(t.columns).filter((c) => !except.includes(c));
/** A 1:1 table: every v1 column copied, nid added. */
const oneToOne = (t: V1Table, extra: Partial<Target> = {}): Target => ({ v1: t, table: v2(t), copied: copiedOf(t), computed: [NID], holds: true, ...extra });

/** Clients: lists become jsonb arrays (contacts into contacts_json), nid added. */
export const CLIENT_T: Target = {
  v1: CLIENT,
  table: v2(CLIENT),
  copied: copiedOf(CLIENT, CLIENT_LIST_COLUMNS),
  computed: [...CLIENT_LIST_COLUMNS.map((c) => listColumn(c)), listColumn('contacts_json', 'contacts'), NID],
  holds: true,
};
/** Signing keys. */
export const JWK_T: Target = oneToOne(JWK);
/** Login sessions. */
export const SESSION_T: Target = oneToOne(SESSION);
/** The five token tables. */
export const TOKEN_T: readonly Target[] = TOKENS.map((t) => oneToOne(t, { detachColumn: 'challenge_id' }));
/** Logout requests. */
export const LOGOUT_T: Target = oneToOne(LOGOUT);
/** Pairwise subjects: keyed per network on green. */
export const OBFUSCATED_T: Target = oneToOne(OBFUSCATED, { perNetwork: true });
/** The staging tables of the flow merge: v1 rows as they are. */
export const STAGED_T: readonly Target[] = FLOW_SOURCES.map((t): Target => ({ v1: t, table: staged(t), copied: copiedOf(t), computed: [], holds: false }));

/** The key of a change as text: the primary key values (of the new row, or the old key of a delete), as a jsonb array. */
export function keyText(src: string): string {
  const arms = ALL.map((t) => `WHEN ${rel(t)} THEN jsonb_build_array(${t.key.map((k) => `${src} -> ${literal(k)}`).join(', ')})::text`);
  return `CASE b.relation ${arms.join(' ')} END`;
}
/** Every mapped relation, as a SQL list of text literals. */
export const RELATIONS = ALL.map(rel).join(', ');
