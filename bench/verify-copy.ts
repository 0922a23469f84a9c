// Compares a cloned database with its source for the snapshot bench: per user table the exact row
// count and a full checksum (sum of 64-bit hashes of every row's text), then the indexes and the
// constraints (name, definition, validated). Returns one sentence per difference.

import pg from 'pg';
import { STABLE_OUTPUT } from '../src/snapshot/check.ts';

const TABLES = `SELECT format('%I.%I', n.nspname, c.relname) AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%' AND n.nspname NOT LIKE 'bluegreen%' ORDER BY 1`;
const SHAPE = `SELECT 'index ' || indexname || ': ' || indexdef AS d FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND schemaname NOT LIKE 'bluegreen%'
  UNION ALL SELECT 'constraint ' || conname || ': ' || pg_get_constraintdef(oid) || CASE WHEN convalidated THEN '' ELSE ' NOT VALID' END
    FROM pg_constraint WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace) AND connamespace::regnamespace::text NOT LIKE 'bluegreen%'
  ORDER BY 1`;

async function describe(dsn: string): Promise<{ tables: Map<string, string>; shape: string[] }> {
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  try {
    for (const s of STABLE_OUTPUT) await c.query(s);
    const tables = new Map<string, string>();
    for (const { t } of (await c.query<{ t: string }>(TABLES)).rows) {
      const { rows } = await c.query<{ n: string; s: string }>(`SELECT count(*)::text AS n, coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)::text AS s FROM ONLY ${t} x`);
      tables.set(t, `${rows[0]!.n} rows, checksum ${rows[0]!.s}`);
    }
    return { tables, shape: (await c.query<{ d: string }>(SHAPE)).rows.map((r) => r.d) };
  } finally {
    await c.end();
  }
}

/** Differences between source and copy; empty when the copy is exact. */
export async function compareDatabases(sourceDsn: string, copyDsn: string): Promise<string[]> {
  const [a, b] = await Promise.all([describe(sourceDsn), describe(copyDsn)]);
  const out: string[] = [];
  for (const [t, v] of a.tables) if (b.tables.get(t) !== v) out.push(`${t}: source ${v}, copy ${b.tables.get(t) ?? 'missing'}`);
  for (const t of b.tables.keys()) if (!a.tables.has(t)) out.push(`${t}: only in the copy`);
  const shapeB = new Set(b.shape);
  const shapeA = new Set(a.shape);
  for (const d of a.shape) if (!shapeB.has(d)) out.push(`missing in the copy: ${d}`);
  for (const d of b.shape) if (!shapeA.has(d)) out.push(`only in the copy: ${d}`);
  return out;
}
