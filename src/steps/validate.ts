// Validate: blue and green must agree on everything the migrations did not change. Per table, blue's
// row count equals green's plus the quarantined rows, and an order-independent checksum over the
// unchanged columns (same name and type on both sides, not touched by a migration) adds up the same.

import { parse } from 'libpg-query';
import { listTables, type TableInfo } from '../db/catalog.ts';
import { query, type Db } from '../db/connect.ts';
import { QUARANTINE_SCHEMA, quarantineTable } from '../db/quarantine.ts';
import { ident, qualified, tableKey } from '../db/sql.ts';
import { FindingsError } from '../errors.ts';
import type { Migration } from '../sources/types.ts';
import { checkInvariants, invariantFailures, invariantsOf, type InvariantResult } from '../validate/invariants.ts';
import type { Action, Step, StepContext } from './step.ts';

/** One table's comparison. */
export interface TableComparison {
  /** schema.table */
  table: string;
  /** Rows on blue. */
  blueRows: number;
  /** Rows on green. */
  greenRows: number;
  /** Rows of this table in quarantine. */
  quarantinedRows: number;
  /** Columns whose values were compared. */
  checkedColumns: string[];
  /** Whether counts and checksum agree. */
  ok: boolean;
  /** Why not, when not ok. */
  problem?: string;
}

/** The validation report. */
export interface ValidationReport {
  /** True when every compared table agrees. */
  passed: boolean;
  /** Per-table results. */
  tables: TableComparison[];
  /** Tables not compared, with the reason. */
  skipped: { table: string; reason: string }[];
  /** Human lines for each failure. */
  failures: string[];
  /** Semantic invariants (src/validate/invariants.ts); a failing one fails validation. */
  invariants: InvariantResult[];
}

/** Columns that migrations rewrite (UPDATE ... SET, ALTER COLUMN), as `schema.table.column`. */
export async function touchedColumns(migrations: readonly Migration[]): Promise<Set<string>> {
  const touched = new Set<string>();
  for (const m of migrations) {
    if (!m.sql.trim()) continue;
    const tree = (await parse(m.sql)) as unknown as { stmts: { stmt: Record<string, Record<string, unknown>> }[] };
    for (const { stmt } of tree.stmts) {
      const [type, body] = Object.entries(stmt)[0] ?? [];
      if (!body) continue;
      const rel = body.relation as { schemaname?: string; relname?: string } | undefined;
      const table = `${rel?.schemaname ?? 'public'}.${rel?.relname ?? ''}`;
      if (type === 'UpdateStmt') {
        for (const t of (body.targetList as { ResTarget?: { name?: string } }[]) ?? []) if (t.ResTarget?.name) touched.add(`${table}.${t.ResTarget.name}`);
      }
      if (type === 'AlterTableStmt') {
        for (const c of (body.cmds as { AlterTableCmd?: { subtype?: string; name?: string } }[]) ?? []) {
          if (c.AlterTableCmd?.name && c.AlterTableCmd.subtype !== 'AT_AddConstraint') touched.add(`${table}.${c.AlterTableCmd.name}`);
        }
      }
    }
  }
  return touched;
}

/** Tables where each migration source records what it applied; they differ by design. */
const TRACKING_TABLES: Record<string, string | undefined> = { pop: 'public.schema_migration', 'postgres-migrations': 'public.migrations' };

const rowHash = (exprs: string[]): string => `('x' || substr(md5(jsonb_build_array(${exprs.join(', ')})::text), 1, 16))::bit(64)::bigint`;

async function checksum(db: Db, from: string, exprs: string[]): Promise<{ rows: number; sum: string }> {
  const { rows } = await query<{ n: string; s: string | null }>(db, `SELECT count(*) AS n, sum(${rowHash(exprs)}::numeric)::text AS s FROM ${from}`);
  return { rows: Number(rows[0]?.n ?? 0), sum: rows[0]?.s ?? '0' };
}

async function quarantineExists(green: Db, qt: string): Promise<boolean> {
  const { rows } = await query<{ ok: boolean }>(green, `SELECT to_regclass($1) IS NOT NULL AS ok`, [`${QUARANTINE_SCHEMA}.${ident(qt)}`]);
  return rows[0]?.ok ?? false;
}

