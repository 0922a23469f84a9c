// Built-in defaults per engine. The Hydra profile knows which tables hold access-removing writes
// and which dirty-row classes its 2.x migrations reject; a config can add rules or replace tables.

import type { CaptureTable, CleanupRule } from './schema.ts';
import { HYDRA_CLEANUP_RULES } from '../fixture/seed.ts';

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
