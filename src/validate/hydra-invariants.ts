// The Hydra profile's semantic invariants (v1 blue vs v2 green): the seeds' 403s came from valid
// sessions a migration silently broke, which counts and checksums cannot see on merged tables.
// Blue queries get $1 = capture start (tokens issued later never reached green, by design),
// $2 = drained (before the drain, revocations still waiting in the outbox are not yet expected on green)
// and $3 = the copy's snapshot: "what blue granted" is read as of the snapshot (rows unchanged since),
// so writes blue takes during the window are not reported as differences.

import type { InvariantSpec } from '../cutover/schema.ts';
import { existedAtSnapshot } from './as-of-snapshot.ts';

// Every bind parameter a query is given must be typed where it appears: $2 is declared, not used.
const DECLARE_DRAINED = '$2::boolean IS NOT NULL';

const ACTIVE_TOKENS_BLUE = `
SELECT 'access:' || a.signature FROM public.hydra_oauth2_access a WHERE a.active AND a.requested_at <= $1::timestamptz AND ${DECLARE_DRAINED} AND ${existedAtSnapshot('a')}
UNION ALL
SELECT 'refresh:' || r.signature FROM public.hydra_oauth2_refresh r WHERE r.active AND r.requested_at <= $1::timestamptz AND ${DECLARE_DRAINED} AND ${existedAtSnapshot('r')}`;

const ACTIVE_TOKENS_GREEN = `
SELECT 'access:' || signature FROM public.hydra_oauth2_access WHERE active
UNION ALL
SELECT 'refresh:' || signature FROM public.hydra_oauth2_refresh WHERE active`;

const REMEMBERED_CONSENTS_BLUE = `
SELECT h.challenge FROM public.hydra_oauth2_consent_request_handled h
 WHERE h.remember AND h.error = '{}' AND h.requested_at <= $1::timestamptz AND ${DECLARE_DRAINED} AND ${existedAtSnapshot('h')}`;

// States 5 (consent handled) and 6 (consent used) are the granted ones; 129 is a rejected consent.
const REMEMBERED_CONSENTS_GREEN = `
SELECT f.consent_challenge_id FROM public.hydra_oauth2_flow f
 WHERE f.consent_remember AND f.state IN (5, 6) AND f.consent_challenge_id IS NOT NULL`;

const OUTBOX_PENDING = (kind: string, alias: string): string =>
  `($2::boolean OR NOT EXISTS (SELECT 1 FROM bluegreen.outbox o WHERE o.kind = '${kind}' AND o.row_key ->> 'signature' = ${alias}.signature))`;

// Parameters must be typed where they appear; $1 (capture start) is not needed here, only declared.
const REVOKED_TOKENS_BLUE = `
SELECT 'access:' || a.signature FROM public.hydra_oauth2_access a WHERE NOT a.active AND $1::timestamptz IS NOT NULL AND ${OUTBOX_PENDING('access', 'a')}
UNION ALL
SELECT 'refresh:' || r.signature FROM public.hydra_oauth2_refresh r WHERE NOT r.active AND ${OUTBOX_PENDING('refresh', 'r')}`;

const REVOKED_TOKENS_GREEN = `
SELECT k FROM (${ACTIVE_TOKENS_GREEN}) AS g(k) WHERE k = ANY($1::text[])`;

const TOKEN_QUARANTINE = [
  { table: 'public.hydra_oauth2_access', key: `'access:' || (row ->> 'signature')` },
  { table: 'public.hydra_oauth2_refresh', key: `'refresh:' || (row ->> 'signature')` },
];

/** The invariants the Hydra profile checks on every validation. */
export const HYDRA_INVARIANTS: readonly InvariantSpec[] = [
  {
    name: 'active-tokens-stay-active',
    description: 'every access/refresh token active in blue as of the snapshot is active in green; quarantined ones are listed as expected losses',
    blue: ACTIVE_TOKENS_BLUE,
    green: ACTIVE_TOKENS_GREEN,
    relation: 'blue-subset-of-green',
    quarantine: TOKEN_QUARANTINE,
    removedOnGreen: [
      { table: 'public.hydra_oauth2_access', key: `'access:' || (row_key ->> 'signature')` },
      { table: 'public.hydra_oauth2_refresh', key: `'refresh:' || (row_key ->> 'signature')` },
    ],
  },
  {
    name: 'remembered-consents-stay-remembered',
    description: 'every remembered, granted consent in blue as of the snapshot (consent_request_handled.remember) is remembered and granted in green (hydra_oauth2_flow); quarantined ones are listed as expected losses',
    blue: REMEMBERED_CONSENTS_BLUE,
    green: REMEMBERED_CONSENTS_GREEN,
    relation: 'blue-subset-of-green',
    quarantine: [{ table: 'public.hydra_oauth2_consent_request_handled', key: `row ->> 'challenge'` }],
    removedOnGreen: [{ table: 'public.hydra_oauth2_flow', key: `row_key ->> 'consent_challenge_id'` }],
  },
  {
    name: 'revoked-tokens-stay-revoked',
    description: 'every revoked or rotated token (inactive in blue) is inactive or absent in green',
    blue: REVOKED_TOKENS_BLUE,
    green: REVOKED_TOKENS_GREEN,
    relation: 'green-empty',
    quarantine: [],
  },
];
