// Schema DDL comes from pg_dump (`--section=pre-data|post-data`), run as an argv array with the
// DSN in PG* variables. The post-data script is split with the real Postgres parser so each index
// and constraint becomes its own resumable, parallel unit, tagged with the table it belongs to so
// the snapshot can start it as soon as that table's data is in.

import { parse } from 'libpg-query';
import type { Constraint, Node, RangeVar } from '@pgsql/types';
import { nodeBody, unwrap } from '../lint/parse.ts';
import { SourceError } from '../errors.ts';
import { ProcessError, runProcess, type ProcessResult } from '../process.ts';
import { pgEnv } from './binaries.ts';
import { OWN_SCHEMAS } from './green.ts';

// The whole script is held in memory (it is parsed as one string); a schema this large is refused.
const MAX_DUMP_BYTES = 256 * 1024 * 1024;

/** Runs pg_dump for one section and returns the SQL text (psql meta-commands removed). */
export async function dumpSection(blueDsn: string, section: 'pre-data' | 'post-data', opts: { snapshot?: string; excludeSchemas?: readonly string[] } = {}): Promise<string> {
  // Publications and subscriptions are blue's replication set-up (ours among them), never part of green.
  const args = [`--section=${section}`, '--no-owner', '--no-privileges', '--no-comments', '--no-publications', '--no-subscriptions', '--format=plain'];
  if (opts.snapshot) args.push(`--snapshot=${opts.snapshot}`);
  for (const s of [...OWN_SCHEMAS, ...(opts.excludeSchemas ?? [])]) args.push(`--exclude-schema=${s}`);
  const env = pgEnv(blueDsn);
  const where = `${env.PGHOST}:${env.PGPORT}/${env.PGDATABASE}`;
  let out: ProcessResult;
  try {
    // No timeout: how long a schema dump takes (or waits for its locks) depends on blue alone.
    out = await runProcess(['pg_dump', ...args], { env, maxBytes: MAX_DUMP_BYTES });
  } catch (err) {
    if (!(err instanceof ProcessError)) throw err;
    if (err.reason === 'start') throw new SourceError(`cannot run pg_dump: ${err.errno}`, 'install the PostgreSQL client matching blue (`migrate doctor` tells which)');
    const tail = err.stderrTail.split('\n').slice(-10).join('\n');
    throw new SourceError(`pg_dump --section=${section} failed (exit ${err.status ?? err.signal ?? '?'}) against ${where}:\n${tail}`, 'check the message above; rerun with --resume once fixed');
  }
  if (out.truncated) throw new SourceError(`pg_dump --section=${section} against ${where} printed more than ${MAX_DUMP_BYTES >> 20} MiB`, 'list the schemas migrate need not copy in snapshot.excludeSchemas');
  // pg_dump >= 15.14 frames its output in \restrict / \unrestrict, which only psql understands.
  return out.stdout
    .split('\n')
    .filter((line) => !/^\\(un)?restrict\b/.test(line))
    .join('\n');
}

/** What a post-data statement does, which decides when it may run. */
export type PostDataKind = 'setting' | 'index' | 'constraint' | 'foreign-key' | 'own-trigger' | 'other';

/** One statement of a pg_dump script. */
export interface DumpStatement {
  /** Stable id (object name) for the journal. */
  id: string;
  /** Classification. */
  kind: PostDataKind;
  /** The statement text, without the trailing semicolon. */
  sql: string;
  /** `schema.table` the statement works on, when it names one. */
  table?: string;
  /** For a foreign key: the referenced `schema.table`. */
  references?: string;
  /** For a plain PRIMARY KEY / UNIQUE constraint: what is needed to build it as an index first. */
  unique?: UniqueConstraint;
}

