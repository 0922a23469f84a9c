// Lock-hazard lint: flags the statements that take long exclusive locks (or silently drop
// constraints) on tables that already hold data, each with an id, a one-line why, file:line and
// the safe rewrite. DDL on a table the same file creates is free (empty, invisible to others), and
// CONCURRENTLY outside a transaction or NOT VALID constraints are the safe forms, never flagged.

import { tableKey } from '../db/sql.ts';
import type { ColumnDef, RangeVar } from '@pgsql/types';
import { bodies, findNodes, names, nodeBody, snippet, tableOf, type NodeTag, type ParsedFile, type ParsedStatement } from './parse.ts';
import { queuedBehind, statementLock } from './locks.ts';
import { rewriteStatement, tablesCreatedIn, unitSql } from './rewrite.ts';

/**
 * Rule ids, the one-line why, the safe form, and whether the finding is about locks (`lock`). Lock
 * findings matter where the migration runs against live traffic (in place); on a blue-green green,
 * which serves nothing while it migrates, `plan` only counts them. The other findings (a migration
 * that fails, a constraint that silently vanishes, application queries that break) matter anywhere.
 * Lock levels as documented by PostgreSQL: see src/lint/locks.ts. `{batchRows}` in a fix is the
 * configured `inPlace.backfillBatchRows`.
 */
export const LINT_RULES = {
  'create-index-not-concurrent': { lock: true, why: 'CREATE INDEX without CONCURRENTLY takes a SHARE lock on the table: every INSERT, UPDATE and DELETE waits for the whole build (reads go on)', fix: 'CREATE INDEX CONCURRENTLY, in a file that runs outside a transaction (pop: .autocommit; postgres-migrations: -- postgres-migrations disable-transaction)' },
  'drop-index-not-concurrent': { lock: true, why: 'DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the table (queued behind every running query, blocking all reads and writes after it)', fix: 'DROP INDEX CONCURRENTLY, outside a transaction' },
  'reindex-not-concurrent': { lock: true, why: 'REINDEX without CONCURRENTLY takes a SHARE lock on the table (writes wait) and an ACCESS EXCLUSIVE lock on each index it rebuilds (queries that would use it wait) for the whole rebuild', fix: 'REINDEX ... CONCURRENTLY, outside a transaction' },
  'concurrently-in-transaction': { lock: false, why: 'CONCURRENTLY cannot run inside a transaction block: the migration fails with 25001', fix: 'move the statement to its own file that runs outside a transaction (pop: .autocommit; postgres-migrations: -- postgres-migrations disable-transaction)' },
  'fk-without-not-valid': { lock: true, why: 'ADD FOREIGN KEY validates every row under a SHARE ROW EXCLUSIVE lock on both tables (no writes to either meanwhile)', fix: 'ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a separate transaction (SHARE UPDATE EXCLUSIVE: writes go on)' },
  'check-without-not-valid': { lock: true, why: 'ADD CHECK scans the whole table under an ACCESS EXCLUSIVE lock (no reads, no writes)', fix: 'ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in a separate transaction (SHARE UPDATE EXCLUSIVE: writes go on)' },
  'set-not-null': { lock: true, why: 'SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock (no reads, no writes)', fix: 'ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT c; SET NOT NULL (uses the check, no scan); DROP CONSTRAINT c' },
  'add-column-volatile-default': { lock: true, why: 'ADD COLUMN with a volatile default (or serial) rewrites the whole table under an ACCESS EXCLUSIVE lock', fix: 'add the column without a default (or with a constant one), backfill in batches of {batchRows} rows, then SET DEFAULT' },
  'column-type-change': { lock: true, why: 'ALTER COLUMN ... TYPE rewrites the table and its indexes under an ACCESS EXCLUSIVE lock', fix: 'add a new column, backfill it in batches of {batchRows} rows, switch readers and writers, drop the old column' },
  'pk-unique-without-using-index': { lock: true, why: 'ADD PRIMARY KEY / UNIQUE builds the index under an ACCESS EXCLUSIVE lock', fix: 'CREATE UNIQUE INDEX CONCURRENTLY first, then ADD CONSTRAINT ... PRIMARY KEY / UNIQUE USING INDEX' },
  'whole-table-update': { lock: true, why: 'UPDATE without WHERE takes ROW EXCLUSIVE on the table and a row lock on every row until it commits: writers of any row wait for the whole update (reads go on), the table bloats, replicas lag', fix: 'update in primary-key batches of {batchRows} rows, one short transaction each' },
  'whole-table-delete': { lock: true, why: 'DELETE without WHERE takes ROW EXCLUSIVE on the table and a row lock on every row until it commits: writers of any row wait for the whole delete (reads go on)', fix: 'delete in primary-key batches of {batchRows} rows (or TRUNCATE if the table is not in use)' },
  'drop-index-cascade': { lock: false, why: 'DROP INDEX ... CASCADE silently drops every constraint that depends on the index (e.g. foreign keys referencing a unique key)', fix: 'drop the dependent constraints by name first, so the migration says what it removes, and re-add them NOT VALID + VALIDATE' },
  'missing-lock-timeout': { lock: true, why: 'without lock_timeout, a statement waiting for its lock behind one long query holds up the queries queued after it', fix: "start the file with SET lock_timeout = '2s' (and retry on 55P03)" },
  'select-star': { lock: false, why: 'SELECT * on a table whose columns the migrations change breaks code that maps columns by position or strict shape', fix: 'list the columns the code reads' },
} as const;

