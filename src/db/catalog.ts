// Catalog reads shared by snapshot, cleanup and validate: user tables with their copyable columns
// and sizes, primary keys, foreign keys and sequences.

import { query, type Db } from './connect.ts';
import { USER_SCHEMA_FILTER } from './green.ts';
import type { TableRef } from './sql.ts';

/** A user table with what the copy needs to know. */
export interface TableInfo extends TableRef {
  /** Columns in attnum order, generated columns left out. */
  columns: string[];
  /** Column types by name (format_type). */
  types: Record<string, string>;
  /** Primary key columns, empty when there is none. */
  primaryKey: string[];
  /** On-disk size in bytes, for ordering the copy. */
  bytes: number;
}

/** Lists user tables (outside our schemas and `exclude`), largest first. */
export async function listTables(db: Db, exclude: readonly string[] = []): Promise<TableInfo[]> {
  const { rows } = await query<{ schema: string; name: string; columns: string[]; types: string[]; pk: string[] | null; bytes: string }>(
    db,
    `SELECT n.nspname AS schema, c.relname AS name,
            array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attgenerated = '') AS columns,
            array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FILTER (WHERE a.attgenerated = '') AS types,
            (SELECT array_agg(pa.attname::text ORDER BY array_position(i.indkey::int2[], pa.attnum))
               FROM pg_index i JOIN pg_attribute pa ON pa.attrelid = i.indrelid AND pa.attnum = ANY (i.indkey)
              WHERE i.indrelid = c.oid AND i.indisprimary) AS pk,
            pg_total_relation_size(c.oid) AS bytes
       FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE c.relkind = 'r' AND ${USER_SCHEMA_FILTER} AND NOT (n.nspname = ANY ($1::text[]))
      GROUP BY n.nspname, c.relname, c.oid
      ORDER BY pg_total_relation_size(c.oid) DESC, n.nspname, c.relname`,
    [exclude],
  );
  return rows.map((r) => ({
    schema: r.schema,
    name: r.name,
    columns: r.columns,
    types: Object.fromEntries(r.columns.map((c, i) => [c, r.types[i] ?? ''])),
    primaryKey: r.pk ?? [],
    bytes: Number(r.bytes),
  }));
}

/** A foreign key as the catalog describes it. */
export interface ForeignKey {
  /** Constraint name. */
  name: string;
  /** Referencing table. */
  child: TableRef;
  /** Referencing columns. */
  childColumns: string[];
  /** Referenced table. */
  parent: TableRef;
  /** Referenced columns. */
  parentColumns: string[];
  /** False for NOT VALID constraints. */
  validated: boolean;
}

/** Lists foreign keys between user tables. */
export async function listForeignKeys(db: Db): Promise<ForeignKey[]> {
  const { rows } = await query<{ name: string; cs: string; ct: string; ccols: string[]; ps: string; pt: string; pcols: string[]; validated: boolean }>(
    db,
    `SELECT con.conname AS name, n.nspname AS cs, c.relname AS ct, pn.nspname AS ps, p.relname AS pt, con.convalidated AS validated,
            (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum) AS ccols,
            (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum) AS pcols
       FROM pg_constraint con
       JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
      WHERE con.contype = 'f' AND ${USER_SCHEMA_FILTER}
      ORDER BY n.nspname, c.relname, con.conname`,
  );
  return rows.map((r) => ({
    name: r.name,
    child: { schema: r.cs, name: r.ct },
    childColumns: r.ccols,
    parent: { schema: r.ps, name: r.pt },
    parentColumns: r.pcols,
    validated: r.validated,
  }));
}

/** A sequence's current state. */
export interface SequenceState {
  /** Schema. */
  schema: string;
  /** Sequence name. */
  name: string;
  /** last_value, or null when never used. */
  lastValue: string | null;
}

/** Lists sequences in user schemas with their last values. */
export async function listSequences(db: Db): Promise<SequenceState[]> {
  const { rows } = await query<{ schema: string; name: string; last_value: string | null }>(
    db,
    `SELECT s.schemaname AS schema, s.sequencename AS name, s.last_value::text AS last_value
       FROM pg_sequences s JOIN pg_namespace n ON n.nspname = s.schemaname
      WHERE ${USER_SCHEMA_FILTER} ORDER BY 1, 2`,
  );
  return rows.map((r) => ({ schema: r.schema, name: r.name, lastValue: r.last_value }));
}

/** Planner estimates of a table, for progress (ETA) and sizing. */
export interface TableEstimate {
  /** pg_class.reltuples (0 when never analyzed). */
  rows: number;
  /** Size of the main fork in bytes (no indexes, no TOAST). */
  heapBytes: number;
}

/** Row and heap-size estimates of user tables, keyed by `schema.table`. */
export async function tableEstimates(db: Db): Promise<Map<string, TableEstimate>> {
  const { rows } = await query<{ key: string; rows: string; heap: string }>(
    db,
    `SELECT n.nspname || '.' || c.relname AS key, greatest(c.reltuples, 0)::bigint::text AS rows, pg_relation_size(c.oid)::text AS heap
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'r' AND ${USER_SCHEMA_FILTER}`,
  );
  return new Map(rows.map((r) => [r.key, { rows: Number(r.rows), heapBytes: Number(r.heap) }]));
}
