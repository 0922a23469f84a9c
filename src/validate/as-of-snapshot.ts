// Blue as of the snapshot. Blue keeps serving while green is built, so comparing green with blue
// *now* reports every write made since the copy as a difference. The copy journals, per data unit
// and inside the snapshot, the rows blue's COPY sent, keyed per-column checksums and the snapshot
// itself (txid_current_snapshot); validation compares green + quarantine with those, and evaluates
// blue-side invariant queries only over rows whose current version that snapshot already saw.
// It also refuses a green whose run has not finished its migrations: such a green never "passes".

import { readMarker } from '../db/green.ts';
import { query, type Db } from '../db/connect.ts';
import { tableKey, type TableRef } from '../db/sql.ts';
import { StateError } from '../errors.ts';
import type { UnitCheck } from '../snapshot/check.ts';
import { dataUnit, rangesUnit, rangeUnit } from '../snapshot/units.ts';
import type { MigrationSource } from '../sources/types.ts';
import { Journal, type JournalRow } from '../state/journal.ts';

/** What blue held in the snapshot for one table, from the journal. */
export interface SnapshotTable {
  /** Rows blue's COPY sent. */
  rows: number;
  /** Keyed per-column sums (src/snapshot/check.ts columnHashSum); null when a unit was sampled or predates them. */
  columns: Record<string, string> | null;
}

/** Blue as of the run's snapshot. */
export interface SnapshotBaseline {
  /** The run whose copy green is. */
  runId: string;
  /** Per `schema.table`, what the snapshot held; tables absent were not copied by this run. */
  tables: Map<string, SnapshotTable>;
  /**
   * The snapshot the blue-side invariant queries see as $3 (txid_snapshot text); the earliest one
   * when a resume copied some tables under a new snapshot. Null when the journal predates it.
   */
  txSnapshot: string | null;
}

/** The steps that must be done before green is comparable with blue. */
const REQUIRED_STEPS = ['snapshot', 'cleanup', 'migrate'] as const;

/**
 * SQL that is true when a blue row (alias `alias`) is unchanged since the snapshot given as bind
 * parameter `param` (txid_snapshot text): its xmin, widened to 64 bits against the current xid epoch,
 * is visible in it. Frozen xids (< 3) always are; with no snapshot (NULL) every row counts.
 */
export function existedAtSnapshot(alias: string, param = '$3'): string {
  const x = `${alias}.xmin::text::bigint`;
  const top = 'txid_snapshot_xmax(txid_current_snapshot())';
  const snap = `${param}::txid_snapshot`;
  return `(${snap} IS NULL OR ${x} < 3 OR txid_visible_in_snapshot(((${top} >> 32) << 32 | ${x}) - CASE WHEN ${x} > (${top} & 4294967295) THEN 4294967296 ELSE 0 END, ${snap}))`;
}

function xmaxOf(snapshot: string): bigint {
  return BigInt(snapshot.split(':')[1] ?? '0');
}

/** The earliest of the given snapshots: rows unchanged since it were seen by every unit's copy. */
function earliest(snapshots: Iterable<string>): string | null {
  return [...snapshots].sort((a, b) => (xmaxOf(a) < xmaxOf(b) ? -1 : xmaxOf(a) > xmaxOf(b) ? 1 : 0))[0] ?? null;
}

/** The copy's snapshot of the run green was built by (see SnapshotBaseline.txSnapshot); null without one. */
export async function snapshotOfGreen(blue: Db, green: Db): Promise<string | null> {
  const marker = await readMarker(green);
  if (!marker) return null;
  const { rows } = await query<{ s: string }>(
    blue,
    `SELECT DISTINCT detail -> 'check' ->> 'txSnapshot' AS s FROM bluegreen.journal
      WHERE run_id = $1 AND step = 'snapshot' AND status = 'done' AND detail -> 'check' ->> 'txSnapshot' IS NOT NULL`,
    [marker.run_id],
  ).catch(() => ({ rows: [] as { s: string }[] }));
  return earliest(rows.map((r) => r.s));
}

