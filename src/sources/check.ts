// Parses migration SQL with the real Postgres parser (libpg-query) before anything runs, so a typo
// is reported as file:line:column with SQLSTATE 42601 while green is still untouched. The same parse
// splits `none` migrations into statements that run one by one.

import { parse } from 'libpg-query';
import { lineAndColumn } from '../db/connect.ts';
import { PostgresError } from '../errors.ts';
import type { Migration } from './types.ts';

const SYNTAX_ERROR = '42601';

/** One statement of a migration file. */
export interface Statement {
  /** The statement text, without the separating semicolon. */
  sql: string;
  /** 0-based character offset of the statement within the file. */
  offset: number;
}

interface ParserFailure {
  message?: string;
  sqlDetails?: { message: string; cursorPosition: number };
}

interface SyntaxProblem {
  message: string;
  file: string | null;
  line: number | null;
  column: number | null;
}

type ParseOutcome = { ok: true; stmts: { stmt_location?: number; stmt_len?: number }[] } | { ok: false; problem: SyntaxProblem };

async function parseMigration(m: Migration): Promise<ParseOutcome> {
  // libpg-query refuses an empty string; an empty file is a valid (recorded, no-op) migration.
  if (m.sql.trim() === '') return { ok: true, stmts: [] };
  try {
    return { ok: true, stmts: (await parse(m.sql)).stmts ?? [] };
  } catch (err) {
    const e = err as ParserFailure;
    const cursor = e.sqlDetails?.cursorPosition;
    const loc = typeof cursor === 'number' ? lineAndColumn(m.sql, cursor + 1) : null;
    const at = m.file === null ? (loc ? ` at line ${loc.line}:${loc.column}` : '') : ` at ${m.file}${loc ? `:${loc.line}:${loc.column}` : ''}`;
    const message = `${e.sqlDetails?.message ?? e.message ?? String(err)} (SQLSTATE ${SYNTAX_ERROR})${at}`;
    return { ok: false, problem: { message, file: m.file, line: loc?.line ?? null, column: loc?.column ?? null } };
  }
}

function syntaxError(problems: SyntaxProblem[]): PostgresError {
  const files = [...new Set(problems.map((p) => p.file ?? '(inline SQL)'))];
  const message =
    problems.length === 1 && problems[0]
      ? problems[0].message
      : `${problems.length} syntax errors in migrations:\n${problems.map((p) => `  - ${p.message}`).join('\n')}`;
  const only = problems.length === 1 ? problems[0] : undefined;
  return new PostgresError(message, `fix the SQL in ${files.join(', ')}; nothing has been run`, {
    sqlstate: SYNTAX_ERROR,
    file: only?.file ?? null,
    line: only?.line ?? null,
    column: only?.column ?? null,
    errors: problems,
  });
}

/** Throws a PostgresError (SQLSTATE 42601, file:line:column) when `m.sql` does not parse. */
export async function checkMigrationSql(m: Migration): Promise<void> {
  const outcome = await parseMigration(m);
  if (!outcome.ok) throw syntaxError([outcome.problem]);
}

/** Parses every migration and throws one PostgresError listing all syntax errors found. */
export async function checkAll(ms: Migration[]): Promise<void> {
  const problems: SyntaxProblem[] = [];
  for (const m of ms) {
    const outcome = await parseMigration(m);
    if (!outcome.ok) problems.push(outcome.problem);
  }
  if (problems.length > 0) throw syntaxError(problems);
}

/** Splits a migration into its statements (comments between them dropped); throws like checkMigrationSql. */
export async function splitStatements(m: Migration): Promise<Statement[]> {
  const outcome = await parseMigration(m);
  if (!outcome.ok) throw syntaxError([outcome.problem]);
  // The parser reports byte offsets into the UTF-8 text; Postgres positions and JS strings count characters.
  const bytes = Buffer.from(m.sql, 'utf8');
  return outcome.stmts.map((s) => {
    const start = s.stmt_location ?? 0;
    const end = s.stmt_len ? start + s.stmt_len : bytes.length;
    return { sql: bytes.subarray(start, end).toString('utf8'), offset: bytes.subarray(0, start).toString('utf8').length };
  });
}