/** A PRIMARY KEY or UNIQUE constraint simple enough to build as `CREATE UNIQUE INDEX` + `USING INDEX`. */
export interface UniqueConstraint {
  /** Constraint (and index) name. */
  name: string;
  /** Key columns, in order. */
  columns: string[];
  /** PRIMARY KEY rather than UNIQUE. */
  primary: boolean;
  /** UNIQUE NULLS NOT DISTINCT. */
  nullsNotDistinct: boolean;
}

/** Splits a pg_dump script into classified statements. */
export async function splitDump(script: string): Promise<DumpStatement[]> {
  const tree = await parse(script);
  const bytes = Buffer.from(script, 'utf8');
  const seen = new Map<string, number>();
  return (tree.stmts ?? []).map((s) => {
    const start = s.stmt_location ?? 0;
    const sql = (s.stmt_len ? bytes.subarray(start, start + s.stmt_len) : bytes.subarray(start)).toString('utf8').trim().replace(/;\s*$/, '');
    const { kind, name, ...extra } = classify(s.stmt);
    const n = (seen.get(name) ?? 0) + 1;
    seen.set(name, n);
    return { id: n > 1 ? `${name}#${n}` : name, kind, sql, ...extra };
  });
}

function rel(r: RangeVar | undefined): string {
  return r ? `${r.schemaname ?? 'public'}.${r.relname ?? '?'}` : '?';
}

/** Only plain key lists convert; INCLUDE, WITH, TABLESPACE and DEFERRABLE keep pg_dump's own statement. */
function uniqueOf(con: Constraint): UniqueConstraint | undefined {
  if (con.contype !== 'CONSTR_PRIMARY' && con.contype !== 'CONSTR_UNIQUE') return undefined;
  if (!con.conname || con.including?.length || con.options?.length || con.indexspace || con.deferrable) return undefined;
  const columns = (con.keys ?? []).map((k) => nodeBody(k, 'String')?.sval ?? '');
  if (!columns.length || columns.some((c) => !c)) return undefined;
  return { name: con.conname, columns, primary: con.contype === 'CONSTR_PRIMARY', nullsNotDistinct: !!con.nulls_not_distinct };
}

type Classified = { kind: PostDataKind; name: string; table?: string; references?: string; unique?: UniqueConstraint };

function classify(stmt: Node | undefined): Classified {
  const entry = unwrap(stmt);
  if (!entry) return { kind: 'other', name: 'unknown' };
  if (entry.kind === 'VariableSetStmt') return { kind: 'setting', name: `setting:${String(entry.body.name ?? 'select')}` };
  if (entry.kind === 'SelectStmt') return { kind: 'setting', name: 'setting:select' };
  if (entry.kind === 'IndexStmt') return { kind: 'index', name: `index:${rel(entry.body.relation).split('.')[0]}.${String(entry.body.idxname)}`, table: rel(entry.body.relation) };
  if (entry.kind === 'CreateTrigStmt' && String(entry.body.trigname ?? '').startsWith('bluegreen_')) return { kind: 'own-trigger', name: `trigger:${String(entry.body.trigname)}` };
  if (entry.kind === 'AlterTableStmt') {
    const table = rel(entry.body.relation);
    const first = nodeBody(entry.body.cmds?.[0], 'AlterTableCmd');
    const con = nodeBody(first?.def, 'Constraint');
    if (first?.subtype === 'AT_AddConstraint' && con) {
      const name = `constraint:${table}.${con.conname ?? '?'}`;
      if (con.contype === 'CONSTR_FOREIGN') return { kind: 'foreign-key', name, table, references: rel(con.pktable) };
      const unique = uniqueOf(con);
      return { kind: 'constraint', name, table, ...(unique ? { unique } : {}) };
    }
    return { kind: 'other', name: `alter:${table}`, table };
  }
  if (entry.kind === 'CreateTrigStmt') return { kind: 'other', name: `trigger:${rel(entry.body.relation)}.${String(entry.body.trigname)}`, table: rel(entry.body.relation) };
  return { kind: 'other', name: entry.kind.replace(/Stmt$/, '').toLowerCase() };
}
