// Built-in copy verification. Blue's side is taken inside the snapshot by the worker that copied the
// unit (so it is comparable however many writes blue takes afterwards) and stored in the journal;
// green's side is computed after the copy. Small tables get a full checksum; very large ones a sample
// of PK slices (the same slices are re-read on green through its primary key), or a full checksum
// with `--verify full`. Row counts are always exact.

import type { TableInfo } from '../db/catalog.ts';
import { query, type Db } from '../db/connect.ts';
import { ident, qualified } from '../db/sql.ts';
import { keyColumns, keyLiteral } from './copy.ts';

/** Tables above this size get a sampled checksum unless `--verify full`. */
export const SAMPLE_ABOVE_BYTES = 16 * 1048576;
/** Slices per sampled unit, and rows per slice. */
const SLICES = 8;
const SLICE_ROWS = 1000;

/** Session settings under which row text (and so every checksum) is the same on both sides. */
export const STABLE_OUTPUT = ["SET TimeZone TO 'UTC'", "SET DateStyle TO 'ISO, YMD'", "SET IntervalStyle TO 'postgres'", 'SET extra_float_digits TO 3', "SET bytea_output TO 'hex'"];

/** One sampled slice: up to SLICE_ROWS rows in PK order from `from`. */
export interface Slice {
  /** First PK value of the slice (as text). */
  from: string[];
  /** Rows in the slice. */
  rows: number;
  /** Sum of 64-bit row hashes. */
  sum: string;
}

/**
 * Blue's fingerprint of one data unit, stored in its journal detail. `columns` (full mode) holds one
 * keyed sum per column and `txSnapshot` the snapshot the unit was read in (txid_current_snapshot):
 * validation compares green with blue as of that snapshot, however many writes blue took since.
 */
export type UnitCheck = ({ mode: 'full'; sum: string; columns?: Record<string, string> } | { mode: 'sample'; slices: Slice[] }) & { txSnapshot?: string };

/**
 * The sum over rows of a 64-bit hash of jsonb `[key..., value]`, as text. Sums add, so a column's sum
 * on blue equals green's plus the quarantine's (whose rows are jsonb) whatever the migrations did to
 * the other columns; the primary key in the hash ties each value to its row.
 */
export function columnHashSum(keyJson: readonly string[], valueJson: string): string {
  return `coalesce(sum(hashtextextended(jsonb_build_array(${[...keyJson, valueJson].join(', ')})::text, 0)::numeric), 0)::text`;
}

async function fullFingerprint(db: Db, table: TableInfo, where: string): Promise<{ sum: string; columns: Record<string, string> }> {
  const keys = table.primaryKey.map((c) => `to_jsonb(x.${ident(c)})`);
  const sums = table.columns.map((c) => columnHashSum(keys, `to_jsonb(x.${ident(c)})`));
  const inner = `SELECT ${table.columns.map(ident).join(', ')} FROM ONLY ${qualified(table.schema, table.name)} WHERE ${where}`;
  const { rows } = await query<{ s: string; c: string[] }>(db, `SELECT coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)::text AS s, ARRAY[${sums.join(', ')}]::text[] AS c FROM (${inner}) x`);
  return { sum: rows[0]?.s ?? '0', columns: Object.fromEntries(table.columns.map((c, i) => [c, rows[0]?.c[i] ?? '0'])) };
}

const hashSum = (inner: string): string => `SELECT count(*)::int AS n, coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)::text AS s FROM (${inner}) x`;

async function sliceOf(db: Db, table: TableInfo, where: string, from: readonly string[]): Promise<{ rows: number; sum: string }> {
  const cols = table.columns.map(ident).join(', ');
  const order = table.primaryKey.map(ident).join(', ');
  const inner = `SELECT ${cols} FROM ONLY ${qualified(table.schema, table.name)} WHERE ${where} AND ${keyColumns(table)} >= ${keyLiteral(table, from)} ORDER BY ${order} LIMIT ${SLICE_ROWS}`;
  const { rows } = await query<{ n: number; s: string }>(db, hashSum(inner));
  return { rows: rows[0]?.n ?? 0, sum: rows[0]?.s ?? '0' };
}

async function fullSum(db: Db, table: TableInfo, where: string): Promise<{ rows: number; sum: string }> {
  const inner = `SELECT ${table.columns.map(ident).join(', ')} FROM ONLY ${qualified(table.schema, table.name)} WHERE ${where}`;
  const { rows } = await query<{ n: number; s: string }>(db, hashSum(inner));
  return { rows: rows[0]?.n ?? 0, sum: rows[0]?.s ?? '0' };
}

/** Blue's fingerprint of the rows of `table` matching `where`, read inside the snapshot. */
export async function fingerprint(blue: Db, table: TableInfo, where: string, opts: { full: boolean; estimatedRows: number }): Promise<UnitCheck> {
  const txSnapshot = (await query<{ s: string }>(blue, 'SELECT txid_current_snapshot()::text AS s')).rows[0]?.s ?? '';
  if (opts.full || !table.primaryKey.length) return { mode: 'full', ...(await fullFingerprint(blue, table, where)), txSnapshot };
  const pct = Math.min(100, Math.max(0.0001, (100 * 50 * SLICES) / Math.max(1, opts.estimatedRows)));
  const key = `ARRAY[${table.primaryKey.map((c) => `${ident(c)}::text`).join(', ')}]`;
  const { rows: starts } = await query<{ k: string[] }>(
    blue,
    `SELECT k FROM (SELECT ${key} AS k FROM ONLY ${qualified(table.schema, table.name)} TABLESAMPLE SYSTEM (${pct}) WHERE ${where}) s ORDER BY md5(k::text) LIMIT ${SLICES}`,
  );
  const slices: Slice[] = [];
  for (const s of starts) slices.push({ from: s.k, ...(await sliceOf(blue, table, where, s.k)) });
  return { mode: 'sample', slices, txSnapshot };
}

/** Compares green with blue's fingerprint of one unit; returns a problem sentence or null. */
export async function compareUnit(green: Db, table: TableInfo, where: string, check: UnitCheck): Promise<string | null> {
  if (check.mode === 'full') {
    const g = await fullSum(green, table, where);
    return g.sum === check.sum ? null : 'checksum of the copied rows differs';
  }
  for (const s of check.slices) {
    const g = await sliceOf(green, table, where, s.from);
    if (g.rows !== s.rows || g.sum !== s.sum) return `sampled slice from key ${JSON.stringify(s.from)} differs (blue ${s.rows} rows, green ${g.rows})`;
  }
  return null;
}

/** Exact row count of a table on green. */
export async function greenCount(green: Db, table: TableInfo): Promise<number> {
  const { rows } = await query<{ n: string }>(green, `SELECT count(*) AS n FROM ONLY ${qualified(table.schema, table.name)}`, [], { side: 'green' });
  return Number(rows[0]?.n ?? 0);
}
