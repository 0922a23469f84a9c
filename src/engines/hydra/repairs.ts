// Hydra 1.11 stores "no error" as the text `{}` (or, in old rows, ``) in the handled login and
// consent tables, and reads both back as no error. The 2.x flow merge tests `error IS NOT NULL`
// first, so every accepted login becomes state 128 (login rejected) and 2.x, which grants only
// from states 5 and 6, forgets every remembered consent. The repair follows the merge's intent:
// it recomputes the state with the merge's own order of tests, from the columns the merge filled,
// reading `{}` and `` as no error. It touches only rows whose error text is exactly one of those,
// so a genuine error (or a corruption by some other migration) is left for validation to see. Only
// rows with a handled login are selected: 2.x's CHECK needs `login_error` for states 2 to 6.

import type { PostMigrationRepair } from '../types.ts';

/** True when an error column holds what Hydra 1.11 wrote for "no error" (text or jsonb alike). */
const NO_ERROR = (col: string): string => `(${col} IS NOT NULL AND ${col}::text IN ('{}', ''))`;
/** True when an error column holds a real error. */
const REAL_ERROR = (col: string): string => `(${col} IS NOT NULL AND ${col}::text NOT IN ('{}', ''))`;

/**
 * The merge's order of tests (login error, consent error, consent used, consent handled, consent
 * requested, login used, login handled) with `{}` read as no error. A consent was handled when the
 * merge carried its error text (v1 writes one for every handled consent); a login was handled
 * whenever a row reaches this (its error text is `{}`).
 */
const FLOW_STATE = `CASE
    WHEN ${REAL_ERROR('t.login_error')} THEN 128
    WHEN ${REAL_ERROR('t.consent_error')} THEN 129
    WHEN t.consent_error IS NOT NULL AND coalesce(t.consent_was_used, false) THEN 6
    WHEN t.consent_error IS NOT NULL THEN 5
    WHEN t.consent_challenge_id IS NOT NULL THEN 4
    WHEN coalesce(t.login_was_used, false) THEN 3
    ELSE 2
  END`;

/** Post-migration repairs of Hydra 1.11 -> 2.x. */
export const HYDRA_REPAIRS: readonly PostMigrationRepair[] = [
  {
    name: 'flow-state-no-error',
    reason: "the flow merge read Hydra 1.11's '{}' (no error) as an error and set state 128/129; recomputed with '{}' read as no error",
    table: 'public.hydra_oauth2_flow',
    requires: ['state', 'login_error', 'consent_error', 'consent_was_used', 'consent_challenge_id', 'login_was_used'],
    column: 'state',
    where: `((t.state = 128 AND ${NO_ERROR('t.login_error')}) OR (t.state = 129 AND ${NO_ERROR('t.consent_error')} AND ${NO_ERROR('t.login_error')}))`,
    set: FLOW_STATE,
  },
];
