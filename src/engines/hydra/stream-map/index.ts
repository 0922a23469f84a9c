// Hydra 1.x -> 2.x: green's change log (blue's v1 rows) mapped into green's v2 tables (issue G, item 2),
// as a StreamMapping for src/stream/apply-changes.ts. Every statement reads the batch from
// `pg_temp.bluegreen_batch` (whole blue transactions, in (lsn, seq) order); they run in one green
// transaction with the mapped mark, in this order. Each declares the change log relations it has work
// for (`reads`): apply-changes runs only those of the tables a batch touches. The temporary tables
// the statements fill (latest changes, affected logins, rebuilt flows, leaving consents) are the
// session's, made by the setup once per call and emptied at each commit, and are ANALYZEd once filled.
//
// Semantics:
//   * Last change wins: per table and primary key, only the batch's LAST change (by lsn, seq) is
//     applied: a delete DELETEs the v2 row by key, anything else UPSERTs (INSERT ... ON CONFLICT (pk)
//     DO UPDATE) the row. The upserted row merges, column by column, the newest value the batch holds
//     for the key; a column the batch never sent (TOASTed and unchanged) keeps green's current value.
//   * 1:1 tables (tables.ts: clients, keys, login sessions, the access, refresh, code, OIDC and PKCE
//     tokens, logout requests, pairwise subjects) convert as the fixture migrations do: nid = the
//     network the nid backfill assigns (an existing row keeps its own; pairwise subjects are keyed per
//     network), client lists become jsonb arrays of exactly the pipe-split text, metadata is copied
//     into hydra_client_settings as jsonb, columns v2 added keep their defaults, columns v2 lacks are
//     dropped.
//   * Flow merge (flow.ts): the four v1 login/consent tables are staged and every login the batch
//     touches is merged again into its hydra_oauth2_flow row.
//   * Order: token, logout and pairwise deletes; client, settings, key and session upserts; flows;
//     token, logout and pairwise upserts; then session, key, settings and client deletes (children
//     before parents both ways); then the serial sequences.
//   * Nothing is dropped silently: a change the v2 constraints would refuse is recorded in
//     bluegreen_green.unmapped under the cleanup rule that refuses the same row
//     (src/engines/hydra/cleanup.ts and cleanup's catalog rules), with cleanup's tie-break for two
//     consents of one login, and the row cleanup would quarantine (v2 form where the table exists on
//     green) goes to the quarantine (apply-changes moves it). A token whose consent has no flow is
//     kept with challenge_id NULL and the old value recorded, as cleanup's null-dangling rewrite does.
//     Changes with no row to hold get rules of their own: stream-truncate, stream-key-change,
//     stream-no-mapping, stream-toast-missing, stream-metadata-not-json.

import type { MappingStatement, StreamMapping } from '../../types.ts';
import {
  detachTokens, FLOW_BUILD, FLOW_DELETE, FLOW_HOLD, FLOW_LEAVING, FLOW_LOGINS, FLOW_READS, FLOW_RELEASE, FLOW_SEED, FLOW_SESSION_REWRITES, FLOW_SETUP, FLOW_TABLES, FLOW_UPSERT, moveTokens,
} from './flow.ts';
import {
  analyze, clientCheck, deleteStatement, LATEST, LATEST_TABLE, plainCheck, recordDetached, recordSkipped, RELEASE_DELETED, SEQUENCES, SETTINGS_DELETE, SETTINGS_UPSERT,
  tokenCheck, tokenDetach, UNMAPPABLE, upsertStatement,
} from './statements.ts';
import { CLIENT_T, JWK_T, LOGOUT_T, OBFUSCATED_T, SESSION_T, STAGED_T, TOKEN_T, TOKENS, type Target } from './tables.ts';

/** Check, upsert and record of one table (`check` marks what v2 refuses). */
const apply = (t: Target, check: MappingStatement): MappingStatement[] => [check, upsertStatement(t), recordSkipped(t)];

/** Hydra 1.x -> 2.x, for the change log (see the header for the semantics). */
export const HYDRA_STREAM_MAPPING: StreamMapping = {
  name: 'hydra v1 -> v2',
  setup: [FLOW_SETUP, LATEST_TABLE, FLOW_TABLES].join('\n'),
  statements: [
    LATEST,
    analyze('bluegreen_latest', ['relation', 'k', 'op', 'skip', 'detach']),
    UNMAPPABLE,
    RELEASE_DELETED,
    // Children's deletes first.
    ...[...TOKEN_T, LOGOUT_T, OBFUSCATED_T].map(deleteStatement),
    // Parents' upserts.
    ...apply(CLIENT_T, plainCheck(CLIENT_T)),
    SETTINGS_UPSERT,
    ...apply(JWK_T, plainCheck(JWK_T)),
    ...apply(SESSION_T, plainCheck(SESSION_T)),
    // The flow merge: staging rows, then the flows of the logins touched.
    FLOW_LOGINS,
    analyze('bluegreen_flow_logins', ['login_challenge'], FLOW_READS),
    FLOW_SEED,
    ...STAGED_T.map(deleteStatement),
    ...STAGED_T.flatMap((t) => apply(t, plainCheck(t))),
    FLOW_BUILD,
    analyze('bluegreen_flow_new', ['login_challenge', 'consent_challenge_id', 'problem'], FLOW_READS),
    FLOW_RELEASE,
    FLOW_HOLD,
    FLOW_LEAVING,
    analyze('bluegreen_flow_leaving', ['challenge', 'rule'], FLOW_READS),
    ...TOKENS.map(moveTokens),
    ...TOKENS.map(detachTokens),
    FLOW_DELETE,
    FLOW_UPSERT,
    FLOW_SESSION_REWRITES,
    // Tokens, logout requests and pairwise subjects after their client and flow.
    ...TOKEN_T.flatMap((t) => [tokenCheck(t), tokenDetach(t), recordDetached(t), upsertStatement(t), recordSkipped(t)]),
    ...apply(LOGOUT_T, clientCheck(LOGOUT_T, true)),
    ...apply(OBFUSCATED_T, clientCheck(OBFUSCATED_T, false)),
    // Parents' deletes last.
    deleteStatement(SESSION_T),
    deleteStatement(JWK_T),
    SETTINGS_DELETE,
    deleteStatement(CLIENT_T),
    SEQUENCES,
  ],
};
