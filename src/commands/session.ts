// Opens config and connections for a command, and always closes them.

import os from 'node:os';
import { loadConfig, type ResolvedConfig } from '../config/load.ts';
import { openSession } from '../runner.ts';
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

/** Loads the config, connects, runs `fn`, closes. */
export async function withContext<T>(opts: { config: string | ResolvedConfig; run?: Partial<RunOptions> }, fn: (ctx: StepContext) => Promise<T>): Promise<T> {
  const config = typeof opts.config === 'string' ? loadConfig(opts.config) : opts.config;
  const session = await openSession(config, runOptions(config, opts.run));
  try {
    return await fn(session.ctx);
  } finally {
    await session.close();
  }
}
