// The stand-in engine's statements, per schema shape. Token tables are the same in v1 and v2;
// consent lives in the consent tables (v1) or the flow table (v2), named by the replay profile's
// declared semantics so the engine and replay never disagree about where consent is.

import { ident } from '../../src/db/sql.ts';
import { PROFILE_SEMANTICS, type ReplayProfile } from '../../src/replay/semantics.ts';

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
  /** $1 subject, $2 client or null: delete consent rows (tokens cascade). */
  deleteConsent: string;
}

const FACTS = `subject AS sub, client_id, request_id, extract(epoch FROM requested_at)::bigint AS iat`;

/** Statements for a profile's schema. */
export function standinSql(profile: ReplayProfile): StandinSql {
  const s = PROFILE_SEMANTICS[profile];
  const access = ident(s.tokens.access.table);
  const refresh = ident(s.tokens.refresh.table);
  const c = s.consent;
  const copy = (into: string) =>
    `INSERT INTO ${into} SELECT (jsonb_populate_record(NULL::${into}, to_jsonb(r) || jsonb_build_object('signature', $2::text, 'requested_at', now()::timestamp, 'active', true))).*
       FROM ${refresh} r WHERE r.signature = $1`;
  return {
    introspectAccess: `SELECT ${FACTS} FROM ${access} WHERE signature = $1 AND active`,
    introspectRefresh: `SELECT ${FACTS} FROM ${refresh} WHERE signature = $1 AND active`,
    requestOf: `SELECT request_id FROM ${access} WHERE signature = $1 UNION SELECT request_id FROM ${refresh} WHERE signature = $1 LIMIT 1`,
    deleteAccessByRequest: `DELETE FROM ${access} WHERE request_id = $1`,
    deactivateRefreshByRequest: `UPDATE ${refresh} SET active = false WHERE request_id = $1 AND active`,
    claimRefresh: `UPDATE ${refresh} SET active = false WHERE signature = $1 AND active RETURNING request_id, client_id, subject`,
    insertRefresh: copy(refresh),
    insertAccess: copy(access),
    deleteConsent: `DELETE FROM ${ident(c.table)} WHERE ${ident(c.challengeColumn)} IS NOT NULL AND ${ident(c.subjectColumn)} = $1 AND ($2::text IS NULL OR ${ident(c.clientColumn)} = $2)`,
  };
}
