// Validate: green must hold what blue held in the snapshot, net of quarantine, and every access blue
// granted must still work on green. Blue keeps taking writes, so blue's side is read "as of the
// snapshot": per table, the rows blue's COPY sent and keyed per-column checksums journalled inside the
// snapshot (src/validate/as-of-snapshot.ts) are compared with green plus quarantine over the columns no
// migration touched; semantic invariants read only blue rows unchanged since the snapshot. Retyped
// columns are compared through their conversion and the merge's dropped rows and rewritten states are
// listed (src/validate/changes.ts). Quarantine is never credited as "still works": it is listed as an
// expected loss by rule.

import { parse } from 'libpg-query';
import { bodies, tableOf, unwrap } from '../lint/parse.ts';
import { listTables, type TableInfo } from '../db/catalog.ts';
import { query, withTransaction, type Db } from '../db/connect.ts';
import { QUARANTINE_SCHEMA, quarantineTable, rewrittenColumns } from '../db/quarantine.ts';
import { ident, literal, qualified, tableKey } from '../db/sql.ts';
import { FindingsError } from '../errors.ts';
import { columnHashSum } from '../snapshot/check.ts';
import type { Migration } from '../sources/types.ts';
import { snapshotBaseline, type SnapshotTable } from '../validate/as-of-snapshot.ts';
import { checkChanges, type ChangeResult, type ConversionResult } from '../validate/changes.ts';
import { checkInvariants, invariantFailures, invariantsOf, type InvariantResult } from '../validate/invariants.ts';
import type { Step, StepContext, StepInputs } from './step.ts';

/** One table's comparison with blue as of the snapshot. */
export interface TableComparison {
  /** schema.table */
  table: string;
  /** Rows blue held in the snapshot (what its COPY sent). */
  blueRows: number;
  /** Rows on green. */
  greenRows: number;
  /** Rows of this table in quarantine. */
  quarantinedRows: number;
  /** Columns whose keyed checksums were compared. */
  checkedColumns: string[];
  /** Why the checksums were not compared, when they were not. */
  checksumSkipped?: string;
  /** Whether counts and checksums agree. */
  ok: boolean;
  /** Why not, when not ok. */
  problem?: string;
}

/** The validation report. */
export interface ValidationReport {
  /** True when every compared table agrees and no invariant found an unexpected loss. */
  passed: boolean;
  /** What blue's side is: the run and the copy's snapshot. */
  asOf: { runId: string; txSnapshot: string | null };
  /** Per-table results. */
  tables: TableComparison[];
  /** Tables not compared, with the reason. */
  skipped: { table: string; reason: string }[];
  /** Human lines for each failure. */
  failures: string[];
  /** Semantic invariants (src/validate/invariants.ts); an unexpected loss fails validation. */
  invariants: InvariantResult[];
  /** Retyped columns compared through their conversion (changed values are listed, not failed). */
  conversions: ConversionResult[];
  /** Rows the migrations dropped or rewrote (listed, not failed). */
  changes: ChangeResult[];
}

/** Columns that migrations rewrite (UPDATE ... SET, ALTER COLUMN), as `schema.table.column`. */
export async function touchedColumns(migrations: readonly Migration[]): Promise<Set<string>> {
  const touched = new Set<string>();
  for (const m of migrations) {
    if (!m.sql.trim()) continue;
    const tree = await parse(m.sql);
    for (const { stmt } of tree.stmts ?? []) {
      const entry = unwrap(stmt);
      if (entry?.kind === 'UpdateStmt') {
        const table = tableKey(tableOf(entry.body.relation));
        for (const t of bodies(entry.body.targetList, 'ResTarget')) if (t.name) touched.add(`${table}.${t.name}`);
      }
      if (entry?.kind === 'AlterTableStmt') {
        const table = tableKey(tableOf(entry.body.relation));
        for (const c of bodies(entry.body.cmds, 'AlterTableCmd')) {
          if (c.name && c.subtype !== 'AT_AddConstraint') touched.add(`${table}.${c.name}`);
        }
      }
    }
  }
  return touched;
}

