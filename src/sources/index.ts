// One entry point that turns the config's `migrations` section into a MigrationSource, so commands
// never need to know which kind of folder or tool the application uses.

import { commandSource } from './command.ts';
import { popSource } from './pop.ts';
import { postgresMigrationsSource } from './postgres-migrations.ts';
import type { ResolvedConfig } from '../config/load.ts';
import type { MigrationSource, SourceConfig } from './types.ts';

/** Builds the migration source described by the config's `migrations` key. */
export function createSource(cfg: SourceConfig, opts: { greenDsn: string }): MigrationSource {
  switch (cfg.kind) {
    case 'pop':
      return popSource(cfg.dir);
    case 'postgres-migrations':
      return postgresMigrationsSource(cfg.dir);
    case 'command':
      return commandSource(cfg, opts);
  }
}

/** The migration source of a checked config: its folder resolved against the config file's directory. */
export function sourceOf(config: ResolvedConfig): MigrationSource {
  const cfg = config.raw.migrations;
  return createSource(cfg.kind === 'command' ? cfg : { ...cfg, dir: config.migrationsDir ?? cfg.dir }, { greenDsn: config.greenDsn });
}
