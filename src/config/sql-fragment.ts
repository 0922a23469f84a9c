// SQL from the config file is spliced into statements we run on blue and green (a cleanup rule's
// `where` into SELECT, DELETE and sub-queries; a quarantine key into a SELECT list), so a fragment
// must be exactly the one expression it claims to be, checked with the real Postgres parser before
// any connection is opened. A `;` or a comment can smuggle a second statement or cut off what we
// append, a locking clause or data-modifying CTE writes, and some functions change the database even
// inside a SELECT. The read-only transaction the fragments later run in (src/db/quarantine.ts) is
// the second wall; this is the first, and the only one that gives the operator a config error.
//
// libpg-query 18 has no deparser (it moved to a separate package we do not depend on), so the
// fragment's own text is what runs; that is safe only because it is checked in the exact position it
// is spliced into, with balanced parentheses, no `;` and no comment token.

import { loadModule, parseSync, scanSync, type ScanToken } from 'libpg-query';
import type { RawStmt } from '@pgsql/types';
import { bodyAt, fields, nodeBody, unwrap } from '../lint/parse.ts';

// The parser is WebAssembly; loading it here keeps config loading synchronous for every caller.
await loadModule();

/** Where a config fragment is spliced: a WHERE predicate over alias `t`, one SELECT-list expression, or a whole query. */
export type SqlShape = 'predicate' | 'expression' | 'query';

/** A function a fragment calls by name (schema null when unqualified). */
export interface CalledFunction {
  /** Schema as written, or null. */
  schema: string | null;
  /** Function name, lower-cased as Postgres folds it (quoted names keep their case). */
  name: string;
}

/** The verdict on one fragment: the functions it calls, or the first problem found. */
export type FragmentCheck = { ok: true; functions: CalledFunction[] } | { ok: false; problem: string };

/** What each shape must look like, for hints. */
export const SHAPE_HINT: Record<SqlShape, string> = {
  predicate: "write it as one boolean expression over alias t (e.g. t.subject = ''), with no ';', no comments, no statements and no functions that change anything",
  expression: "write it as one expression over the quarantined row (e.g. row ->> 'id'), with no ';', no comments and no functions that change anything",
  query: 'write it as one read-only SELECT (no INSERT/UPDATE/DELETE, no FOR UPDATE, no functions that change anything)',
};

// Functions that change state (sequences, settings, locks, files, other sessions, replication) or run
// SQL given as text. A SELECT calling them is not read-only in spirit even where Postgres allows it.
const SIDE_EFFECTING =
  /^(nextval|setval|currval|lastval|set_config|pg_sleep\w*|pg_(try_)?advisory\w*|dblink\w*|lo_\w+|loread|lowrite|pg_notify|pg_terminate_backend|pg_cancel_backend|pg_read_file|pg_read_binary_file|pg_ls_\w+|pg_stat_file|pg_file_\w+|pg_reload_conf|pg_rotate_logfile|pg_switch_wal|pg_create_\w+|pg_drop_replication_slot|pg_replication_\w+|pg_logical_\w+|pg_promote|pg_backup_\w+|pg_stat_reset\w*|pg_log_backend_memory_contexts|pg_import_system_collations|pg_export_snapshot|pg_wal_replay_\w+|txid_current|pg_current_xact_id|\w*_to_xml\w*)$/;

// The wrappers put the fragment exactly where its callers splice it (src/steps/cleanup.ts,
// src/db/quarantine.ts, src/validate/invariants.ts).
const PREDICATE_PREFIX = 'SELECT 1 FROM bluegreen_check t WHERE ';
const EXPRESSION_PREFIX = 'SELECT ';
const EXPRESSION_SUFFIX = ' FROM bluegreen_check';
// The only clauses the wrapper itself produces; anything else came from the fragment.
const WRAPPER_KEYS = new Set(['targetList', 'fromClause', 'whereClause', 'limitOption', 'op']);

