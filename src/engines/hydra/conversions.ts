// What the Hydra 1.x -> 2.x migrations change on purpose, declared as data so validation can tell a
// conversion from a corruption: columns retyped through a conversion (compared through it), and the
// changes the merge into hydra_oauth2_flow makes (consents it leaves behind, states it rewrites).
// Blue queries read blue as of the copy's snapshot ($1, see existedAtSnapshot). A conversion whose
// column a given release (or our fixture) does not convert is skipped by validation, so one list
// serves every 2.x folder.

import { existedAtSnapshot } from '../../validate/as-of-snapshot.ts';
import type { Conversion, MigrationChange } from '../types.ts';
import { CLIENT, CLIENT_LISTS, FLOW_LISTS } from './lists.ts';

const CONSENT_JSON = [
  ['error', 'consent_error'],
  ['session_access_token', 'session_access_token'],
  ['session_id_token', 'session_id_token'],
] as const;

/** Hydra 1.x -> 2.x: the retyped columns. */
export const HYDRA_CONVERSIONS: readonly Conversion[] = [
  ...CLIENT_LISTS.map((c): Conversion => ({ kind: 'pipe-list-to-json-array', blue: { table: CLIENT, column: c, key: 'id' }, green: { table: CLIENT, column: c, key: 'id' } })),
  // Our fixture converts contacts through a SQL function into a new column, and copies metadata into a new table.
  { kind: 'pipe-list-to-json-array', blue: { table: CLIENT, column: 'contacts', key: 'id' }, green: { table: CLIENT, column: 'contacts_json', key: 'id' } },
  { kind: 'text-to-json', blue: { table: CLIENT, column: 'metadata', key: 'pk' }, green: { table: 'public.hydra_client_settings', column: 'settings', key: 'client_pk' } },
  // The lists the flow merge carries (still pipe text in the flow table), converted in place later on.
  ...FLOW_LISTS.map((l): Conversion => ({
    kind: 'pipe-list-to-json-array',
    blue: { table: l.table, column: l.column, key: l.key.blue },
    green: { table: 'public.hydra_oauth2_flow', column: l.column, key: l.key.green },
  })),
  ...CONSENT_JSON.map(([from, to]): Conversion => ({
    kind: 'text-to-json',
    blue: { table: 'public.hydra_oauth2_consent_request_handled', column: from, key: 'challenge' },
    green: { table: 'public.hydra_oauth2_flow', column: to, key: 'consent_challenge_id' },
  })),
];

/** No error recorded: v1 stores '{}' (or nothing) as text. */
const NO_ERROR = (col: string): string => `coalesce(btrim(${col}), '') IN ('', '{}', 'null')`;

// The flow state each v1 login/consent pair stands for, read from the old rows themselves (not from
// the migration): 1 login requested, 2 login handled, 3 login used, 4 consent requested,
// 5 consent granted, 6 consent used, 128 login rejected, 129 consent rejected. A handled consent
// deleted after the snapshot is gone from blue but not from green, so pairs whose consent the capture
// outbox (bluegreen.outbox, present once capture ran) saw deleted are left out.
const V1_FLOW_STATE = `
SELECT ar.challenge || ':' || coalesce(cr.challenge, ''),
       (CASE
          WHEN ch.challenge IS NOT NULL THEN CASE WHEN ${NO_ERROR('ch.error')} THEN CASE WHEN ch.was_used THEN 6 ELSE 5 END ELSE 129 END
          WHEN cr.challenge IS NOT NULL THEN 4
          WHEN lh.challenge IS NOT NULL THEN CASE WHEN ${NO_ERROR('lh.error')} THEN CASE WHEN lh.was_used THEN 3 ELSE 2 END ELSE 128 END
          ELSE 1
        END)::text
  FROM public.hydra_oauth2_authentication_request ar
  LEFT JOIN public.hydra_oauth2_authentication_request_handled lh ON lh.challenge = ar.challenge
  LEFT JOIN public.hydra_oauth2_consent_request cr ON cr.login_challenge = ar.challenge
  LEFT JOIN public.hydra_oauth2_consent_request_handled ch ON ch.challenge = cr.challenge
 WHERE ${existedAtSnapshot('ar', '$1')} AND (lh.challenge IS NULL OR ${existedAtSnapshot('lh', '$1')})
   AND (cr.challenge IS NULL OR ${existedAtSnapshot('cr', '$1')}) AND (ch.challenge IS NULL OR ${existedAtSnapshot('ch', '$1')})
   AND (cr.challenge IS NULL OR NOT EXISTS (
         SELECT 1 FROM bluegreen.outbox o WHERE o.kind = 'consent' AND o.row_key ->> 'challenge' = cr.challenge))`;

/** Hydra 1.x -> 2.x: the row-level changes of the flow merge. */
export const HYDRA_MIGRATION_CHANGES: readonly MigrationChange[] = [
  {
    name: 'consents-dropped-by-merge',
    description: 'consent requests with no flow row on green (the flow INSERT ... SELECT is driven by login requests: a consent whose login_challenge is NULL is left behind)',
    report: 'dropped',
    blue: `SELECT c.challenge, CASE WHEN c.login_challenge IS NULL THEN 'login_challenge is NULL' ELSE 'login ' || c.login_challenge END
             FROM public.hydra_oauth2_consent_request c WHERE ${existedAtSnapshot('c', '$1')}`,
    green: `SELECT f.consent_challenge_id, f.login_challenge FROM public.hydra_oauth2_flow f WHERE f.consent_challenge_id IS NOT NULL`,
    quarantine: [{ table: 'public.hydra_oauth2_consent_request', key: `row ->> 'challenge'` }],
    requires: { blue: ['public.hydra_oauth2_consent_request'], green: ['public.hydra_oauth2_flow'] },
  },
  {
    name: 'flow-state-rewrites',
    description: "flows whose v2 state differs from what the v1 rows said (key login:consent; 1 login requested, 2 handled, 3 used, 4 consent requested, 5 granted, 6 used, 128 login rejected, 129 consent rejected)",
    report: 'rewritten',
    blue: V1_FLOW_STATE,
    green: `SELECT f.login_challenge || ':' || coalesce(f.consent_challenge_id, ''), f.state::text FROM public.hydra_oauth2_flow f`,
    quarantine: [],
    requires: { blue: ['public.hydra_oauth2_authentication_request', 'public.hydra_oauth2_consent_request'], green: ['public.hydra_oauth2_flow'] },
  },
];
