// What a revocation does to each Hydra schema shape (DESIGN.md "Revocation semantics"), as data.
// Imported by the consumer Worker through src/replay/semantics.ts, so it imports types only.

import type { ProfileSemantics, ReplayProfile } from '../types.ts';

const TOKENS: ProfileSemantics['tokens'] = {
  access: { table: 'hydra_oauth2_access', remove: 'delete' },
  refresh: { table: 'hydra_oauth2_refresh', remove: 'deactivate' },
};

const KINDS: ProfileSemantics['kinds'] = {
  'token-revoke': { scope: 'request', tables: ['access', 'refresh'] },
  'refresh-rotate': { scope: 'token', tables: ['refresh'] },
  'access-remove': { scope: 'token', tables: ['access'] },
};

/** Replay semantics of Hydra's v1 (blue) and v2 (green) schema shapes. */
export const HYDRA_REPLAY: Readonly<Record<ReplayProfile, ProfileSemantics>> = {
  'hydra-v1': {
    tokens: TOKENS,
    kinds: KINDS,
    // Deleting the consent request cascades to its handled row and from there to the tokens.
    consent: { table: 'hydra_oauth2_consent_request', challengeColumn: 'challenge', subjectColumn: 'subject', clientColumn: 'client_id', requestedAtColumn: 'requested_at' },
  },
  'hydra-v2': {
    tokens: TOKENS,
    kinds: KINDS,
    // v2 merged consent into the flow table; tokens' challenge_id references consent_challenge_id ON DELETE CASCADE.
    consent: { table: 'hydra_oauth2_flow', challengeColumn: 'consent_challenge_id', subjectColumn: 'subject', clientColumn: 'client_id', requestedAtColumn: 'requested_at' },
  },
};
