// Which table lock a migration statement takes, so every lint message names the lock Postgres
// really takes instead of a generic "DDL lock" (an UPDATE was once reported as one). Levels are
// from the PostgreSQL documentation:
//   - "Explicit Locking", 13.3.1 Table-Level Locks (https://www.postgresql.org/docs/current/explicit-locking.html):
//     UPDATE, DELETE, INSERT (and MERGE) take ROW EXCLUSIVE plus row locks on the rows they change;
//     CREATE INDEX takes SHARE; CREATE INDEX CONCURRENTLY, REINDEX CONCURRENTLY, DROP INDEX
//     CONCURRENTLY and ALTER TABLE VALIDATE CONSTRAINT take SHARE UPDATE EXCLUSIVE; DROP TABLE,
//     TRUNCATE and most ALTER TABLE forms take ACCESS EXCLUSIVE.
//   - ALTER TABLE (https://www.postgresql.org/docs/current/sql-altertable.html): "An ACCESS EXCLUSIVE
//     lock is acquired unless explicitly noted"; ADD FOREIGN KEY takes SHARE ROW EXCLUSIVE on the
//     table and on the referenced table; VALIDATE CONSTRAINT, SET STATISTICS, CLUSTER ON, SET
//     WITHOUT CLUSTER and a column's SET/RESET (attribute options) take SHARE UPDATE EXCLUSIVE;
//     ENABLE/DISABLE TRIGGER takes SHARE ROW EXCLUSIVE. Several subcommands hold the strictest of
//     their locks. A table's SET (storage parameters) is taken as ACCESS EXCLUSIVE: only some of
//     them need less, and overstating a lock is the safe error.
//   - DROP INDEX (https://www.postgresql.org/docs/current/sql-dropindex.html): ACCESS EXCLUSIVE on the table.
//   - REINDEX (https://www.postgresql.org/docs/current/sql-reindex.html): locks out writes but not
//     reads of the table (SHARE) and takes ACCESS EXCLUSIVE on the index being rebuilt.

import type { AlterTableCmd, AlterTableType, RangeVar } from '@pgsql/types';
import { bodies, names, nodeBody, tableOf, type ParsedStatement } from './parse.ts';
import { tableKey } from '../db/sql.ts';

/** The table lock modes, weakest first (the order in the documentation's conflict table). */
export const LOCK_MODES = ['ACCESS SHARE', 'ROW SHARE', 'ROW EXCLUSIVE', 'SHARE UPDATE EXCLUSIVE', 'SHARE', 'SHARE ROW EXCLUSIVE', 'EXCLUSIVE', 'ACCESS EXCLUSIVE'] as const;

/** One table lock mode. */
export type LockMode = (typeof LOCK_MODES)[number];

/** The lock a statement takes. */
export interface StatementLock {
  /** The table-level mode (the strictest one for several subcommands). */
  mode: LockMode;
  /** True for UPDATE/DELETE/INSERT: ROW EXCLUSIVE plus row locks, never a schema lock. */
  dml: boolean;
  /** The tables it is taken on, as far as the statement names them (`schema.name`; a FOREIGN KEY's referenced table too). */
  tables: string[];
}

const SHARE_UPDATE_EXCLUSIVE_CMDS: ReadonlySet<AlterTableType | undefined> = new Set<AlterTableType>(['AT_ValidateConstraint', 'AT_SetStatistics', 'AT_ClusterOn', 'AT_DropCluster', 'AT_SetOptions', 'AT_ResetOptions']);

const strictest = (modes: LockMode[]): LockMode => modes.reduce((a, b) => (LOCK_MODES.indexOf(b) > LOCK_MODES.indexOf(a) ? b : a), 'ACCESS SHARE');

function alterCmdLock(c: AlterTableCmd): LockMode {
  if (c.subtype === 'AT_AddConstraint' && nodeBody(c.def, 'Constraint')?.contype === 'CONSTR_FOREIGN') return 'SHARE ROW EXCLUSIVE';
  if (SHARE_UPDATE_EXCLUSIVE_CMDS.has(c.subtype)) return 'SHARE UPDATE EXCLUSIVE';
  if (String(c.subtype).startsWith('AT_EnableTrig') || String(c.subtype).startsWith('AT_DisableTrig')) return 'SHARE ROW EXCLUSIVE';
  return 'ACCESS EXCLUSIVE';
}

/** The table lock `s` takes, or null for statements that lock no existing table (CREATE TABLE, SET, ...). */
export function statementLock(s: ParsedStatement): StatementLock | null {
  const on = (rv: RangeVar | undefined): string[] => (rv?.relname ? [tableKey(tableOf(rv))] : []);
  switch (s.kind) {
    case 'UpdateStmt':
    case 'DeleteStmt':
    case 'InsertStmt':
    case 'MergeStmt':
      return { mode: 'ROW EXCLUSIVE', dml: true, tables: on(s.body.relation) };
    case 'IndexStmt':
      return { mode: s.body.concurrent ? 'SHARE UPDATE EXCLUSIVE' : 'SHARE', dml: false, tables: on(s.body.relation) };
    case 'ReindexStmt': {
      const concurrent = bodies(s.body.params, 'DefElem').some((p) => p.defname === 'concurrently');
      return { mode: concurrent ? 'SHARE UPDATE EXCLUSIVE' : 'SHARE', dml: false, tables: on(s.body.relation) };
    }
    case 'DropStmt': {
      const b = s.body;
      if (b.removeType !== 'OBJECT_INDEX' && b.removeType !== 'OBJECT_TABLE') return null;
      // An index names no table; DROP TABLE names its own.
      const tables = b.removeType === 'OBJECT_INDEX' ? [] : (b.objects ?? []).map((o) => names(nodeBody(o, 'List')?.items)).map((p) => tableKey({ schema: p.length > 1 ? p[0]! : 'public', name: p.at(-1) ?? '' }));
      return { mode: b.concurrent ? 'SHARE UPDATE EXCLUSIVE' : 'ACCESS EXCLUSIVE', dml: false, tables };
    }
    case 'AlterTableStmt': {
      const cmds = bodies(s.body.cmds, 'AlterTableCmd');
      const referenced = cmds.map((c) => nodeBody(c.def, 'Constraint')).filter((con) => con?.contype === 'CONSTR_FOREIGN').flatMap((con) => on(con?.pktable));
      return { mode: strictest(cmds.map(alterCmdLock)), dml: false, tables: [...new Set([...on(s.body.relation), ...referenced])] };
    }
    case 'RenameStmt':
      return { mode: 'ACCESS EXCLUSIVE', dml: false, tables: on(s.body.relation) };
    case 'TruncateStmt':
      return { mode: 'ACCESS EXCLUSIVE', dml: false, tables: bodies(s.body.relations, 'RangeVar').flatMap(on) };
    default:
      return null;
  }
}

/** What a waiting request of `mode` holds up behind it: requests queue in order, so a conflicting wait blocks everyone after it. */
export function queuedBehind(mode: LockMode): string {
  if (mode === 'ACCESS EXCLUSIVE') return 'every query queued after it, reads included, waits too';
  if (mode === 'SHARE' || mode === 'SHARE ROW EXCLUSIVE' || mode === 'EXCLUSIVE') return 'every write queued after it waits too (reads go on)';
  return 'VACUUM and other schema changes queue behind it (reads and writes go on), and the migration can hang';
}
