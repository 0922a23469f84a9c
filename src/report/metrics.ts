// The seeds' metrics table, produced by the tool instead of by hand: rows inserted and updated, temp
// bytes and commits on green (pg_stat_database deltas since the run started), the duration of every
// step, and probe latency before and after the cutover. As text, JSON, and Markdown for CI summaries.

import { query, type Db } from '../db/connect.ts';
import type { StepContext } from '../steps/step.ts';
import type { ProbeStats } from '../steps/watch.ts';
import { table } from '../commands/result.ts';

/** pg_stat_database counters of one database. */
export interface DbStats {
  /** tup_inserted */
  rowsInserted: number;
  /** tup_updated */
  rowsUpdated: number;
  /** temp_bytes */
  tempBytes: number;
  /** xact_commit */
  commits: number;
}

/** The metrics report. */
export interface Metrics {
  /** Deltas on green since the run's baseline (null when no baseline was recorded). */
  green: DbStats | null;
  /** Wall time of every journalled step, in order. */
  steps: { name: string; ms: number }[];
  /** Probe latency before the cutover and during the watch (mean ms per probe). */
  probes: { name: string; beforeMs: number | null; afterMs: number | null }[];
}

const STATS_SQL = `SELECT tup_inserted::float8 AS i, tup_updated::float8 AS u, temp_bytes::float8 AS t, xact_commit::float8 AS c
  FROM pg_stat_database WHERE datname = current_database()`;

/** The journal unit holding the run-start snapshot of green's counters. */
export const BASELINE = { step: 'metrics', unit: 'baseline' } as const;

/** Reads green's (or any database's) counters now; flushes this session's own pending stats first. */
export async function dbStats(db: Db): Promise<DbStats> {
  await query(db, 'SELECT pg_stat_force_next_flush()').catch(() => {});
  const { rows } = await query<{ i: number; u: number; t: number; c: number }>(db, STATS_SQL);
  const r = rows[0] ?? { i: 0, u: 0, t: 0, c: 0 };
  return { rowsInserted: r.i, rowsUpdated: r.u, tempBytes: r.t, commits: r.c };
}

/** Subtracts a baseline. */
export function delta(now: DbStats, base: DbStats): DbStats {
  return { rowsInserted: now.rowsInserted - base.rowsInserted, rowsUpdated: now.rowsUpdated - base.rowsUpdated, tempBytes: now.tempBytes - base.tempBytes, commits: now.commits - base.commits };
}

/** Records the baseline once per run (a resumed run keeps the first one). */
export async function recordBaseline(ctx: Pick<StepContext, 'journal'>, stats: DbStats): Promise<void> {
  if (!ctx.journal || (await ctx.journal.done(BASELINE.step)).has(BASELINE.unit)) return;
  await ctx.journal.finish(BASELINE.step, BASELINE.unit, { ...stats });
}

/** Builds the report from the journal and green's counters. */
export async function collectMetrics(ctx: Pick<StepContext, 'journal' | 'green'>, probes: { probesBefore?: readonly ProbeStats[]; probesAfter?: readonly ProbeStats[] } = {}): Promise<Metrics> {
  const rows = ctx.journal ? await ctx.journal.rows() : [];
  const base = rows.find((r) => r.step === BASELINE.step && r.unit === BASELINE.unit)?.detail as DbStats | undefined;
  const green = base ? delta(await dbStats(ctx.green), base) : null;
  const steps = rows
    // Earlier cutover attempts (filed away as `<step>#<n>`) are history, not this run's timing.
    .filter((r) => r.unit === '' && r.finished_at && !r.step.includes('#'))
    .map((r) => ({ name: r.step, ms: new Date(r.finished_at!).getTime() - new Date(r.started_at).getTime() }));
  const names = new Set([...(probes.probesBefore ?? []), ...(probes.probesAfter ?? [])].map((p) => p.name));
  const probeRows = [...names].map((name) => ({
    name,
    beforeMs: probes.probesBefore?.find((p) => p.name === name)?.meanMs ?? null,
    afterMs: probes.probesAfter?.find((p) => p.name === name)?.meanMs ?? null,
  }));
  return { green, steps, probes: probeRows };
}

const fmt = (n: number | null): string => (n === null ? '-' : String(n));

function rowsOf(m: Metrics): { green: string[][]; steps: string[][]; probes: string[][] } {
  return {
    green: m.green
      ? [['rows inserted', fmt(m.green.rowsInserted)], ['rows updated', fmt(m.green.rowsUpdated)], ['temp bytes', fmt(m.green.tempBytes)], ['transaction commits', fmt(m.green.commits)]]
      : [['green counters', 'no baseline recorded']],
    steps: m.steps.map((s) => [s.name, String(s.ms)]),
    probes: m.probes.map((p) => [p.name, fmt(p.beforeMs), fmt(p.afterMs)]),
  };
}

/** The report as aligned text. */
export function metricsText(m: Metrics): string {
  const r = rowsOf(m);
  const out = ['metrics (green, since the run started):', table([['metric', 'value'], ...r.green]), table([['step', 'ms'], ...r.steps])];
  if (r.probes.length) out.push(table([['probe', 'before ms', 'after ms'], ...r.probes]));
  return out.join('\n');
}

const mdTable = (head: string[], rows: string[][]): string => [`| ${head.join(' | ')} |`, `|${head.map(() => ' --- ').join('|')}|`, ...rows.map((r) => `| ${r.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`)].join('\n');

/** The report as Markdown, for `$GITHUB_STEP_SUMMARY`. */
export function metricsMarkdown(m: Metrics, opts: { title: string; ok?: boolean; cutover?: { targets: { name: string; status: string }[]; rolledBack: boolean }; extra?: string[] }): string {
  const r = rowsOf(m);
  const parts = [`## ${opts.title}${opts.ok === undefined ? '' : opts.ok ? ' ✅' : ' ❌'}`, ...(opts.extra ?? [])];
  if (opts.cutover) parts.push(`### Cutover${opts.cutover.rolledBack ? ' (rolled back)' : ''}`, mdTable(['target', 'status'], opts.cutover.targets.map((t) => [t.name, t.status])));
  parts.push('### Green (pg_stat_database deltas)', mdTable(['metric', 'value'], r.green), '### Steps', mdTable(['step', 'ms'], r.steps));
  if (r.probes.length) parts.push('### Probe latency', mdTable(['probe', 'before ms', 'after ms'], r.probes));
  return `${parts.join('\n\n')}\n`;
}
