// Where Hydra records access-removing writes: the token tables on both sides, consent in the v1
// handled table (blue) and in the v2 flow table (green, captured after cutover so a rollback to
// blue replays what green revoked).

import type { CaptureTable } from '../../config/schema.ts';

const token = (table: string, kind: 'access' | 'refresh'): CaptureTable => ({
  table,
  kind,
  key: ['signature'],
  activeColumn: 'active',
  extraColumns: ['request_id', 'subject', 'client_id'],
});

/** Blue (v1 shape): tokens, and consent in consent_request_handled. */
export const HYDRA_V1_CAPTURE: readonly CaptureTable[] = [
  token('public.hydra_oauth2_access', 'access'),
  token('public.hydra_oauth2_refresh', 'refresh'),
  { table: 'public.hydra_oauth2_consent_request_handled', kind: 'consent', key: ['challenge'], extraColumns: [] },
];

/** Green (v2 shape): tokens as on blue, consent in the flow table. */
export const HYDRA_V2_CAPTURE: readonly CaptureTable[] = [
  token('public.hydra_oauth2_access', 'access'),
  token('public.hydra_oauth2_refresh', 'refresh'),
  { table: 'public.hydra_oauth2_flow', kind: 'consent', key: ['consent_challenge_id'], extraColumns: ['subject', 'client_id'] },
];
