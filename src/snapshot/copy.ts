// Moving rows: one table (TRUNCATE + COPY FREEZE in one green transaction, so a redo is harmless) or
// one primary-key range of a large table (plain COPY; a redo first deletes that range on green).
// Binary COPY TO STDOUT on blue is piped into COPY FROM STDIN on green with backpressure: nothing is
// buffered beyond a socket's worth, so memory stays flat whatever the table size.

import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import copyStreams from 'pg-copy-streams';
import type { TableInfo } from '../db/catalog.ts';
import { noteOrigin, query, toPostgresError, withTransaction, type Db } from '../db/connect.ts';
import { ident, literal, qualified } from '../db/sql.ts';

/** A primary-key range: `lo <= pk < hi`, either end open when null. */
export interface KeyRange {
  /** Inclusive lower bound (PK values as text), or null for "from the start". */
  lo: string[] | null;
  /** Exclusive upper bound, or null for "to the end". */
  hi: string[] | null;
}

/** Target rows per split-point sample: enough for even ranges, small enough to stay instant. */
const SAMPLE_ROWS = 20_000;

/** A PK value tuple as a typed SQL literal: `(lit::type, ...)`, or a bare literal for one column. */
export function keyLiteral(table: TableInfo, values: readonly string[]): string {
  const parts = table.primaryKey.map((c, i) => `${literal(values[i] ?? '')}::${table.types[c] ?? 'text'}`);
  return parts.length === 1 ? parts[0]! : `(${parts.join(', ')})`;
}

/** The PK columns as an SQL expression comparable with {@link keyLiteral}. */
export function keyColumns(table: TableInfo): string {
  const cols = table.primaryKey.map(ident);
  return cols.length === 1 ? cols[0]! : `(${cols.join(', ')})`;
}

/** WHERE clause selecting a range; `FALSE` for an empty range (null). */
export function rangePredicate(table: TableInfo, range: KeyRange | null): string {
  if (!range) return 'FALSE';
  const parts: string[] = [];
  if (range.lo) parts.push(`${keyColumns(table)} >= ${keyLiteral(table, range.lo)}`);
  if (range.hi) parts.push(`${keyColumns(table)} < ${keyLiteral(table, range.hi)}`);
  return parts.length ? parts.join(' AND ') : 'TRUE';
}

/**
 * Splits a table into `parts` PK ranges from a block sample read inside the snapshot. The ranges
 * cover the whole key space whatever the sample, so later writes can never fall between them;
 * null marks a range left empty because the sample had too few distinct keys.
 */
export async function splitRanges(blue: Db, table: TableInfo, parts: number, estimatedRows: number): Promise<(KeyRange | null)[]> {
  const pct = estimatedRows > SAMPLE_ROWS ? Math.max(0.0001, (100 * SAMPLE_ROWS) / estimatedRows) : 100;
  const key = `ARRAY[${table.primaryKey.map((c) => `${ident(c)}::text`).join(', ')}]`;
  const order = table.primaryKey.map(ident).join(', ');
  const { rows } = await query<{ k: string[] }>(blue, `SELECT ${key} AS k FROM ONLY ${qualified(table.schema, table.name)} TABLESAMPLE SYSTEM (${pct}) ORDER BY ${order}`, [], { side: 'blue' });
  const bounds: string[][] = [];
  for (let i = 1; i < parts; i++) {
    const b = rows[Math.floor((i * rows.length) / parts)]?.k;
    if (b && (!bounds.length || JSON.stringify(bounds[bounds.length - 1]) !== JSON.stringify(b))) bounds.push(b);
  }
  const ranges: (KeyRange | null)[] = [];
  for (let i = 0; i <= bounds.length; i++) ranges.push({ lo: bounds[i - 1] ?? null, hi: bounds[i] ?? null });
  while (ranges.length < parts) ranges.push(null);
  return ranges;
}

/** What one data unit moved: rows as counted by blue's COPY (inside the snapshot) and stream bytes. */
export interface Moved {
  /** Rows blue sent (its COPY command tag). */
  rows: number;
  /** Rows green stored (its COPY command tag). */
  greenRows: number;
  /** Bytes of the binary stream. */
  bytes: number;
}

/** Streams `SELECT cols FROM table WHERE where` from blue into green on the current green transaction. */
async function stream(blue: Db, green: Db, table: TableInfo, where: string, freeze: boolean, onBytes: (n: number) => void): Promise<Moved> {
  const cols = table.columns.map(ident).join(', ');
  const target = qualified(table.schema, table.name);
  const select = where === 'TRUE' ? `COPY ${target} (${cols}) TO STDOUT (FORMAT binary)` : `COPY (SELECT ${cols} FROM ONLY ${target} WHERE ${where}) TO STDOUT (FORMAT binary)`;
  const into = `COPY ${target} (${cols}) FROM STDIN (FORMAT binary${freeze ? ', FREEZE' : ''})`;
  const source = blue.query(copyStreams.to(select));
  const sink = green.query(copyStreams.from(into));
  // A COPY stream's error never passes through a query promise: say here which side raised it (a
  // lost socket was already tagged by its client, and the first tag wins).
  source.on('error', (err) => void noteOrigin(err, 'blue', select));
  sink.on('error', (err) => void noteOrigin(err, 'green', into));
  let bytes = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      onBytes(chunk.length);
      cb(null, chunk);
    },
  });
  await pipeline(source, counter, sink);
  return { rows: Number(source.rowCount ?? 0), greenRows: Number(sink.rowCount ?? 0), bytes };
}

/** Copies a whole table: TRUNCATE + COPY FREEZE in one green transaction, so a redo is harmless. */
export async function copyWhole(blue: Db, green: Db, table: TableInfo, onBytes: (n: number) => void): Promise<Moved> {
  return withTransaction(green, async () => {
    await query(green, `TRUNCATE ONLY ${qualified(table.schema, table.name)}`, [], { side: 'green' });
    return stream(blue, green, table, 'TRUE', true, onBytes);
  }, { side: 'green' }).catch((err: unknown) => Promise.reject(toPostgresError(err, { side: 'green' })));
}

/** Copies one PK range; `redo` (an earlier attempt may have committed) deletes the range on green first. */
export async function copyRange(blue: Db, green: Db, table: TableInfo, range: KeyRange | null, redo: boolean, onBytes: (n: number) => void): Promise<Moved> {
  const where = rangePredicate(table, range);
  return withTransaction(green, async () => {
    if (redo) await query(green, `DELETE FROM ONLY ${qualified(table.schema, table.name)} WHERE ${where}`, [], { side: 'green' });
    return stream(blue, green, table, where, false, onBytes);
  }, { side: 'green' }).catch((err: unknown) => Promise.reject(toPostgresError(err, { side: 'green' })));
}
