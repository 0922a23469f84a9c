// Opens config and connections for a command, and always closes them.

import os from 'node:os';
import { loadConfig, type ResolvedConfig } from '../config/load.ts';
import { openSession } from '../runner.ts';
import { acquireRunLock } from '../state/journal.ts';
import type { UnitHooks } from '../drill.ts';
import type { RunOptions, StepContext } from '../steps/step.ts';

/** Options every database command accepts. */
export interface CommonOptions {
  /** Path of the config file. */
  config: string;
  /** Print one JSON document. */
  json?: boolean;
}

/** Default run options, overridden by flags. */
export function runOptions(config: ResolvedConfig, overrides: Partial<RunOptions> = {}): RunOptions {
  return { acceptNewSnapshot: false, restart: false, resume: false, verify: 'sample', jobs: config.raw.snapshot.jobs ?? Math.max(1, os.availableParallelism()), ...overrides };
}

/** Loads the config, connects, takes the run lock when `lock` names a command that writes, runs `fn`, closes. */
export async function withContext<T>(opts: { config: string | ResolvedConfig; run?: Partial<RunOptions>; lock?: string; hooks?: UnitHooks }, fn: (ctx: StepContext) => Promise<T>): Promise<T> {
  const config = typeof opts.config === 'string' ? loadConfig(opts.config) : opts.config;
  const session = await openSession(config, runOptions(config, opts.run));
  if (opts.hooks) session.ctx.hooks = opts.hooks;
  try {
    if (opts.lock) await acquireRunLock(session.ctx.blue, opts.lock);
    return await fn(session.ctx);
  } finally {
    await session.close();
  }
}
