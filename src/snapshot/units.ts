// The snapshot's units and their order, computed once by `plan()` and executed by the runner as
// given: pre-data; per table its data (whole, or PK ranges for a large table); as soon as a table's
// data is in, its indexes (PRIMARY KEY / UNIQUE as CREATE UNIQUE INDEX, then ADD CONSTRAINT ... USING
// INDEX); foreign keys once both sides are loaded and indexed; ANALYZE per table; sequences;
// verification; green marked loaded.

import type { TableInfo } from '../db/catalog.ts';
import type { DumpStatement } from '../db/dump.ts';
import { ident, literal, qualified, tableKey } from '../db/sql.ts';
import type { Action } from '../steps/step.ts';

/** What a unit does; decides which `execute` the step gives it. */
export type UnitKind = 'pre-data' | 'ranges' | 'data' | 'post' | 'foreign-key' | 'other' | 'sequences' | 'analyze' | 'verify' | 'mark-loaded';

/** Scheduling facts carried on each snapshot action (and shown by `migrate plan --json`). */
export type UnitFacts = {
  /** How to execute it. */
  unit: UnitKind;
  /** `schema.table` it belongs to, when it belongs to one. */
  table?: string;
  /** Part i of n, for a PK range of a split table. */
  part?: [number, number];
  /** Units that must finish first. */
  after: string[];
  /** Higher starts first (bytes: largest first). */
  priority: number;
  /** Number of PK ranges (ranges units). */
  parts?: number;
  /** Table size on blue (data units), for the plan. */
  bytes?: number;
};

/** An action whose facts are {@link UnitFacts}. */
export type UnitAction = Action & { facts: UnitFacts };

/** Journal unit of a table's data (whole table). */
export const dataUnit = (t: { schema: string; name: string }): string => `data:${tableKey(t)}`;
/** Journal unit of PK range `i` of `n` of a split table. */
export const rangeUnit = (t: { schema: string; name: string }, i: number, n: number): string => `data:${tableKey(t)}:${i}/${n}`;
/** Journal unit that fixes a split table's PK boundaries (inside the snapshot) and empties it on green. */
export const rangesUnit = (t: { schema: string; name: string }): string => `ranges:${tableKey(t)}`;
/** True for the journal unit of a table's data, whole or one PK range. */
export const isDataUnit = (id: string): boolean => id.startsWith('data:');

const MiB = 1048576;

/** How many PK ranges a table is copied in: 1 unless it has a PK and is larger than the split size. */
export function partsFor(table: TableInfo, opts: { jobs: number; splitBytes: number }): number {
  if (!table.primaryKey.length || table.bytes <= opts.splitBytes) return 1;
  return Math.min(4 * opts.jobs, Math.max(2, Math.ceil(table.bytes / opts.splitBytes)));
}

/** The default split size: a table larger than its fair share of one worker (and than 256 MiB) is split. */
export function defaultSplitBytes(tables: readonly TableInfo[], jobs: number): number {
  const total = tables.reduce((a, t) => a + t.bytes, 0);
  return Math.max(256 * MiB, Math.ceil(total / Math.max(1, jobs)));
}

/** Inputs of {@link planUnits}. */
export interface PlanInput {
  /** Tables to copy, largest first. */
  tables: readonly TableInfo[];
  /** Post-data statements from pg_dump (settings and our own triggers already removed). */
  post: readonly DumpStatement[];
  /** Parallel workers. */
  jobs: number;
  /** Split size in bytes. */
  splitBytes: number;
  /** Units already done in this run: a table keeps the split it was started with. */
  done: ReadonlyMap<string, Record<string, unknown>>;
  /** Blue's own `autovacuum_enabled` reloption per `schema.table`, for the tables that set one. */
  autovacuum: ReadonlyMap<string, string>;
}

/**
 * What a table's analyze unit runs: pre-data turned autovacuum off on every table (it would race
 * the index builds for locks), so blue's own setting comes back first, then ANALYZE.
 */
function analyzeSql(t: TableInfo, own: string | undefined): string {
  const target = qualified(t.schema, t.name);
  const restore = own === undefined ? `ALTER TABLE ONLY ${target} RESET (autovacuum_enabled)` : `ALTER TABLE ONLY ${target} SET (autovacuum_enabled = ${literal(own)})`;
  return `${restore};\nANALYZE ${target}`;
}