/** Tables where each migration source records what it applied; they differ by design. */
const TRACKING_TABLES: Record<string, string | undefined> = { pop: 'public.schema_migration', 'postgres-migrations': 'public.migrations' };

async function greenColumnSums(green: Db, from: string, keys: string[], values: string[]): Promise<{ rows: number; sums: string[] }> {
  const sums = values.map((v) => columnHashSum(keys, v));
  const { rows } = await query<{ n: string; s: string[] }>(green, `SELECT count(*) AS n, ARRAY[${sums.length ? sums.join(', ') : ''}]::text[] AS s FROM ${from}`);
  return { rows: Number(rows[0]?.n ?? 0), sums: rows[0]?.s ?? [] };
}

async function quarantineExists(green: Db, qt: string): Promise<boolean> {
  const { rows } = await query<{ ok: boolean }>(green, `SELECT to_regclass($1) IS NOT NULL AS ok`, [`${QUARANTINE_SCHEMA}.${ident(qt)}`]);
  return rows[0]?.ok ?? false;
}

/**
 * Compares one table present on both sides with blue's snapshot figures: rows exactly, and the keyed
 * sum of every column no migration touched (same name and type on both sides). The primary key is
 * part of each hash, so it must itself be untouched for the sums to be comparable.
 */
export async function compareTable(green: Db, b: TableInfo, g: TableInfo, touched: Set<string>, snap: SnapshotTable): Promise<TableComparison> {
  const key = tableKey(b);
  const same = (c: string): boolean => g.types[c] === b.types[c] && !touched.has(`${key}.${c}`);
  let checksumSkipped: string | undefined;
  if (!snap.columns) checksumSkipped = 'sampled at the snapshot (tables above 16 MiB; `--verify full` journals full checksums)';
  else if (!b.primaryKey.every(same)) checksumSkipped = 'its primary key was changed by a migration';
  const columns = checksumSkipped ? [] : b.columns.filter((c) => same(c) && snap.columns![c] !== undefined);
  const qt = quarantineTable(b);
  const greenSide = await greenColumnSums(green, `ONLY ${qualified(g.schema, g.name)} t`, b.primaryKey.map((c) => `to_jsonb(t.${ident(c)})`), columns.map((c) => `to_jsonb(t.${ident(c)})`));
  const quarantined = (await quarantineExists(green, qt))
    ? await greenColumnSums(green, `${qualified(QUARANTINE_SCHEMA, qt)} q WHERE q.source_table = ${literal(key)}`, b.primaryKey.map((c) => `q.row -> ${literal(c)}`), columns.map((c) => `q.row -> ${literal(c)}`))
    : { rows: 0, sums: columns.map(() => '0') };
  const differing = columns.filter((c, i) => BigInt(greenSide.sums[i] ?? '0') + BigInt(quarantined.sums[i] ?? '0') !== BigInt(snap.columns![c]!));
  const countsOk = snap.rows === greenSide.rows + quarantined.rows;
  const result: TableComparison = { table: key, blueRows: snap.rows, greenRows: greenSide.rows, quarantinedRows: quarantined.rows, checkedColumns: columns, ok: countsOk && !differing.length };
  if (checksumSkipped) result.checksumSkipped = checksumSkipped;
  if (!countsOk) result.problem = `blue has ${snap.rows} rows in the snapshot, green ${greenSide.rows} + ${quarantined.rows} quarantined`;
  else if (differing.length) result.problem = `checksum of ${differing.length} unchanged column(s) differs from the snapshot: ${differing.join(', ')}`;
  return result;
}

/** Green's control session reads jsonb timestamps in UTC, as the copy's workers did. */
async function inUtc<T>(green: Db, fn: () => Promise<T>): Promise<T> {
  return withTransaction(green, async () => {
    await query(green, "SET LOCAL TimeZone TO 'UTC'");
    return fn();
  }, { begin: 'READ ONLY', end: 'rollback' });
}

/**
 * Runs the whole comparison of green with blue as of run `runId`'s snapshot; never throws on
 * differences, returns them. The caller makes sure the run finished its migrations.
 */