/** Reads blue's side of the comparison from the journal of run `runId`. */
export async function snapshotBaseline(blue: Db, runId: string, tables: readonly TableRef[]): Promise<SnapshotBaseline> {
  const done = await new Journal(blue, runId).done('snapshot');
  const out = new Map<string, SnapshotTable>();
  const snapshots = new Set<string>();
  for (const t of tables) {
    const parts = Number(done.get(rangesUnit(t))?.parts ?? 0);
    const ids = done.has(dataUnit(t)) ? [dataUnit(t)] : parts > 1 ? Array.from({ length: parts }, (_, i) => rangeUnit(t, i + 1, parts)) : [];
    const details = ids.map((id) => done.get(id));
    if (!ids.length || details.some((d) => !d)) continue;
    let rows = 0;
    let columns: Record<string, bigint> | null = {};
    for (const d of details) {
      rows += Number(d!.rows ?? 0);
      const check = d!.check as UnitCheck | undefined;
      if (check?.txSnapshot) snapshots.add(check.txSnapshot);
      if (!columns || check?.mode !== 'full' || !check.columns) {
        columns = null;
        continue;
      }
      for (const [c, s] of Object.entries(check.columns)) columns[c] = (columns[c] ?? 0n) + BigInt(s);
    }
    out.set(tableKey(t), { rows, columns: columns && Object.fromEntries(Object.entries(columns).map(([c, s]) => [c, s.toString()])) });
  }
  return { runId, tables: out, txSnapshot: earliest(snapshots) };
}

function describeUnfinished(rows: readonly JournalRow[], step: string): string {
  const own = rows.find((r) => r.step === step && r.unit === '');
  const failedUnit = rows.find((r) => r.step === step && r.unit !== '' && r.status === 'failed');
  const why = failedUnit ? `unit ${failedUnit.unit} failed: ${String(failedUnit.detail.error ?? '').split('\n')[0]}` : own?.status === 'failed' ? `failed: ${String(own.detail.error ?? '').split('\n')[0]}` : own ? 'still running or interrupted' : 'never started';
  return `step ${step} is unfinished (${why})`;
}

/**
 * The run green is the copy of (from green's marker), once its snapshot, cleanup and migrate steps
 * are done and no migration is still pending on green. Anything else is a StateError (exit 3) that
 * names the unfinished step: a half-migrated green must never pass validation.
 */
export async function finishedRunOfGreen(blue: Db, green: Db, source: MigrationSource): Promise<string> {
  const marker = await readMarker(green);
  if (!marker) throw new StateError('green carries no migrate run (no bluegreen_green.copy marker): there is nothing to validate', 'run `migrate apply` to build green first, or point green.dsn at the green a run built');
  const rows = await query<JournalRow>(blue, `SELECT step, unit, started_at, finished_at, status, detail FROM bluegreen.journal WHERE run_id = $1 ORDER BY started_at`, [marker.run_id]).then((r) => r.rows).catch(() => [] as JournalRow[]);
  const unfinished = REQUIRED_STEPS.filter((s) => !rows.some((r) => r.step === s && r.unit === '' && r.status === 'done'));
  if (unfinished.length) {
    throw new StateError(
      `green is not ready to validate: run ${marker.run_id} has not finished its migrations; ${describeUnfinished(rows, unfinished[0]!)}`,
      `finish the run with \`migrate apply --resume\` (after fixing the cause), or \`migrate apply --restart\`; then validate`,
      { runId: marker.run_id, unfinishedSteps: [...unfinished] },
    );
  }
  // A command source always reports itself pending (it decides inside); its step being done is the proof.
  const pending = source.kind === 'command' ? [] : await source.pending(green);
  if (pending.length) {
    throw new StateError(
      `green is not ready to validate: ${pending.length} migration(s) still pending on green (first: ${pending[0]!.name})`,
      'run `migrate apply --resume` to apply them, then validate',
      { runId: marker.run_id, pending: pending.map((m) => m.name) },
    );
  }
  return marker.run_id;
}
