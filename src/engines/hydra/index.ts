// Ory Hydra, in one place: everything pg-bluegreen knows about upgrading Hydra 1.x (blue) to 2.x
// (green). Steps, replay, validation and cutover read it from here, never from their own copies.
// The invariants stay in src/validate/hydra-invariants.ts for now (being reworked there) and are
// referenced, not copied. The fixture is named by path only: dev and test code, never imported here.

import type { Engine, VersionPair } from '../types.ts';
import { HYDRA_INVARIANTS } from '../../validate/hydra-invariants.ts';
import { HYDRA_V1_CAPTURE, HYDRA_V2_CAPTURE } from './capture.ts';
import { HYDRA_ACCESS_CARRIERS, HYDRA_CLEANUP_RULES, HYDRA_REWRITES } from './cleanup.ts';
import { HYDRA_CONVERSIONS, HYDRA_MIGRATION_CHANGES } from './conversions.ts';
import { HYDRA_REPAIRS } from './repairs.ts';
import { HYDRA_STREAM_MAPPING } from './stream-map/index.ts';

/** Every table Hydra 1.x writes while it serves (clients, keys, sessions, flows, tokens, logout); those present on blue are streamed. */
const HYDRA_V1_WRITES = [
  'hydra_client', 'hydra_jwk', 'hydra_oauth2_authentication_session', 'hydra_oauth2_obfuscated_authentication_session',
  'hydra_oauth2_authentication_request', 'hydra_oauth2_authentication_request_handled', 'hydra_oauth2_consent_request', 'hydra_oauth2_consent_request_handled',
  'hydra_oauth2_access', 'hydra_oauth2_refresh', 'hydra_oauth2_code', 'hydra_oauth2_oidc', 'hydra_oauth2_pkce', 'hydra_oauth2_logout_request',
  'hydra_oauth2_jti_blacklist', 'hydra_oauth2_trusted_jwt_bearer_issuer',
].map((t) => `public.${t}`);

/** Hydra 1.11 -> 2.x. */
export const HYDRA_V1_TO_V2: VersionPair = {
  from: 'v1',
  to: 'v2',
  capture: { blue: HYDRA_V1_CAPTURE, green: HYDRA_V2_CAPTURE },
  writes: HYDRA_V1_WRITES,
  streamMapping: HYDRA_STREAM_MAPPING,
  cleanup: { rules: HYDRA_CLEANUP_RULES, rewrites: HYDRA_REWRITES, accessCarriers: HYDRA_ACCESS_CARRIERS },
  replay: { blue: 'hydra-v1', green: 'hydra-v2' },
  invariants: HYDRA_INVARIANTS,
  // Validation compares these through the conversion and lists the merge's own changes (never failed by themselves).
  conversions: HYDRA_CONVERSIONS,
  changes: HYDRA_MIGRATION_CHANGES,
  // After the last migration: states the flow merge got wrong by reading 1.11's '{}' as an error.
  repairs: HYDRA_REPAIRS,
  fixture: { blueSchema: 'sql/fixtures/hydra-v1/schema.sql', migrations: 'sql/fixtures/hydra-v2-migrations', seeder: 'support/fixture/seed.ts' },
};

/** The Hydra engine (config `profile: "hydra"`). */
export const HYDRA: Engine = {
  name: 'hydra',
  description: 'Ory Hydra (or a service with its schema): v1.11 -> v2.x',
  pairs: [HYDRA_V1_TO_V2],
};
