// Lets the application's own migration tool (e.g. `hydra migrate sql up`) change green: an argv
// array spawned without a shell (no quoting bugs, no injection) by the process runner, the green DSN
// in its environment, a timeout that stops the whole process group, and output redacted before
// anyone sees it. The command decides itself what is pending, so it appears as one pseudo-migration.

import { redact } from '../db/redact.ts';
import { SourceError } from '../errors.ts';
import { ProcessError, runProcess } from '../process.ts';
import type { Migration, MigrationSource, SourceConfig } from './types.ts';

/** The `command` variant of the source config. */
export type CommandConfig = Extract<SourceConfig, { kind: 'command' }>;

const DEFAULT_TIMEOUT_SECONDS = 3600;
const DEFAULT_DSN_ENV = 'DATABASE_URL';
// Only the end of the output matters for an error message; keep memory bounded on chatty tools.
const KEEP_BYTES = 64 * 1024;

/** Spawns argv once; resolves on exit code 0, otherwise rejects with a SourceError. */
async function run(cfg: CommandConfig, greenDsn: string, label: string): Promise<void> {
  if (cfg.argv[0] === undefined) throw new SourceError('migrations.argv is empty', 'set migrations.argv to the command and its arguments');
  const timeoutSeconds = cfg.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
  try {
    // The green DSN's password is in the child's environment, so the runner redacts it from any output it shows.
    await runProcess(cfg.argv, { env: { ...cfg.env, [cfg.dsnEnv ?? DEFAULT_DSN_ENV]: greenDsn }, timeoutMs: timeoutSeconds * 1000, maxBytes: KEEP_BYTES, name: 'migration command' });
  } catch (err) {
    if (!(err instanceof ProcessError)) throw err;
    switch (err.reason) {
      case 'start':
        throw new SourceError(`cannot start migration command \`${label}\` (${err.errno})`, `check that ${err.program} is installed and on PATH, or give its absolute path in migrations.argv`, { command: label });
      case 'timeout':
        throw new SourceError(`migration command \`${label}\` timed out after ${timeoutSeconds}s; its process group was killed${err.output}`, 'raise migrations.timeoutSeconds, or find what the command waits for (a lock on green?)', { command: label, timeoutSeconds });
      case 'exit': {
        const how = err.status === null ? `was killed by ${err.signal ?? 'a signal'}` : `exited with code ${err.status}`;
        throw new SourceError(`migration command \`${label}\` ${how}${err.output}`, 'fix what the command reports above, then rerun with --resume (the command decides itself what is already applied)', {
          command: label,
          exitCode: err.status,
          signal: err.signal,
          stderrTail: err.stderrTail,
        });
      }
      default:
        throw err;
    }
  }
}

/** An external migration command as a MigrationSource. */
export function commandSource(cfg: CommandConfig, opts: { greenDsn: string }): MigrationSource {
  const label = redact(cfg.argv.join(' '));
  const dsnEnv = cfg.dsnEnv ?? DEFAULT_DSN_ENV;
  const pseudo: Migration = { id: 'command', name: label, file: null, sql: '', transaction: 'none' };
  return {
    kind: 'command',
    describe: () => `the command \`${label}\`, run with the green DSN in $${dsnEnv}; it decides itself what is pending`,
    all: async () => [pseudo],
    pending: async () => [pseudo],
    apply: () => run(cfg, opts.greenDsn, label),
  };
}