export async function validateCopy(ctx: Pick<StepContext, 'blue' | 'green' | 'config' | 'source'>, migrations: readonly Migration[], opts: { runId: string; drained?: boolean }): Promise<ValidationReport> {
  const skip = new Set(ctx.config.raw.validate.skipTables);
  const tracking = TRACKING_TABLES[ctx.source.kind];
  const blueTables = await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas);
  const greenTables = new Map((await listTables(ctx.green)).map((t) => [tableKey(t), t]));
  const touched = await touchedColumns(migrations);
  // Values cleanup rewrote in place (a dangling reference set to NULL) are compared like a migration's UPDATE: not at all.
  for (const c of await rewrittenColumns(ctx.green)) touched.add(c);
  const baseline = await snapshotBaseline(ctx.blue, opts.runId, blueTables);
  const report: ValidationReport = { passed: true, asOf: { runId: opts.runId, txSnapshot: baseline.txSnapshot }, tables: [], skipped: [], failures: [], invariants: [], conversions: [], changes: [] };
  for (const b of blueTables) {
    const key = tableKey(b);
    const g = greenTables.get(key);
    const snap = baseline.tables.get(key);
    if (skip.has(key)) report.skipped.push({ table: key, reason: 'listed in validate.skipTables' });
    else if (key === tracking) report.skipped.push({ table: key, reason: 'migration tracking table (gains the new versions)' });
    else if (!snap) report.skipped.push({ table: key, reason: `not in run ${opts.runId}'s snapshot (created on blue after it)` });
    else if (!g) report.skipped.push({ table: key, reason: 'no longer exists on green (dropped or merged by the migrations)' });
    else {
      const cmp = await inUtc(ctx.green, () => compareTable(ctx.green, b, g, touched, snap));
      report.tables.push(cmp);
      if (!cmp.ok) report.failures.push(`${key}: ${cmp.problem}`);
    }
  }
  report.invariants = await checkInvariants(ctx.blue, ctx.green, invariantsOf(ctx.config), { drained: opts.drained ?? false, txSnapshot: baseline.txSnapshot });
  report.failures.push(...invariantFailures(report.invariants));
  Object.assign(report, await checkChanges(ctx.blue, ctx.green, ctx.config, baseline.txSnapshot));
  report.passed = report.failures.length === 0;
  return report;
}

/** The validate step. */
export const validate = {
  name: 'validate',
  purpose: 'compare green with blue as of the snapshot: counts and checksums net of quarantine, invariants, conversions',
  async validate() {},
  async plan(ctx) {
    const tables = (await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas)).map(tableKey);
    return [
      {
        id: 'compare',
        sentence: `compare ${tables.length} table(s) with blue as of the snapshot (${tables.join(', ')}): rows net of quarantine and keyed checksums of unchanged columns; then the invariants and conversions`,
        side: 'both',
        facts: { tables },
        execute: async ({ ctx: c }) => {
          const report = await validateCopy(c, await c.source.all(), { runId: c.journal!.runId });
          if (!report.passed) throw new FindingsError(`validation failed:\n  ${report.failures.join('\n  ')}`, 'inspect the named tables and invariants (unexpected losses are listed with sample keys); nothing was cut over', { validation: report });
          return { validation: report };
        },
      },
    ];
  },
  async summarize(_ctx, details) {
    // The step's own journal unit ('') carries this: guardrails read `validation` from it.
    return { validation: details.get('compare')?.validation };
  },
  async verify() {},
  async inputs(ctx): Promise<StepInputs> {
    // Validation writes nothing, so changed inputs simply make it run again on resume; so does any
    // re-opened earlier step (the comparison is a dependent: a finished one would otherwise be kept).
    const skipTables = [...ctx.config.raw.validate.skipTables].sort();
    const invariants = invariantsOf(ctx.config);
    const summary = `validate.skipTables [${skipTables.join(', ')}], invariants [${invariants.map((i) => i.name).join(', ')}]`;
    return { units: new Map([['compare', { value: { skipTables, invariants }, summary, whenChanged: 'rerun' as const }]]), dependents: ['compare'], whenAdded: 'run', whenRemoved: 'keep' };
  },
} satisfies Step;