/** Checks `sql` has the given shape and nothing else; never touches a database. */
export function checkSqlFragment(sql: string, shape: SqlShape): FragmentCheck {
  if (sql.trim() === '') return { ok: false, problem: 'is empty' };
  const text = shape === 'predicate' ? PREDICATE_PREFIX + sql : shape === 'expression' ? EXPRESSION_PREFIX + sql + EXPRESSION_SUFFIX : sql;
  let stmts: RawStmt[];
  try {
    stmts = parseSync(text).stmts ?? [];
  } catch (err) {
    return { ok: false, problem: `does not parse: ${(err as Error).message}` };
  }
  if (shape !== 'query') {
    const lexical = lexicalProblem(sql);
    if (lexical) return { ok: false, problem: lexical };
  }
  if (stmts.length !== 1) return { ok: false, problem: `holds ${stmts.length} statements` };
  const entry = unwrap(stmts[0]!.stmt);
  if (entry?.kind !== 'SelectStmt') return { ok: false, problem: `is a ${(entry?.kind ?? 'nothing').replace(/Stmt$/, '')} statement, not a SELECT` };
  const body = entry.body;
  if (shape !== 'query') {
    const extra = Object.keys(body).filter((k) => !WRAPPER_KEYS.has(k) || (k === 'op' && body.op !== 'SETOP_NONE') || (k === 'limitOption' && body.limitOption !== 'LIMIT_OPTION_DEFAULT'));
    if (extra.length) return { ok: false, problem: `adds clauses to the statement it is spliced into (${extra.join(', ')})` };
    if (body.targetList?.length !== 1) return { ok: false, problem: 'is more than one expression' };
  }
  const functions: CalledFunction[] = [];
  const problem = walk(body, functions);
  return problem ? { ok: false, problem } : { ok: true, functions };
}

/** `;`, comments and unbalanced parentheses: what lets a fragment escape the place it is spliced into. */
function lexicalProblem(sql: string): string | null {
  let tokens: ScanToken[];
  try {
    tokens = scanSync(sql).tokens;
  } catch {
    return 'cannot be split into tokens';
  }
  let depth = 0;
  for (const t of tokens) {
    if (t.tokenName === 'SQL_COMMENT' || t.tokenName === 'C_COMMENT') return 'contains a comment (a comment can hide SQL or cut off what is appended)';
    if (t.tokenName === 'ASCII_59') return "contains ';' (only one expression is allowed, never a second statement)";
    if (t.tokenName === 'ASCII_40') depth++;
    if (t.tokenName === 'ASCII_41' && --depth < 0) return 'closes a parenthesis it did not open';
  }
  return depth === 0 ? null : 'leaves a parenthesis open';
}

/** Refuses writes, locks and side-effecting calls anywhere in the tree; collects every function called. */
function walk(node: unknown, functions: CalledFunction[]): string | null {
  for (const [key, value] of fields(node)) {
    if (/Stmt$/.test(key) && key !== 'SelectStmt') return `contains a ${key.replace(/Stmt$/, '')} statement (a data-modifying WITH or sub-statement)`;
    if (key === 'lockingClause') return 'takes row locks (FOR UPDATE / FOR SHARE)';
    if (key === 'intoClause') return 'creates a table (SELECT INTO)';
    const call = bodyAt(key, value, 'FuncCall');
    if (call) {
      const parts = (call.funcname ?? []).map((n) => String(nodeBody(n, 'String')?.sval ?? ''));
      const fn: CalledFunction = { schema: parts.length > 1 ? parts[parts.length - 2]! : null, name: parts[parts.length - 1] ?? '' };
      if (SIDE_EFFECTING.test(fn.name.toLowerCase())) return `calls ${fn.name}(), which changes the database or reaches outside this query`;
      functions.push(fn);
    }
    const p = walk(value, functions);
    if (p) return p;
  }
  return null;
}
