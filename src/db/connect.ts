// Connections to blue and green. Connection failures become ConnectionError (exit 6 for blue, 7 for
// green) with the DSN's password removed; statement failures become PostgresError with SQLSTATE,
// detail and hint, as graphile-migrate reports them. Every client remembers its side, and every
// error it raises carries that side and the statement, so a connection lost mid-run (even through a
// raw `db.query` or a COPY stream) is reported as "<side> went away" with the side's exit code,
// never as a Postgres error with nothing to act on. Every session also asks its server to stop its
// work once we are gone (client_connection_check_interval) and not to hold an idle transaction for
// ever: a SIGKILLed run must not leave statements running on green for the resume to wait on.

import pg from 'pg';
import { ConnectionError, ConnectionLostError, InternalError, OperatorError, PostgresError, StatementTimeoutError, type Side } from '../errors.ts';
import { describeDsn, redact } from './redact.ts';

/** A connected client that knows which side it talks to. */
export type Db = pg.Client;

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'ECONNRESET', 'EHOSTUNREACH']);
/** Socket errors that mean an established connection is gone. */
const LOST_SOCKET_CODES = new Set([...CONNECTION_CODES, 'EPIPE', 'ECONNABORTED']);
/** SQLSTATEs of a server that ended our session: admin_shutdown, crash_shutdown, cannot_connect_now. */
const LOST_SQLSTATES = new Set(['57P01', '57P02', '57P03']);
/** What node-postgres says (as plain Errors) once the socket is gone or the client is unusable. */
const LOST_MESSAGES = /^(Connection terminated( unexpectedly)?|Client has encountered a connection error and is not queryable|Client was closed and is not queryable)$|^(read|write) (ECONNRESET|EPIPE)/;

/**
 * How long our own sessions may sit idle inside a transaction. None of our transactions waits on a
 * person or on a long computation between statements, so 10 minutes is generous; it bounds how long a
 * stalled or partitioned run (a dead socket the kernel has not noticed) keeps its locks on a side.
 * Sessions that hold a snapshot open on purpose (exporter, blue copy workers) pass `holdsSnapshot`.
 */
export const IDLE_IN_TRANSACTION_TIMEOUT_MS = 600_000;
/** How often the server checks, while running one of our statements, that we are still there (PG 14+). */
export const CLIENT_CHECK_INTERVAL_MS = 1000;

/**
 * One round trip at connect time: the idle-in-transaction bound, and on PG 14+ the client check. A
 * startup `options` string cannot do it (an unknown GUC there fails the connection on PG 13), and a
 * platform without the kernel support refuses a non-zero interval: then the server simply does not check.
 */
const SESSION_GUARDS = (idleMs: number): string => `DO $guards$ BEGIN
  PERFORM set_config('idle_in_transaction_session_timeout', '${idleMs}', false);
  IF current_setting('server_version_num')::int >= 140000 THEN
    BEGIN
      PERFORM set_config('client_connection_check_interval', '${CLIENT_CHECK_INTERVAL_MS}', false);
    EXCEPTION WHEN invalid_parameter_value THEN NULL;
    END;
  END IF;
END $guards$`;

/** Where an error came from: the side of the client that raised it and the statement it was running. */
interface ErrorOrigin {
  side: Side;
  statement: string | null;
}

const originOfError = new WeakMap<object, ErrorOrigin>();
const sideOfClient = new WeakMap<object, Side>();
/** The first contextualised loss per side: later failures on that side are the same event. */
const lostSides = new Map<Side, ConnectionLostError>();

/** Records which side (and statement) an error came from; the first record wins. Returns `err`. */
export function noteOrigin(err: unknown, side: Side, statement?: string | null): unknown {
  if (err && typeof err === 'object' && !originOfError.has(err)) originOfError.set(err, { side, statement: statement ?? null });
  return err;
}

/** The side a client was opened for (undefined for a client not opened by {@link connect}). */
export function sideOf(db: Db): Side | undefined {
  return sideOfClient.get(db);
}

function statementText(arg: unknown): string | null {
  if (typeof arg === 'string') return arg;
  const text = (arg as { text?: unknown } | null)?.text;
  return typeof text === 'string' ? text : null;
}

/** The first line of a statement, at most 200 characters, for messages. */
export function statementHead(sql: string): string {
  const line = sql.split('\n').map((l) => l.trim()).find((l) => l !== '' && !l.startsWith('--')) ?? '';
  return line.length > 200 ? `${line.slice(0, 200)}...` : line;
}

/** True when `err` means an established connection is gone (socket, server shutdown, unusable client). */
export function isConnectionLoss(err: unknown): boolean {
  if (err instanceof ConnectionLostError) return true;
  const e = err as { code?: unknown; message?: unknown } | null;
  if (!e || typeof e !== 'object') return false;
  const code = typeof e.code === 'string' ? e.code : '';
  if (LOST_SQLSTATES.has(code) || code.startsWith('08') || LOST_SOCKET_CODES.has(code)) return true;
  return typeof e.message === 'string' && LOST_MESSAGES.test(e.message);
}

