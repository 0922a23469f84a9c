// Every failure an operator can act on is an OperatorError: a message, a hint that names the fix,
// and an exit code chosen by cause (documented in README.md and runbooks/exit-codes.md).

/** Exit codes by cause; the numbers are part of the CLI contract. */
export const ExitCode = {
  ok: 0,
  usage: 1,
  config: 2,
  state: 3,
  postgres: 4,
  findings: 5,
  source: 6,
  target: 7,
  cutoverRolledBack: 8,
  /** A bug in migrate itself (sysexits' EX_SOFTWARE): never a Postgres or operator problem. */
  internal: 70,
} as const;

/** One of the documented exit codes. */
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** Base error for everything the operator should read: carries a hint and an exit code. */
export class OperatorError extends Error {
  /** What to do about it, in one sentence. */
  readonly hint: string;
  /** The process exit code this error maps to. */
  readonly exitCode: ExitCodeValue;
  /** Extra structured detail for `--json` output (never secrets). */
  readonly detail: Record<string, unknown>;

  constructor(message: string, opts: { hint: string; exitCode: ExitCodeValue; detail?: Record<string, unknown>; cause?: unknown }) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.hint = opts.hint;
    this.exitCode = opts.exitCode;
    this.detail = opts.detail ?? {};
  }

  /** The JSON shape printed under `error` by `--json`. */
  toJSON(): Record<string, unknown> {
    return { name: this.name, message: this.message, hint: this.hint, exitCode: this.exitCode, ...this.detail };
  }
}

/** Bad command-line arguments. */
export class UsageError extends OperatorError {
  constructor(message: string, hint: string) {
    super(message, { hint, exitCode: ExitCode.usage });
  }
}

/** One config problem, with the path of the offending key. */
export interface ConfigIssue {
  /** Dotted path inside the config file, e.g. `blue.dsn`. */
  path: string;
  /** What is wrong there. */
  message: string;
}

/** The config file is missing, unreadable or invalid; lists every problem at once. */
export class ConfigError extends OperatorError {
  /** All problems found, each with its path. */
  readonly issues: ConfigIssue[];

  constructor(file: string, issues: ConfigIssue[], hint = `fix the listed keys in ${file} and run the command again`) {
    const lines = issues.map((i) => `  - ${i.path || '(root)'}: ${i.message}`).join('\n');
    super(`config ${file} is invalid:\n${lines}`, { hint, exitCode: ExitCode.config, detail: { file, issues } });
    this.issues = issues;
  }
}

/** The run journal or the databases are not in the state this command needs. */
export class StateError extends OperatorError {
  constructor(message: string, hint: string, detail?: Record<string, unknown>) {
    super(message, { hint, exitCode: ExitCode.state, ...(detail ? { detail } : {}) });
  }
}

/** The session that holds the run lock, as pg_stat_activity shows it. */
export interface LockHolder {
  /** Backend pid on blue. */
  pid: number;
  /** Its application_name: `migrate <command>` for ours. */
  application: string;
  /** When that session connected (ISO). */
  since: string | null;
  /** Client address, when over TCP. */
  client: string | null;
}

/** Another command holds the run lock (advisory lock on blue); names who, so the operator can find it. */
export class LockHeldError extends StateError {
  constructor(command: string, holder: LockHolder | null) {
    const who = holder ? ` by ${holder.application || 'a session'} (backend pid ${holder.pid}${holder.client ? ` from ${holder.client}` : ''}${holder.since ? `, connected ${holder.since}` : ''})` : '';
    // `migrate follow` never finishes by itself: its holder is told to stop it, not to wait.
    const wait = holder?.application === 'migrate follow'
      ? '`migrate follow` keeps green caught up and runs until stopped: stop it first (Ctrl-C in its terminal, or `kill -TERM` to its process; it finishes its round, releases the slot and exits 0), then run this command again; follow must always be stopped before `migrate cutover`, which catches up itself before the flip'
      : 'wait for that command to finish (`migrate status` shows the run); one migrate command that writes runs at a time';
    super(
      `${command} refused: the run lock on blue is held${who}`,
      `${wait}. If its process is gone, the lock goes with its session; \`SELECT pg_terminate_backend(${holder?.pid ?? '<pid>'})\` on blue ends a stuck one`,
      { holder },
    );
  }
}

