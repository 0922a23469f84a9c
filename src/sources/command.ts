// Lets the application's own migration tool (e.g. `hydra migrate sql up`) change green: an argv
// array spawned without a shell (no quoting bugs, no injection), the green DSN in its environment,
// a timeout that kills the whole process group, and output redacted before anyone sees it. The
// command decides itself what is pending, so it appears as one pseudo-migration.

import { spawn } from 'node:child_process';
import { redact, redactValues } from '../db/redact.ts';
import { SourceError } from '../errors.ts';
import type { Migration, MigrationSource, SourceConfig } from './types.ts';

/** The `command` variant of the source config. */
export type CommandConfig = Extract<SourceConfig, { kind: 'command' }>;

const DEFAULT_TIMEOUT_SECONDS = 3600;
const DEFAULT_DSN_ENV = 'DATABASE_URL';
// After SIGTERM the group gets this long to exit before SIGKILL.
const KILL_GRACE_MS = 5000;
const TAIL_LINES = 20;
// Only the end of the output matters for an error message; keep memory bounded on chatty tools.
const KEEP_CHARS = 64 * 1024;

function passwordOf(dsn: string): string[] {
  try {
    const pw = decodeURIComponent(new URL(dsn).password);
    return pw ? [pw] : [];
  } catch {
    return [];
  }
}

function tail(text: string, lines: number): string {
  return text.replace(/\s+$/, '').split('\n').slice(-lines).join('\n');
}

/** Spawns argv once; resolves on exit code 0, otherwise rejects with a SourceError. */
function run(cfg: CommandConfig, greenDsn: string, label: string): Promise<void> {
  const [file, ...args] = cfg.argv;
  if (file === undefined) return Promise.reject(new SourceError('migrations.argv is empty', 'set migrations.argv to the command and its arguments'));
  const secrets = passwordOf(greenDsn);
  const clean = (s: string): string => redactValues(s, secrets);
  const timeoutSeconds = cfg.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      shell: false,
      detached: true, // its own process group, so a timeout also kills what it started
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...cfg.env, [cfg.dsnEnv ?? DEFAULT_DSN_ENV]: greenDsn },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout = (stdout + d).slice(-KEEP_CHARS)));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-KEEP_CHARS)));

    let settled = false;
    let timedOut = false;
    let killTimer: NodeJS.Timeout | undefined;
    const killGroup = (signal: NodeJS.Signals): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, signal);
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
    }, timeoutSeconds * 1000);
    const settle = (err?: SourceError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(killTimer);
      if (err) reject(err);
      else resolve();
    };
    const outputTail = (): string => {
      // Many tools log errors to stdout; fall back to it when stderr is silent.
      const [name, text] = stderr.trim() ? ['stderr', stderr] : ['stdout', stdout];
      return text.trim() ? `\nlast ${TAIL_LINES} lines of ${name}:\n${clean(tail(text, TAIL_LINES))}` : '';
    };

    child.on('error', (err: NodeJS.ErrnoException) => {
      settle(new SourceError(`cannot start migration command \`${label}\` (${err.code ?? clean(err.message)})`, `check that ${file} is installed and on PATH, or give its absolute path in migrations.argv`, { command: label }));
    });
    // A grandchild that escaped the group may hold the pipes open; after a timeout do not wait for it.
    child.on('exit', () => {
      if (timedOut) {
        child.stdout.destroy();
        child.stderr.destroy();
      }
    });
    child.on('close', (code, signal) => {
      if (timedOut) {
        settle(new SourceError(`migration command \`${label}\` timed out after ${timeoutSeconds}s; its process group was killed${outputTail()}`, 'raise migrations.timeoutSeconds, or find what the command waits for (a lock on green?)', { command: label, timeoutSeconds }));
      } else if (code === 0) {
        settle();
      } else {
        const how = code === null ? `was killed by ${signal ?? 'a signal'}` : `exited with code ${code}`;
        settle(
          new SourceError(`migration command \`${label}\` ${how}${outputTail()}`, 'fix what the command reports above, then rerun with --resume (the command decides itself what is already applied)', {
            command: label,
            exitCode: code,
            signal,
            stderrTail: clean(tail(stderr, TAIL_LINES)),
          }),
        );
      }
    });
  });
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