function isStatementTimeout(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  return !!e && e.code === '57014' && typeof e.message === 'string' && e.message.includes('statement timeout');
}

/** Tags every error a client raises with its side and the statement, so raw `db.query` calls are attributable too. */
function rememberSide(client: pg.Client, side: Side): void {
  sideOfClient.set(client, side);
  // A server going away surfaces as an 'error' event (the same Error every pending query gets);
  // without a listener pg would crash the process.
  client.on('error', (err) => void noteOrigin(err, side));
  const raw = client.query.bind(client) as (...args: unknown[]) => unknown;
  const tagged = (...args: unknown[]): unknown => {
    const out = raw(...args);
    return out instanceof Promise ? out.catch((err: unknown) => Promise.reject(noteOrigin(err, side, statementText(args[0])))) : out;
  };
  Object.assign(client, { query: tagged });
}

/** Options of {@link connect}. */
export interface ConnectOptions {
  /** The session keeps an exported or imported snapshot open while idle: no idle-in-transaction timeout. */
  holdsSnapshot?: boolean;
  /** A logical replication connection (`replication=database`): replication commands and plain SQL. */
  replication?: boolean;
}

/** Opens one connection to `dsn`; failures name the side and never echo the password. */
export async function connect(side: Side, dsn: string, applicationName = `migrate-${side}`, opts: ConnectOptions = {}): Promise<Db> {
  let client: pg.Client;
  try {
    client = new pg.Client({ connectionString: dsn, application_name: applicationName, connectionTimeoutMillis: 10_000, ...(opts.replication ? { replication: 'database' } : {}) });
  } catch (err) {
    throw new ConnectionError(side, `the ${side} DSN cannot be parsed: ${redact(String((err as Error).message))}`, `check ${side}.dsn in the config`, err);
  }
  rememberSide(client, side);
  try {
    await client.connect();
  } catch (err) {
    throw connectionFailure(side, dsn, err);
  }
  try {
    await client.query(SESSION_GUARDS(opts.holdsSnapshot ? 0 : IDLE_IN_TRANSACTION_TIMEOUT_MS));
  } catch (err) {
    await client.end().catch(() => {});
    throw toPostgresError(err, { side });
  }
  lostSides.delete(side);
  return client;
}

function connectionFailure(side: Side, dsn: string, err: unknown): OperatorError {
  const e = err as { code?: string; message?: string };
  const where = describeDsn(dsn);
  if (e.code === '28P01' || e.code === '28000') {
    return new ConnectionError(side, `${side} refused the login at ${where}: ${redact(e.message ?? '')}`, `check the user and the password source for ${side}.dsn (env:NAME)`, err);
  }
  if (e.code === '3D000') {
    return new ConnectionError(side, `${side} database does not exist at ${where}`, `create the database or fix the path of ${side}.dsn`, err);
  }
  const reason = e.code && CONNECTION_CODES.has(e.code) ? e.code : redact(e.message ?? String(err));
  return new ConnectionError(side, `cannot reach ${side} at ${where} (${reason})`, `check that ${side} is up and that ${side}.dsn points at it (host, port, firewall)`, err);
}

/** Opens `count` more connections to a side; closes the ones it opened if one fails. */
export async function moreConnections(side: Side, dsn: string, count: number): Promise<Db[]> {
  const opened: Db[] = [];
  try {
    for (let i = 0; i < count; i++) opened.push(await connect(side, dsn, `migrate-${side}-${i + 2}`));
    return opened;
  } catch (err) {
    await Promise.all(opened.map((c) => c.end().catch(() => {})));
    throw err;
  }
}

/** Runs `fn` with a fresh connection and always closes it. */
export async function withDb<T>(side: Side, dsn: string, fn: (db: Db) => Promise<T>): Promise<T> {
  const db = await connect(side, dsn);
  try {
    return await fn(db);
  } finally {
    await db.end().catch(() => {});
  }
}

/** Where a failing statement came from, for error messages. */
export interface SqlOrigin {
  /** File the SQL was read from, when it came from a file. */
  file?: string;
  /** The full SQL text (to turn Postgres' character position into line:column). */
  sql?: string;
  /** Which side ran it. */
  side?: Side;
}

/** Turns a 1-based character offset into 1-based line and column. */
export function lineAndColumn(sql: string, position: number): { line: number; column: number } {
  const before = sql.slice(0, Math.max(0, position - 1));
  const lines = before.split('\n');
  return { line: lines.length, column: (lines[lines.length - 1]?.length ?? 0) + 1 };
}

