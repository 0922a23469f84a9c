// pgoutput messages as the change log stages them: every value exactly as Postgres printed it.
//
// pg-logical-replication's parser runs each column's text through pg's global type parsers (a
// timestamptz becomes a Date and loses its microseconds, a numeric may become a float, ...). Its
// relation message is the very object it caches for the tuples that follow, so giving that object's
// columns an identity parser keeps every later value as the text Postgres sent; pg.types is never
// touched. An UPDATE's unchanged TOASTed column ('u') comes back undefined: it is staged as absent
// (not null) and named in toast_unchanged. With REPLICA IDENTITY FULL the library fills it from the
// old row, which Postgres sends in full (detoasted), so the value is exact and nothing is listed.

import { PgoutputPlugin, type Pgoutput } from 'pg-logical-replication';
import { tableKey } from '../db/sql.ts';

/** A value as Postgres printed it (text output function), or null. */
export type TextValue = string | null;

/** Column name to text value; a column that was not sent is absent. */
export type TextRow = Record<string, TextValue>;

/** What one change did, before it gets its transaction's commit LSN and its place in it. */
export interface Change {
  /** `schema.table` on blue (unquoted). */
  relation: string;
  /** Insert, update, delete or truncate. */
  op: 'I' | 'U' | 'D' | 'T';
  /** The row's old key (replica identity columns) for an update or delete. */
  key: TextRow | null;
  /** The new row of an insert or update. */
  row: TextRow | null;
  /** Columns of an update whose unchanged TOASTed value was not sent (absent from `row`). */
  toastUnchanged: string[] | null;
}

/** Keeps the text Postgres sent: the parser every column of a relation gets. */
const keepText = (raw: unknown): unknown => raw;

/** Harmless stand-in for a message that could not be decoded (the failure is reported through onError). */
const UNDECODABLE: Pgoutput.MessageOrigin = { tag: 'origin', originLsn: null, originName: '' };

/** pgoutput (protocol 1) with every column kept as text; counts the messages it parsed. */
export class TextPgoutputPlugin extends PgoutputPlugin {
  /** XLogData messages parsed so far: the reader orders keepalives against the messages it handled. */
  received = 0;
  private readonly onError: (err: unknown) => void;

  constructor(publication: string, onError: (err: unknown) => void) {
    super({ protoVersion: 1, publicationNames: [publication] });
    this.onError = onError;
  }

  /** Parses one message; never throws (it runs inside the socket's data handler), reports instead. */
  override parse(buffer: Buffer): Pgoutput.Message {
    this.received += 1;
    try {
      const msg = super.parse(buffer);
      if (msg.tag === 'relation') for (const column of msg.columns) column.parser = keepText;
      return msg;
    } catch (err) {
      this.onError(err);
      return UNDECODABLE;
    }
  }
}

function textValue(relation: Pgoutput.MessageRelation, column: string, value: unknown): TextValue {
  if (value === null || typeof value === 'string') return value;
  throw new Error(`pgoutput sent a non-text value for ${tableKey(relation)}.${column}`);
}

/** The given columns of a tuple as text; undefined (not sent) columns are left out and returned apart. */
function textRow(relation: Pgoutput.MessageRelation, tuple: Record<string, unknown>, columns: readonly string[]): { row: TextRow; absent: string[] } {
  const row: TextRow = {};
  const absent: string[] = [];
  for (const name of columns) {
    const value = tuple[name];
    if (value === undefined) absent.push(name);
    else row[name] = textValue(relation, name, value);
  }
  return { row, absent };
}

/** The old key: from the key or old tuple when sent, else (key unchanged) from the new row's key columns. */
function oldKey(relation: Pgoutput.MessageRelation, sent: Record<string, unknown> | null, newRow: TextRow | null): TextRow | null {
  if (sent) return textRow(relation, sent, relation.keyColumns).row;
  if (!newRow || !relation.keyColumns.every((c) => c in newRow)) return null;
  return Object.fromEntries(relation.keyColumns.map((c) => [c, newRow[c] ?? null]));
}

/** The changes a message carries (a truncate one per table); none for begin, commit, relation and the rest. */
export function changesOf(msg: Pgoutput.Message): Change[] {
  switch (msg.tag) {
    case 'insert': {
      const { row } = textRow(msg.relation, msg.new, msg.relation.columns.map((c) => c.name));
      return [{ relation: tableKey(msg.relation), op: 'I', key: null, row, toastUnchanged: null }];
    }
    case 'update': {
      const { row, absent } = textRow(msg.relation, msg.new, msg.relation.columns.map((c) => c.name));
      const key = oldKey(msg.relation, msg.key ?? msg.old, row);
      return [{ relation: tableKey(msg.relation), op: 'U', key, row, toastUnchanged: absent.length ? absent : null }];
    }
    case 'delete':
      return [{ relation: tableKey(msg.relation), op: 'D', key: oldKey(msg.relation, msg.key ?? msg.old, null), row: null, toastUnchanged: null }];
    case 'truncate':
      return msg.relations.map((r) => ({ relation: tableKey(r), op: 'T', key: null, row: null, toastUnchanged: null }));
    default:
      return [];
  }
}

/** A pgoutput commit time (microseconds since the Unix epoch) as ISO 8601 with microseconds. */
export function commitTimeText(micros: bigint): string {
  const ms = micros / 1000n;
  const iso = new Date(Number(ms)).toISOString();
  return `${iso.slice(0, 19)}.${(micros % 1_000_000n).toString().padStart(6, '0')}Z`;
}
