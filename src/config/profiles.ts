// Built-in defaults per engine. The Hydra profile knows which tables hold access-removing writes
// and which dirty-row classes its 2.x migrations reject; a config can add rules or replace tables.

import type { CaptureTable, CleanupRule } from './schema.ts';

/** Defaults a profile contributes to the resolved config. */
export interface ProfileDefaults {
  /** Tables whose revoking writes the capture step records. */
  captureTables: CaptureTable[];
  /** Cleanup rules for dirty rows the DDL cannot reveal. */
  cleanupRules: CleanupRule[];
}

const hydraTokenTable = (table: string, kind: 'access' | 'refresh'): CaptureTable => ({
  table,
  kind,
  key: ['signature'],
  activeColumn: 'active',
  extraColumns: ['request_id', 'subject', 'client_id'],
});

const PIPE_LISTS = ['redirect_uris', 'grant_types', 'response_types', 'audience'] as const;

/**
 * Hydra's dirty-row classes its 2.x migrations reject that no foreign key reveals (FK orphans are
 * derived from the catalog instead); each rule is named after the fixture's dirty class it finds.
 */
export const HYDRA_CLEANUP_RULES: readonly CleanupRule[] = [
  {
    name: 'duplicate-consent',
    table: 'public.hydra_oauth2_consent_request',
    where:
      't.login_challenge IS NOT NULL AND EXISTS (SELECT 1 FROM public.hydra_oauth2_consent_request n ' +
      'WHERE n.login_challenge = t.login_challenge AND (n.requested_at, n.challenge) > (t.requested_at, t.challenge))',
    reason: 'a newer consent request exists for the same login; the v2 flow table holds one consent per login (primary key login_challenge)',
  },
  {
    name: 'unhandled-login',
    table: 'public.hydra_oauth2_consent_request',
    where:
      't.login_challenge IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.hydra_oauth2_authentication_request_handled h ' +
      'WHERE h.challenge = t.login_challenge)',
    reason: 'the login request of this consent was never handled; the v2 flow state would be NULL (state NOT NULL)',
  },
  {
    name: 'invalid-json',
    table: 'public.hydra_oauth2_consent_request_handled',
    where:
      'NOT bluegreen_quarantine.is_json(t.session_access_token) OR NOT bluegreen_quarantine.is_json(t.session_id_token) ' +
      'OR NOT bluegreen_quarantine.is_json(t.error)',
    reason: 'session or error text is not valid JSON; the v2 flow migration casts it to jsonb',
  },
  {
    name: 'pipe-quote',
    table: 'public.hydra_client',
    where: PIPE_LISTS.map((c) => `t.${c} ~ '["\\\\]'`).join(' OR '),
    reason: 'pipe-delimited list contains a quote or backslash; the v2 cast to jsonb would fail or change the value',
  },
];

/** Defaults for a profile name from the config. */
export function profileDefaults(profile: 'hydra' | 'none'): ProfileDefaults {
  if (profile === 'none') return { captureTables: [], cleanupRules: [] };
  return {
    captureTables: [
      hydraTokenTable('public.hydra_oauth2_access', 'access'),
      hydraTokenTable('public.hydra_oauth2_refresh', 'refresh'),
      { table: 'public.hydra_oauth2_consent_request_handled', kind: 'consent', key: ['challenge'], extraColumns: [] },
    ],
    cleanupRules: HYDRA_CLEANUP_RULES.map((r) => ({ ...r })),
  };
}