/** A lint rule id. */
export type LintRuleId = keyof typeof LINT_RULES;

/** One finding. */
export interface Finding {
  /** Rule id. */
  rule: LintRuleId;
  /** Why it is a hazard, one line. */
  why: string;
  /** File path. */
  file: string;
  /** 1-based line. */
  line: number;
  /** The statement, shortened. */
  statement: string;
  /** The safe rewrite (advice, plus the SQL in-place mode runs when it can rewrite it). */
  rewrite: string;
}

// Functions whose value is fixed for the statement (evaluated once: no table rewrite).
const NON_VOLATILE = new Set(['now', 'transaction_timestamp', 'statement_timestamp', 'current_timestamp', 'lower', 'upper', 'coalesce', 'concat', 'to_jsonb', 'jsonb_build_object', 'json_build_object']);
const SERIAL_TYPES = new Set(['serial', 'serial4', 'bigserial', 'serial8', 'smallserial', 'serial2']);
const LOCKING_KINDS = ['AlterTableStmt', 'IndexStmt', 'DropStmt', 'ReindexStmt', 'UpdateStmt', 'DeleteStmt', 'RenameStmt', 'TruncateStmt'] as const;
const LOCKING: ReadonlySet<NodeTag> = new Set(LOCKING_KINDS);
const isLocking = (s: ParsedStatement): s is ParsedStatement<(typeof LOCKING_KINDS)[number]> => LOCKING.has(s.kind);

function isVolatileDefault(col: ColumnDef): boolean {
  if (SERIAL_TYPES.has(names(col.typeName?.names).at(-1) ?? '')) return true;
  const def = (col.constraints ?? []).map((c) => nodeBody(c, 'Constraint')).find((c) => c?.contype === 'CONSTR_DEFAULT' || c?.contype === 'CONSTR_GENERATED');
  if (!def) return false;
  if (def.contype === 'CONSTR_GENERATED') return true;
  return findNodes(def.raw_expr, 'FuncCall').some((f) => !NON_VOLATILE.has(names(f.funcname).at(-1) ?? ''));
}

function setsLockTimeout(s: ParsedStatement): boolean {
  if (s.kind === 'VariableSetStmt') return s.body.name === 'lock_timeout';
  return findNodes(s.body, 'FuncCall').some((f) => names(f.funcname).at(-1) === 'set_config' && nodeBody(f.args?.[0], 'A_Const')?.sval?.sval === 'lock_timeout');
}

function touchesExisting(s: ParsedStatement, created: Set<string>): boolean {
  if (!isLocking(s)) return false;
  if (s.kind === 'DropStmt' && s.body.removeType !== 'OBJECT_INDEX' && s.body.removeType !== 'OBJECT_TABLE') return false;
  const rv = 'relation' in s.body ? s.body.relation : undefined;
  return !rv || !created.has(tableKey(tableOf(rv)));
}