/** Compares one table present on both sides. */
export async function compareTable(blue: Db, green: Db, b: TableInfo, g: TableInfo, touched: Set<string>): Promise<TableComparison> {
  const key = tableKey(b);
  const columns = b.columns.filter((c) => g.types[c] === b.types[c] && !touched.has(`${key}.${c}`));
  const blueSide = await checksum(blue, `ONLY ${qualified(b.schema, b.name)} t`, columns.map((c) => `to_jsonb(t.${ident(c)})`));
  const greenSide = await checksum(green, `ONLY ${qualified(g.schema, g.name)} t`, columns.map((c) => `to_jsonb(t.${ident(c)})`));
  const qt = quarantineTable(b);
  const quarantined = (await quarantineExists(green, qt))
    ? await checksum(green, `${qualified(QUARANTINE_SCHEMA, qt)} q WHERE q.source_table = '${key.replace(/'/g, "''")}'`, columns.map((c) => `q.row -> '${c.replace(/'/g, "''")}'`))
    : { rows: 0, sum: '0' };
  const expected = BigInt(greenSide.sum) + BigInt(quarantined.sum);
  const countsOk = blueSide.rows === greenSide.rows + quarantined.rows;
  const sumOk = BigInt(blueSide.sum) === expected;
  const result: TableComparison = { table: key, blueRows: blueSide.rows, greenRows: greenSide.rows, quarantinedRows: quarantined.rows, checkedColumns: columns, ok: countsOk && sumOk };
  if (!countsOk) result.problem = `blue has ${blueSide.rows} rows, green ${greenSide.rows} + ${quarantined.rows} quarantined`;
  else if (!sumOk) result.problem = `checksum of ${columns.length} unchanged column(s) differs`;
  return result;
}

/** Runs the whole comparison; never throws on differences, returns them. */
export async function validateCopy(ctx: Pick<StepContext, 'blue' | 'green' | 'config' | 'source'>, migrations: readonly Migration[], opts: { drained?: boolean } = {}): Promise<ValidationReport> {
  const skip = new Set(ctx.config.raw.validate.skipTables);
  const tracking = TRACKING_TABLES[ctx.source.kind];
  const blueTables = await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas);
  const greenTables = new Map((await listTables(ctx.green)).map((t) => [tableKey(t), t]));
  const touched = await touchedColumns(migrations);
  const report: ValidationReport = { passed: true, tables: [], skipped: [], failures: [], invariants: [] };
  for (const b of blueTables) {
    const key = tableKey(b);
    const g = greenTables.get(key);
    if (skip.has(key)) report.skipped.push({ table: key, reason: 'listed in validate.skipTables' });
    else if (key === tracking) report.skipped.push({ table: key, reason: 'migration tracking table (gains the new versions)' });
    else if (!g) report.skipped.push({ table: key, reason: 'no longer exists on green (dropped or merged by the migrations)' });
    else {
      const cmp = await compareTable(ctx.blue, ctx.green, b, g, touched);
      report.tables.push(cmp);
      if (!cmp.ok) report.failures.push(`${key}: ${cmp.problem}`);
    }
  }
  report.invariants = await checkInvariants(ctx.blue, ctx.green, invariantsOf(ctx.config), { drained: opts.drained ?? false });
  report.failures.push(...invariantFailures(report.invariants));
  report.passed = report.failures.length === 0;
  return report;
}

/** The validate step. */
export const validate = {
  name: 'validate',
  purpose: 'compare blue and green: counts net of quarantine, checksums of unchanged columns',
  async validate() {},
  async plan(ctx) {
    const tables = await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas);
    return tables.map((t): Action => ({ id: `table:${tableKey(t)}`, sentence: `compare ${tableKey(t)}: rows net of quarantine and a checksum of unchanged columns`, side: 'both' }));
  },
  async run(ctx) {
    const report = await validateCopy(ctx, await ctx.source.all());
    if (!report.passed) throw new FindingsError(`validation failed:\n  ${report.failures.join('\n  ')}`, 'inspect the named tables; nothing was cut over', { validation: report });
    return { validation: report };
  },
  async verify() {},
} satisfies Step;
