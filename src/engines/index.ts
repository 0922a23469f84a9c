// The config names an engine once (`profile`); this resolves it, and the version pair, into what
// the steps use. One vocabulary: `profile` is the engine, and replay semantics are named
// `<engine>-<version>` after the sides of its version pair (`replay.profile` picks green's side).

import type { CaptureTable } from '../config/schema.ts';
import type { InvariantSpec } from '../cutover/schema.ts';
import { HYDRA } from './hydra/index.ts';
import type { AccessCarrier, Conversion, EngineCleanupRule, Engine, MigrationChange, NullRewrite, PostMigrationRepair, ReplayProfile, StreamMapping, VersionPair } from './types.ts';

/** Engines by config name; `none` knows nothing (everything comes from the config). */
export const ENGINES: Readonly<Record<'hydra' | 'none', Engine>> = {
  hydra: HYDRA,
  none: { name: 'none', description: 'no engine knowledge: capture tables, rules and invariants come from the config', pairs: [] },
};

/** The engine knowledge a run uses, resolved once from the config. */
export interface ResolvedEngine {
  /** Engine name (config `profile`). */
  name: string;
  /** "v1 -> v2", or null for `none`. */
  versions: string | null;
  /** Capture tables: blue (old shape) and green after cutover (new shape). */
  capture: { blue: readonly CaptureTable[]; green: readonly CaptureTable[] };
  /** Old-shape tables the engine writes (the stream's publication); empty: every copied table. */
  writes: readonly string[];
  /** How staged changes become rows of the new shape; null: they are staged only. */
  streamMapping: StreamMapping | null;
  /** Cleanup rules the engine brings (before configured ones). */
  cleanupRules: readonly EngineCleanupRule[];
  /** Dangling references followed to NULL instead of quarantined. */
  rewrites: readonly NullRewrite[];
  /** Rows that grant access, for "access changes". */
  accessCarriers: readonly AccessCarrier[];
  /** Invariants the engine checks on every validation. */
  invariants: readonly InvariantSpec[];
  /** Columns compared through a conversion. */
  conversions: readonly Conversion[];
  /** Whole-row changes the migrations make on purpose, listed by validation. */
  changes: readonly MigrationChange[];
  /** Fixes the migrate step runs on green after the last migration. */
  repairs: readonly PostMigrationRepair[];
  /** Replay semantics: into green (config `replay.profile`) and into blue on a rollback. */
  replay: { green: ReplayProfile; blue: ReplayProfile };
}

/** Every version pair of every engine (to map a replay side to its counterpart). */
function allPairs(): VersionPair[] {
  return Object.values(ENGINES).flatMap((e) => [...e.pairs]);
}

/**
 * Resolves `profile` (engine) and `replay.profile` (green's side). Replay into blue uses the old
 * side of the pair whose new side green has; when green keeps the old shape (`replay.profile` is
 * an old side), blue is replayed with the same semantics.
 */
export function resolveEngine(profile: 'hydra' | 'none', replayProfile: ReplayProfile): ResolvedEngine {
  const engine = ENGINES[profile];
  const pair = engine.pairs[0];
  const counterpart = allPairs().find((p) => p.replay.green === replayProfile)?.replay.blue ?? replayProfile;
  return {
    name: engine.name,
    versions: pair ? `${pair.from} -> ${pair.to}` : null,
    capture: pair?.capture ?? { blue: [], green: [] },
    writes: pair?.writes ?? [],
    streamMapping: pair?.streamMapping ?? null,
    cleanupRules: pair?.cleanup.rules ?? [],
    rewrites: pair?.cleanup.rewrites ?? [],
    accessCarriers: pair?.cleanup.accessCarriers ?? [],
    invariants: pair?.invariants ?? [],
    conversions: pair?.conversions ?? [],
    changes: pair?.changes ?? [],
    repairs: pair?.repairs ?? [],
    replay: { green: replayProfile, blue: counterpart },
  };
}