/** Findings for one statement (no lock_timeout check; that one is per file). */
function statementFindings(s: ParsedStatement, created: Set<string>, createdIndexes: Set<string>): LintRuleId[] {
  const onNew = (rv: RangeVar | undefined): boolean => !!rv && created.has(tableKey(tableOf(rv)));
  const out: LintRuleId[] = [];
  switch (s.kind) {
    case 'IndexStmt':
      if (s.body.concurrent && s.inTransaction) out.push('concurrently-in-transaction');
      if (!s.body.concurrent && !onNew(s.body.relation)) out.push('create-index-not-concurrent');
      break;
    case 'DropStmt': {
      const b = s.body;
      if (b.removeType !== 'OBJECT_INDEX') break;
      const dropped = (b.objects ?? []).map((o) => names(nodeBody(o, 'List')?.items).at(-1) ?? '');
      if (b.concurrent && s.inTransaction) out.push('concurrently-in-transaction');
      if (!b.concurrent && !dropped.every((n) => createdIndexes.has(n))) out.push('drop-index-not-concurrent');
      if (b.behavior === 'DROP_CASCADE') out.push('drop-index-cascade');
      break;
    }
    case 'ReindexStmt': {
      const concurrent = bodies(s.body.params, 'DefElem').some((p) => p.defname === 'concurrently');
      if (!concurrent) out.push('reindex-not-concurrent');
      else if (s.inTransaction) out.push('concurrently-in-transaction');
      break;
    }
    case 'AlterTableStmt':
      if (onNew(s.body.relation) || s.body.objtype !== 'OBJECT_TABLE') break;
      for (const c of bodies(s.body.cmds, 'AlterTableCmd')) {
        const con = nodeBody(c.def, 'Constraint');
        if (c.subtype === 'AT_AddConstraint' && con) {
          if (con.contype === 'CONSTR_FOREIGN' && !con.skip_validation) out.push('fk-without-not-valid');
          if (con.contype === 'CONSTR_CHECK' && !con.skip_validation) out.push('check-without-not-valid');
          if ((con.contype === 'CONSTR_PRIMARY' || con.contype === 'CONSTR_UNIQUE') && !con.indexname) out.push('pk-unique-without-using-index');
        }
        if (c.subtype === 'AT_SetNotNull') out.push('set-not-null');
        const col = nodeBody(c.def, 'ColumnDef');
        if (c.subtype === 'AT_AddColumn' && col && isVolatileDefault(col)) out.push('add-column-volatile-default');
        if (c.subtype === 'AT_AlterColumnType') out.push('column-type-change');
      }
      break;
    case 'UpdateStmt':
      if (!s.body.whereClause && !onNew(s.body.relation)) out.push('whole-table-update');
      break;
    case 'DeleteStmt':
      if (!s.body.whereClause && !onNew(s.body.relation)) out.push('whole-table-delete');
      break;
  }
  return out;
}

/** Lint options for one file. */
export interface LintFileOptions {
  /** Rule ids not to report. */
  ignore?: readonly string[];
  /** Rows per batch of a batched backfill (`inPlace.backfillBatchRows`), as the rewrites show it. */
  batchRows: number;
}

/** The rewrite text shown with a finding: the advice, plus the SQL in-place mode would run. */
function rewriteText(rule: LintRuleId, s: ParsedStatement, created: Set<string>, batchRows: number): string {
  const advice = LINT_RULES[rule].fix.replaceAll('{batchRows}', String(batchRows));
  const r = rewriteStatement(s, created);
  if (!r) return advice;
  return `${advice}\n    in-place runs: ${r.units.map((u) => unitSql(u, batchRows)).join(';\n                   ')}`;
}

/** Why a missing lock_timeout hurts for this statement, in terms of the lock it really takes. */
function timeoutWhy(s: ParsedStatement): string {
  const lock = statementLock(s);
  if (!lock) return LINT_RULES['missing-lock-timeout'].why;
  const on = lock.tables.length ? lock.tables.join(' and ') : "the index's table";
  if (lock.dml) {
    const verb = s.kind.replace(/Stmt$/, '').toUpperCase();
    return `without lock_timeout, this ${verb} (ROW EXCLUSIVE on ${on} plus row locks, no schema lock) waits without limit for rows other writers have locked, and writers of the rows it already locked wait for it in turn`;
  }
  return `without lock_timeout, this statement's ${lock.mode} lock on ${on} waits behind any long query there, and ${queuedBehind(lock.mode)}`;
}

/** Lints one parsed migration file. */
export function lintFile(pf: ParsedFile, opts: LintFileOptions): Finding[] {
  const ignore = opts.ignore ?? [];
  const created = tablesCreatedIn(pf);
  const createdIndexes = new Set(pf.statements.flatMap((s) => (s.kind === 'IndexStmt' && s.body.idxname ? [s.body.idxname] : [])));
  const found: { index: number; finding: Finding }[] = [];
  const add = (rule: LintRuleId, s: ParsedStatement, why: string = LINT_RULES[rule].why): void => {
    if (ignore.includes(rule)) return;
    found.push({ index: s.index, finding: { rule, why, file: pf.file, line: s.line, statement: snippet(s), rewrite: rewriteText(rule, s, created, opts.batchRows) } });
  };
  // One missing-lock-timeout per file, on the first schema change before any lock_timeout (the
  // statement whose queued lock can stall everyone); a file of DML alone gets it on its first DML.
  let timeoutSet = false;
  let firstDdl: ParsedStatement | undefined;
  let firstDml: ParsedStatement | undefined;
  for (const s of pf.statements) {
    if (setsLockTimeout(s)) timeoutSet = true;
    if (!timeoutSet && touchesExisting(s, created)) {
      if (statementLock(s)?.dml) firstDml ??= s;
      else firstDdl ??= s;
    }
    for (const rule of statementFindings(s, created, createdIndexes)) add(rule, s);
  }
  const unbounded = firstDdl ?? firstDml;
  if (unbounded) add('missing-lock-timeout', unbounded, timeoutWhy(unbounded));
  // File order; on one statement the file-level timeout finding comes first.
  return found
    .sort((a, b) => a.index - b.index || Number(b.finding.rule === 'missing-lock-timeout') - Number(a.finding.rule === 'missing-lock-timeout'))
    .map((f) => f.finding);
}
