// Connections to blue and green. Connection failures become ConnectionError (exit 6 for blue, 7 for
// green) with the DSN's password removed; statement failures become PostgresError with SQLSTATE,
// detail and hint, as graphile-migrate reports them.

import pg from 'pg';
import { ConnectionError, OperatorError, PostgresError, type Side } from '../errors.ts';
import { describeDsn, redact } from './redact.ts';

/** A connected client that knows which side it talks to. */
export type Db = pg.Client;

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'ECONNRESET', 'EHOSTUNREACH']);

/** Opens one connection to `dsn`; failures name the side and never echo the password. */
export async function connect(side: Side, dsn: string, applicationName = `migrate-${side}`): Promise<Db> {
  let client: pg.Client;
  try {
    client = new pg.Client({ connectionString: dsn, application_name: applicationName, connectionTimeoutMillis: 10_000 });
  } catch (err) {
    throw new ConnectionError(side, `the ${side} DSN cannot be parsed: ${redact(String((err as Error).message))}`, `check ${side}.dsn in the config`, err);
  }
  // A server restart mid-run surfaces as an 'error' event; without a listener pg would crash the process.
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    throw connectionFailure(side, dsn, err);
  }
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

/** Wraps a pg DatabaseError into a PostgresError with SQLSTATE, detail, hint and file:line:column. */
export function toPostgresError(err: unknown, origin: SqlOrigin = {}): OperatorError {
  if (err instanceof OperatorError) return err;
  const e = err as { code?: string; message?: string; detail?: string; hint?: string; position?: string; where?: string };
  if (!e || typeof e !== 'object' || typeof e.code !== 'string' || !/^[0-9A-Z]{5}$/.test(e.code)) {
    if (origin.side && e?.code && CONNECTION_CODES.has(e.code)) {
      return new ConnectionError(origin.side, `lost the connection to ${origin.side} (${e.code})`, `check that ${origin.side} is up, then rerun with --resume`, err);
    }
    const message = redact(e?.message ?? String(err));
    return new PostgresError(message, 'see the message above; rerun with --resume once fixed', { sqlstate: null }, err);
  }
  const loc = origin.sql && e.position ? lineAndColumn(origin.sql, Number(e.position)) : undefined;
  const at = origin.file ? ` at ${origin.file}${loc ? `:${loc.line}:${loc.column}` : ''}` : loc ? ` at line ${loc.line}:${loc.column}` : '';
  const parts = [`${redact(e.message ?? 'statement failed')} (SQLSTATE ${e.code})${at}`];
  if (e.detail) parts.push(`DETAIL: ${redact(e.detail)}`);
  if (e.where) parts.push(`WHERE: ${e.where}`);
  return new PostgresError(
    parts.join('\n'),
    e.hint ? redact(e.hint) : origin.file ? `fix ${origin.file} and rerun with --resume` : 'fix the cause shown above and rerun with --resume',
    { sqlstate: e.code, file: origin.file ?? null, line: loc?.line ?? null, column: loc?.column ?? null, side: origin.side ?? null },
    err,
  );
}

/** Runs one query and converts a failure into an operator-facing error. */
export async function query<R extends pg.QueryResultRow = pg.QueryResultRow>(db: Db, sql: string, params: unknown[] = [], origin: SqlOrigin = {}): Promise<pg.QueryResult<R>> {
  try {
    return await db.query<R>(sql, params);
  } catch (err) {
    throw toPostgresError(err, { sql, ...origin });
  }
}