/**
 * Wraps a pg error into an operator-facing one: a lost connection becomes ConnectionLostError of the
 * side whose client raised it (exit 6 / 7), a statement_timeout names the side and the statement, and
 * anything else a PostgresError with SQLSTATE, detail, hint and file:line:column.
 */
export function toPostgresError(err: unknown, origin: SqlOrigin = {}): OperatorError {
  if (err instanceof OperatorError) return err;
  const seen = err && typeof err === 'object' ? originOfError.get(err) : undefined;
  const side = seen?.side ?? origin.side;
  const e = err as { code?: string; message?: string; detail?: string; hint?: string; position?: string; where?: string };
  if (side && isConnectionLoss(err)) return lostSides.get(side) ?? new ConnectionLostError(side, lossReason(err), {}, err);
  const statement = origin.sql ?? seen?.statement;
  if (side && isStatementTimeout(err)) {
    const head = statement ? statementHead(statement) : '(statement not known)';
    return new StatementTimeoutError(side, origin.file ? `${origin.file}: ${head}` : head, {}, err);
  }
  // Without a SQLSTATE it did not come from Postgres: a bug of ours, never dressed as a Postgres error.
  if (!e || typeof e !== 'object' || typeof e.code !== 'string' || !/^[0-9A-Z]{5}$/.test(e.code)) return new InternalError(err);
  const loc = origin.sql && e.position ? lineAndColumn(origin.sql, Number(e.position)) : undefined;
  const at = origin.file ? ` at ${origin.file}${loc ? `:${loc.line}:${loc.column}` : ''}` : loc ? ` at line ${loc.line}:${loc.column}` : '';
  const parts = [`${redact(e.message ?? 'statement failed')} (SQLSTATE ${e.code})${at}`];
  if (e.detail) parts.push(`DETAIL: ${redact(e.detail)}`);
  if (e.where) parts.push(`WHERE: ${e.where}`);
  return new PostgresError(
    parts.join('\n'),
    e.hint ? redact(e.hint) : origin.file ? `fix ${origin.file}` : 'fix the cause shown above',
    { sqlstate: e.code, file: origin.file ?? null, line: loc?.line ?? null, column: loc?.column ?? null, side: origin.side ?? null },
    err,
  );
}

/** How {@link withTransaction} opens and ends. */
export interface TransactionOptions {
  /** What follows `BEGIN`, e.g. `READ ONLY` or `ISOLATION LEVEL SERIALIZABLE`. */
  begin?: string;
  /** `commit` (default) when `fn` resolves; `rollback` always (read-only evaluation that must leave no trace). */
  end?: 'commit' | 'rollback';
  /** Which side, for error messages. */
  side?: Side;
}

/**
 * Runs `fn` inside one transaction on `db`: commits when it resolves (or always rolls back with
 * `end: 'rollback'`), rolls back when it throws. The one place migrate writes BEGIN and COMMIT.
 */
export async function withTransaction<T>(db: Db, fn: () => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
  const origin = opts.side ? { side: opts.side } : {};
  await query(db, opts.begin ? `BEGIN ${opts.begin}` : 'BEGIN', [], origin);
  let result: T;
  try {
    result = await fn();
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
  if (opts.end === 'rollback') await query(db, 'ROLLBACK', [], origin);
  else await query(db, 'COMMIT', [], origin);
  return result;
}

/** Runs one query and converts a failure into an operator-facing error. */
export async function query<R extends pg.QueryResultRow = pg.QueryResultRow>(db: Db, sql: string, params: unknown[] = [], origin: SqlOrigin = {}): Promise<pg.QueryResult<R>> {
  try {
    return await db.query<R>(sql, params);
  } catch (err) {
    throw toPostgresError(err, { sql, ...origin });
  }
}

function lossReason(err: unknown): string {
  const e = err as { code?: string; message?: string };
  const text = redact(e?.message ?? String(err));
  return e?.code && !text.includes(e.code) ? `${text}, ${e.code}` : text;
}

/**
 * Gives a lost connection or a statement timeout the place it happened (`step/unit`) and the command
 * that continues the run; the first such loss per side is kept, so everything that fails on that
 * side afterwards (journal writes, metrics) reports the same event. Other errors pass unchanged.
 */
export function locateFailure(err: unknown, during: string, configFile: string): unknown {
  const resume = `migrate apply --resume --config ${configFile}`;
  const op = err instanceof OperatorError ? err : toPostgresError(err);
  if (op instanceof ConnectionLostError) {
    if (op.during) return op;
    const known = lostSides.get(op.side);
    if (known) return known;
    const located = new ConnectionLostError(op.side, op.reason, { during, resume }, op.cause ?? err);
    lostSides.set(op.side, located);
    return located;
  }
  if (op instanceof StatementTimeoutError) {
    return op.detail.during ? op : new StatementTimeoutError(op.side, op.statement, { during, resume }, op.cause ?? err);
  }
  return err;
}
