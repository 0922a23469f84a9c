// One entry point that turns the config's `migrations` section into a MigrationSource, so commands
// never need to know which kind of folder or tool the application uses.

import { commandSource } from './command.ts';
import { popSource } from './pop.ts';
import { postgresMigrationsSource } from './postgres-migrations.ts';
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
