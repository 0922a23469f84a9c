// The pipe-delimited lists of Hydra 1.x that 2.x turns into JSON arrays by pasting the text into
// `'["' || replace(list, '|', '","') || '"]'`: the client's own lists, and the login and consent
// lists that the flow merge copies into hydra_oauth2_flow as text and a later migration converts
// there. Cleanup (escaping) and validation (comparing through the conversion) read the same lists.

/** The client table. */
export const CLIENT = 'public.hydra_client';

/** The eight client lists 2.x converts (v1.11 has all of them; our fixture has some). */
export const CLIENT_LISTS = [
  'redirect_uris',
  'grant_types',
  'response_types',
  'audience',
  'allowed_cors_origins',
  'contacts',
  'request_uris',
  'post_logout_redirect_uris',
] as const;

/** A v1 list the flow merge carries into the flow table, where it is converted. */
export interface FlowList {
  /** The v1 table, `schema.table`. */
  table: string;
  /** The list column (same name in the flow table). */
  column: string;
  /** The v1 key column, and the flow column holding the same key. */
  key: { blue: string; green: string };
}

const LOGIN = { blue: 'challenge', green: 'login_challenge' };
const CONSENT = { blue: 'challenge', green: 'consent_challenge_id' };

/** Lists the merge copies from the login request, the handled login and the handled consent. */
export const FLOW_LISTS: readonly FlowList[] = [
  { table: 'public.hydra_oauth2_authentication_request', column: 'requested_scope', key: LOGIN },
  { table: 'public.hydra_oauth2_authentication_request', column: 'requested_at_audience', key: LOGIN },
  { table: 'public.hydra_oauth2_authentication_request_handled', column: 'amr', key: LOGIN },
  { table: 'public.hydra_oauth2_consent_request_handled', column: 'granted_scope', key: CONSENT },
  { table: 'public.hydra_oauth2_consent_request_handled', column: 'granted_at_audience', key: CONSENT },
];
