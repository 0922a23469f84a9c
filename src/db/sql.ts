// Identifier and literal quoting. Every name that reaches SQL text goes through here; values go as
// bind parameters wherever Postgres allows one.

/** Quotes one identifier the way `quote_ident` would, always with double quotes. */
export function ident(name: string): string {
  if (name.includes('\0')) throw new Error('identifier contains a NUL byte');
  return `"${name.replace(/"/g, '""')}"`;
}

/** A schema-qualified, quoted table name. */
export function qualified(schema: string, table: string): string {
  return `${ident(schema)}.${ident(table)}`;
}

/** Quotes a string literal (for the few places that cannot take a bind parameter, e.g. DDL). */
export function literal(value: string): string {
  if (value.includes('\0')) throw new Error('literal contains a NUL byte');
  return `'${value.replace(/'/g, "''")}'`;
}

/** A table reference as used throughout the tool. */
export interface TableRef {
  /** Schema name, unquoted. */
  schema: string;
  /** Table name, unquoted. */
  name: string;
}

/** `schema.table` for humans and journal keys (unquoted). */
export function tableKey(t: TableRef): string {
  return `${t.schema}.${t.name}`;
}
