// The config's `profile` names an engine; what the engine knows lives in src/engines (one module per
// engine). This keeps the defaults view older callers (tests, tools) read: capture tables on blue
// and the engine's cleanup rules.

import { resolveEngine } from '../engines/index.ts';
import type { EngineCleanupRule } from '../engines/types.ts';
import type { CaptureTable } from './schema.ts';

export { HYDRA_CLEANUP_RULES } from '../engines/hydra/cleanup.ts';

/** Defaults a profile contributes to the resolved config. */
export interface ProfileDefaults {
  /** Tables whose revoking writes the capture step records on blue. */
  captureTables: CaptureTable[];
  /** Cleanup rules for dirty rows the DDL cannot reveal (with their tie-breaks). */
  cleanupRules: EngineCleanupRule[];
}

/** Defaults for a profile name from the config, read from its engine module. */
export function profileDefaults(profile: 'hydra' | 'none'): ProfileDefaults {
  const engine = resolveEngine(profile, 'hydra-v2');
  return { captureTables: [...engine.capture.blue], cleanupRules: engine.cleanupRules.map((r) => ({ ...r })) };
}