/** Every unit of the snapshot step, in a readable order, each with its dependencies. */
export function planUnits(input: PlanInput): UnitAction[] {
  const out: UnitAction[] = [];
  const add = (id: string, sentence: string, side: Action['side'], facts: UnitFacts, sql?: string): void => {
    out.push({ id, sentence, side, facts, after: facts.after, priority: facts.priority, ...(sql ? { sql } : {}) });
  };
  add('pre-data', 'create schemas, tables and types on green from pg_dump --section=pre-data', 'green', { unit: 'pre-data', after: [], priority: Number.MAX_SAFE_INTEGER });

  const byKey = new Map(input.tables.map((t) => [tableKey(t), t]));
  const dataIds = new Map<string, string[]>();
  for (const t of input.tables) {
    const key = tableKey(t);
    const stored = input.done.get(rangesUnit(t));
    const parts = input.done.has(dataUnit(t)) ? 1 : stored ? Number(stored.parts) : partsFor(t, input);
    const mib = (t.bytes / MiB).toFixed(1);
    if (parts === 1) {
      add(dataUnit(t), `stream ${key} (${mib} MiB) blue -> green with binary COPY FREEZE`, 'both', { unit: 'data', table: key, after: ['pre-data'], priority: t.bytes, bytes: t.bytes });
      dataIds.set(key, [dataUnit(t)]);
      continue;
    }
    add(rangesUnit(t), `split ${key} (${mib} MiB) into ${parts} primary-key ranges inside the snapshot`, 'both', { unit: 'ranges', table: key, after: ['pre-data'], priority: t.bytes + 1, parts });
    const ids: string[] = [];
    for (let i = 1; i <= parts; i++) {
      ids.push(rangeUnit(t, i, parts));
      add(rangeUnit(t, i, parts), `stream primary-key range ${i} of ${parts} of ${key} blue -> green with binary COPY`, 'both', { unit: 'data', table: key, part: [i, parts], after: [rangesUnit(t)], priority: t.bytes / parts });
    }
    dataIds.set(key, ids);
  }
  const allData = [...dataIds.values()].flat();
  const dataOf = (key?: string): string[] => (key && dataIds.get(key)) || allData;
  const priorityOf = (key?: string): number => (key ? (byKey.get(key)?.bytes ?? 0) : 0);

  const indexIds = new Map<string, string[]>();
  const addIndex = (key: string | undefined, id: string, sentence: string, sql: string, after: string[]): void => {
    if (key) indexIds.set(key, [...(indexIds.get(key) ?? []), id]);
    add(id, sentence, 'green', { unit: 'post', ...(key ? { table: key } : {}), after, priority: priorityOf(key) }, sql);
  };
  for (const s of input.post.filter((p) => p.kind === 'index' || p.kind === 'constraint')) {
    const t = s.table ? byKey.get(s.table) : undefined;
    if (s.unique && t) {
      const indexId = `unique-index:${s.table}.${s.unique.name}`;
      const cols = s.unique.columns.map(ident).join(', ');
      const target = qualified(t.schema, t.name);
      addIndex(s.table, indexId, `build the index of ${s.id.replace(/^constraint:/, '')} on its own (no long lock)`, `CREATE UNIQUE INDEX ${ident(s.unique.name)} ON ${target} USING btree (${cols})${s.unique.nullsNotDistinct ? ' NULLS NOT DISTINCT' : ''}`, dataOf(s.table));
      addIndex(s.table, s.id, `attach ${s.id.replace(/^constraint:/, '')} with ADD CONSTRAINT ... USING INDEX`, `ALTER TABLE ONLY ${target} ADD CONSTRAINT ${ident(s.unique.name)} ${s.unique.primary ? 'PRIMARY KEY' : 'UNIQUE'} USING INDEX ${ident(s.unique.name)}`, [indexId]);
    } else {
      addIndex(s.table, s.id, `run ${s.id}`, s.sql, dataOf(s.table));
    }
  }
  const indexesOf = (key?: string): string[] => (key ? (indexIds.get(key) ?? []) : [...indexIds.values()].flat());

  const fkIds = new Map<string, string[]>();
  for (const s of input.post.filter((p) => p.kind === 'foreign-key')) {
    const after = [...new Set([...dataOf(s.table), ...indexesOf(s.table), ...dataOf(s.references), ...indexesOf(s.references)])];
    if (s.table) fkIds.set(s.table, [...(fkIds.get(s.table) ?? []), s.id]);
    add(s.id, `add ${s.id.replace(/^constraint:/, '')} NOT VALID, then VALIDATE`, 'green', { unit: 'foreign-key', ...(s.table ? { table: s.table } : {}), after, priority: priorityOf(s.table) }, s.sql);
  }
  const beforeOthers = out.filter((a) => a.facts.unit !== 'pre-data').map((a) => a.id);
  const others = input.post.filter((p) => p.kind === 'other');
  for (const s of others) add(s.id, `run ${s.id}`, 'green', { unit: 'other', after: beforeOthers, priority: 0 }, s.sql);

  add('sequences', "set every sequence on green to blue's value", 'both', { unit: 'sequences', after: ['pre-data'], priority: 0 });
  for (const t of input.tables) {
    const key = tableKey(t);
    const after = [...dataOf(key), ...indexesOf(key), ...(fkIds.get(key) ?? [])];
    add(`analyze:${key}`, `restore blue's autovacuum setting of ${key} and ANALYZE it on green`, 'green', { unit: 'analyze', table: key, after, priority: -1 }, analyzeSql(t, input.autovacuum.get(key)));
  }
  add('verify', 'compare per-table row counts and checksums taken inside the snapshot with green', 'both', { unit: 'verify', after: out.filter((a) => a.facts.unit !== 'pre-data').map((a) => a.id), priority: -2 });
  add('mark-loaded', "mark green's copy as fully loaded", 'green', { unit: 'mark-loaded', after: ['verify'], priority: -3 });
  return out;
}
