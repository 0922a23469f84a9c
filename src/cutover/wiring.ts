// What the cutover steps need besides the step context: where targets and KV namespaces are, the
// revocation queue, the watch window. Built once, here, by `migrate cutover`, `migrate rollback`,
// `migrate plan --through cutover` and the demo alike, so none of them wires the phase by hand.

import type { ResolvedConfig } from '../config/load.ts';
import { StateError } from '../errors.ts';
import type { ConfiguredQueue } from '../queue/from-config.ts';
import type { StepContext } from '../steps/step.ts';
import type { ActionEnv } from './actions.ts';
import { wranglerKv, type KvResolver } from './kv.ts';
import type { TargetSpec, WatchSpec } from './schema.ts';

/** The cutover steps' dependencies. */
export interface CutoverWiring {
  /** Databases, KV namespaces and environment the target, lever and probe actions use. */
  env: ActionEnv;
  /** The targets, flipped in this order. */
  targets: readonly TargetSpec[];
  /** The watch window (null: none). */
  watch: WatchSpec | null;
  /** The revocation queue drained after the flip, when one is configured. */
  queue: ConfiguredQueue | null;
  /** Called just before the drain after the flip (the demo resumes its paused consumer there). */
  beforeDrain?: () => Promise<void>;
}

/** Choices a caller may override (tests, the demo). */
export interface WiringOptions {
  /** KV namespaces (default: wrangler --remote). */
  kv?: KvResolver;
  /** Environment for `env:NAME` databases (default: process.env). */
  env?: NodeJS.ProcessEnv;
  /** Watch window (default: config `watch`; null: none). */
  watch?: WatchSpec | null;
  /** Targets (default: config `cutover.targets`). */
  targets?: TargetSpec[];
  /** The revocation queue (default: none; the command passes queueFromConfig's). */
  queue?: ConfiguredQueue | null;
  /** See CutoverWiring.beforeDrain. */
  beforeDrain?: () => Promise<void>;
}

/** The wiring for a config. */
export function cutoverWiring(config: ResolvedConfig, opts: WiringOptions = {}): CutoverWiring {
  return {
    env: { blueDsn: config.blueDsn, greenDsn: config.greenDsn, kv: opts.kv ?? wranglerKv, env: opts.env ?? process.env },
    targets: opts.targets ?? config.raw.cutover?.targets ?? [],
    watch: opts.watch === undefined ? (config.raw.watch ?? null) : opts.watch,
    queue: opts.queue ?? null,
    ...(opts.beforeDrain ? { beforeDrain: opts.beforeDrain } : {}),
  };
}

/** The wiring of a step context; a cutover step run without it is a programming error. */
export function wiringOf(ctx: StepContext): CutoverWiring {
  if (!ctx.cutover) throw new StateError('the cutover steps ran without their wiring', 'this is a bug in migrate: report it with the command you ran');
  return ctx.cutover;
}