/** Blockers found by plan, lint or validation. */
export class FindingsError extends OperatorError {
  constructor(message: string, hint: string, detail?: Record<string, unknown>) {
    super(message, { hint, exitCode: ExitCode.findings, ...(detail ? { detail } : {}) });
  }
}

/** Which side of the migration a connection belongs to. */
export type Side = 'blue' | 'green';

/** A database side (blue = source, green = target) cannot be reached or refused us. */
export class ConnectionError extends OperatorError {
  constructor(side: Side, message: string, hint: string, cause?: unknown) {
    super(message, { hint, exitCode: side === 'blue' ? ExitCode.source : ExitCode.target, detail: { side }, cause });
  }
}

/** A side's server went away mid-run (shutdown, crash, network cut): names the side, where, and how to continue. */
export class ConnectionLostError extends ConnectionError {
  /** The side that went away. */
  readonly side: Side;
  /** How the connection ended, as the driver or the server said it. */
  readonly reason: string;
  /** `step/unit` it happened in, when known. */
  readonly during: string | null;

  constructor(side: Side, reason: string, opts: { during?: string; resume?: string } = {}, cause?: unknown) {
    super(
      side,
      opts.during ? `${side} went away during ${opts.during} (${reason})` : `lost the connection to ${side} (${reason})`,
      opts.resume ? `bring ${side} back up, then run \`${opts.resume}\`` : `check that ${side} is up, then run the command again (an apply continues with \`migrate apply --resume\`)`,
      cause,
    );
    this.side = side;
    this.reason = reason;
    this.during = opts.during ?? null;
  }
}

/** A statement hit the server's statement_timeout: names the side and the statement (exit 6 for blue, 7 for green). */
export class StatementTimeoutError extends OperatorError {
  /** The side whose server cancelled the statement. */
  readonly side: Side;
  /** The statement's first line (at most 200 characters). */
  readonly statement: string;

  constructor(side: Side, statement: string, opts: { during?: string; resume?: string } = {}, cause?: unknown) {
    super(`${side} cancelled a statement after its statement_timeout${opts.during ? ` during ${opts.during}` : ''}: ${statement}`, {
      hint: `raise statement_timeout for the role or database migrate uses on ${side} (e.g. ALTER ROLE ... SET statement_timeout = 0), then run ${opts.resume ? `\`${opts.resume}\`` : 'the command again'}`,
      exitCode: side === 'blue' ? ExitCode.source : ExitCode.target,
      detail: { side, statement, sqlstate: '57014', during: opts.during ?? null },
      cause,
    });
    this.side = side;
    this.statement = statement;
  }
}

/** An external binary or the migration source failed (exit 6: the source of truth for the change). */
export class SourceError extends OperatorError {
  constructor(message: string, hint: string, detail?: Record<string, unknown>) {
    super(message, { hint, exitCode: ExitCode.source, ...(detail ? { detail } : {}) });
  }
}

/** A Postgres statement failed; shows SQLSTATE, detail, hint and, for migration files, file:line:column. */
export class PostgresError extends OperatorError {
  constructor(message: string, hint: string, detail: Record<string, unknown>, cause?: unknown) {
    super(message, { hint, exitCode: ExitCode.postgres, detail, cause });
  }
}

/** A Postgres failure inside a journalled run: its hint also says how to continue the run once fixed. */
export function withContinuation(err: OperatorError, command: string): OperatorError {
  if (!(err instanceof PostgresError) || err.hint.includes(command)) return err;
  return new PostgresError(err.message, `${err.hint}, then run \`${command}\``, err.detail, err.cause);
}

/** Something that is not the operator's to fix: a bug in migrate (exit 70), never dressed as a Postgres error. */
export class InternalError extends OperatorError {
  constructor(cause: unknown) {
    const e = cause as Error | undefined;
    super(`internal error: ${e?.message ?? String(cause)}`, {
      hint: 'this is a bug in migrate, not in your data or config: report it with this output and `migrate status --json`; nothing more was run after it',
      exitCode: ExitCode.internal,
      detail: { stack: e?.stack?.split('\n').slice(0, 5) },
      cause,
    });
  }
}

/** Every thrown value as an OperatorError: operator errors keep their code, anything else is a bug (70). */
export function asOperatorError(err: unknown): OperatorError {
  return err instanceof OperatorError ? err : new InternalError(err);
}
