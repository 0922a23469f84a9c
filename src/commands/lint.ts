// `migrate lint FILE...` for CI: exit 5 when a lock hazard is found, 0 when the files are clean.
// Without files it lints every migration of the configured source (no database needed).

import path from 'node:path';
import { loadConfig } from '../config/load.ts';
import { sourceOf } from '../sources/index.ts';
import { UsageError } from '../errors.ts';
import { findingLines, lintMigrations, migrationFromFile } from '../lint/index.ts';
import type { CommandResult } from './result.ts';

/** Flags of `migrate lint`. */
export interface LintFlags {
  /** Config file (optional when files are given). */
  config?: string;
  /** Print JSON. */
  json?: boolean;
  /** The application's queries, for the SELECT * check. */
  queries?: string;
  /** Rule ids to skip (added to lint.ignore). */
  ignore?: string[];
}

/** Runs `migrate lint`. */
export async function lintCommand(files: string[], flags: LintFlags): Promise<CommandResult> {
  const config = flags.config ? loadConfig(flags.config) : null;
  if (!files.length && !config) throw new UsageError('nothing to lint', 'pass migration files, or --config to lint the configured migrations');
  let migrations = files.map(migrationFromFile);
  if (!files.length && config) {
    if (config.raw.migrations.kind === 'command') throw new UsageError('the configured source is a command: there is no SQL to lint', 'pass the migration files to `migrate lint FILE...`');
    migrations = await sourceOf(config).all();
  }
  const fromConfig = config?.raw.lint.queriesFile ? path.resolve(path.dirname(config.file), config.raw.lint.queriesFile) : undefined;
  const queriesFile = flags.queries ?? fromConfig;
  const ignore = [...(config?.raw.lint.ignore ?? []), ...(flags.ignore ?? [])];
  // Rewrites show the batch size in-place mode would use: the config's, else the default.
  const { findings } = await lintMigrations(migrations, { ignore, ...(queriesFile ? { queriesFile } : {}), ...(config ? { batchRows: config.raw.inPlace.backfillBatchRows } : {}) });
  const exitCode = findings.length ? 5 : 0;
  const text = findings.length ? `${findingLines(findings).join('\n')}\n${findings.length} finding(s) in ${migrations.length} file(s)` : `${migrations.length} file(s) clean`;
  return { exitCode, json: { ok: !findings.length, exitCode, files: migrations.length, findings }, text };
}
