// What each snapshot unit does when the runner executes it, on one lane (a green connection tuned
// for loading, and a blue one inside the exported snapshot): pre-data, PK ranges, data streams,
// post-data statements, sequences, ANALYZE, verification and the loaded mark. The step
// (src/steps/snapshot.ts) plans the units, opens the lanes and the snapshot, and hands them in.

import { listSequences, listTables, type TableEstimate, type TableInfo } from '../db/catalog.ts';
import { connect, query, withTransaction, type Db } from '../db/connect.ts';
import { dumpSection } from '../db/dump.ts';
import { assertGreenUsable, markLoaded, userTableCount, wipeGreen, writeMarker } from '../db/green.ts';
import { literal, qualified, tableKey } from '../db/sql.ts';
import { StateError } from '../errors.ts';
import type { Lane, StepContext } from '../steps/step.ts';
import { fingerprint, SAMPLE_ABOVE_BYTES } from './check.ts';
import { copyRange, copyWhole, rangePredicate, splitRanges, type KeyRange } from './copy.ts';
import type { CopyProgress } from './progress.ts';
import { importSnapshot, runPostData, type Exporter } from './session.ts';
import { rangesUnit, type UnitAction, type UnitKind } from './units.ts';
import { verifyCopy } from './verify.ts';

/** Wall time per kind of unit, summed over lanes (the bench reports it). */
export interface Busy {
  /** Data streams and PK range splits. */
  data: number;
  /** Index builds and constraints attached to them. */
  index: number;
  /** Foreign keys, added and validated. */
  foreignKey: number;
  /** ANALYZE per table. */
  analyze: number;
  /** The final verification. */
  verify: number;
}

/** Which busy counter a unit's time goes to (null: none). */
export function busyKind(unit: UnitKind): keyof Busy | null {
  switch (unit) {
    case 'data':
    case 'ranges':
      return 'data';
    case 'post':
      return 'index';
    case 'foreign-key':
      return 'foreignKey';
    case 'analyze':
      return 'analyze';
    case 'verify':
      return 'verify';
    default:
      return null;
  }
}

/** What the step's units share while the runner executes them: taken when the step opens, read by every unit. */
export interface Copy {
  /** The planned units. */
  actions: readonly UnitAction[];
  /** Blue's tables by `schema.table`. */
  tables: ReadonlyMap<string, TableInfo>;
  /** Blue's row and heap estimates, for ranges, sampling and progress. */
  estimates: ReadonlyMap<string, TableEstimate>;
  /** Units a previous attempt started but did not finish: their effect may be half there. */
  redo: ReadonlySet<string>;
  /** The exported snapshot, when this attempt still reads inside one. */
  exporter: Exporter | null;
  /** Per-table copy progress lines. */
  progress: CopyProgress;
  /** Wall time per kind of unit. */
  busy: Busy;
  /** Units still to read blue inside the snapshot (data and ranges): it is released when none is left. */
  blueLeft: number;
}

/** One unit being executed: the step context, the shared state, the unit, its lane and the finished units' details. */
export interface UnitRun {
  /** The step context. */
  ctx: StepContext;
  /** What the units share. */
  copy: Copy;
  /** The unit. */
  unit: UnitAction;
  /** The lane's connections (blue imported into the snapshot on first use). */
  worker: Lane;
  /** Details of the step's finished units, journalled ones included. */
  details: ReadonlyMap<string, Record<string, unknown>>;
}

/** How one kind of unit runs; returns figures for the journal. */
export type Work = (u: UnitRun) => Promise<Record<string, unknown> | void>;

function tableOf(u: UnitRun): TableInfo {
  const t = u.copy.tables.get(u.unit.facts.table ?? '');
  if (!t) throw new StateError(`table ${u.unit.facts.table} of unit ${u.unit.id} is gone from blue`, 'run `migrate plan` again, then `migrate apply --resume`');
  return t;
}

/** The lane's blue connection inside the exported snapshot, imported on first use. */
async function blueInSnapshot(u: UnitRun): Promise<Db> {
  if (!u.copy.exporter) throw new Error(`unit ${u.unit.id} reads blue inside the snapshot, but none was exported`);
  u.worker.blue ??= await importSnapshot(u.ctx.config.blueDsn, u.copy.exporter.snapshotId);
  return u.worker.blue;
}

/** Claims green for this run: refuses foreign data, wipes a green of an earlier run only on --restart. */
async function claimGreen(ctx: StepContext, runId: string): Promise<void> {
  const marker = await assertGreenUsable(ctx.green);
  if (marker && marker.run_id !== runId) {
    if (!ctx.options.restart) {
      throw new StateError(`green already holds the copy of run ${marker.run_id}`, 'pass --restart to wipe green and copy again, or point green.dsn at a new empty database');
    }
    await wipeGreen(ctx.green);
  }
}

async function loadPreData({ ctx, copy }: UnitRun): Promise<Record<string, unknown>> {
  const runId = ctx.journal!.runId;
  const snapshotId = copy.exporter?.snapshotId ?? null;
  await claimGreen(ctx, runId);
  if ((await userTableCount(ctx.green)) > 0) return { note: 'green already had the schema of this run' };
  await writeMarker(ctx.green, runId, snapshotId);
  const script = await dumpSection(ctx.config.blueDsn, 'pre-data', { snapshot: snapshotId!, excludeSchemas: ctx.config.raw.snapshot.excludeSchemas });
  const loader = await connect('green', ctx.config.greenDsn, 'migrate-pre-data');
  try {
    await withTransaction(loader, async () => {
      await query(loader, script, [], { side: 'green', sql: script });
      // Autovacuum would race our ANALYZE and index builds for the same locks (each wait costs a
      // deadlock_timeout before it yields); each table's analyze unit turns it back on.
      for (const t of await listTables(loader)) await query(loader, `ALTER TABLE ONLY ${qualified(t.schema, t.name)} SET (autovacuum_enabled = false)`, [], { side: 'green' });
    }, { side: 'green' });
  } finally {
    await loader.end().catch(() => {});
  }
  return { bytes: script.length };
}

/** Fixes a split table's PK boundaries inside the snapshot and empties the table on green. */
async function splitTable(u: UnitRun): Promise<Record<string, unknown>> {
  const t = tableOf(u);
  const blue = await blueInSnapshot(u);
  const parts = Number(u.unit.facts.parts);
  const ranges = await splitRanges(blue, t, parts, u.copy.estimates.get(tableKey(t))?.rows ?? 0);
  await query(u.worker.green, `TRUNCATE ONLY ${qualified(t.schema, t.name)}`, [], { side: 'green' });
  return { parts, ranges };
}

/** Streams a table, or one PK range of it, from the snapshot into green and fingerprints what was sent. */
async function copyData(u: UnitRun): Promise<Record<string, unknown>> {
  const t = tableOf(u);
  const key = tableKey(t);
  const blue = await blueInSnapshot(u);
  const [i, n] = u.unit.facts.part ?? [1, 1];
  const range = n > 1 ? ((u.details.get(rangesUnit(t))?.ranges as (KeyRange | null)[])[i - 1] ?? null) : null;
  const { progress, estimates } = u.copy;
  progress.start(key);
  const onBytes = (b: number): void => progress.add(key, b);
  const moved = n > 1 ? await copyRange(blue, u.worker.green, t, range, u.copy.redo.has(u.unit.id), onBytes) : await copyWhole(blue, u.worker.green, t, onBytes);
  const full = u.ctx.options.verify === 'full' || t.bytes <= SAMPLE_ABOVE_BYTES;
  const check = await fingerprint(blue, t, n > 1 ? rangePredicate(t, range) : 'TRUE', { full, estimatedRows: (estimates.get(key)?.rows ?? 0) / n });
  progress.finish(key, moved.rows);
  return { ...moved, check };
}

/** Sets every sequence on green to blue's value now (blue keeps serving, so it is read when the unit runs). */
async function setSequences(u: UnitRun): Promise<Record<string, unknown>> {
  const seqs = await listSequences(u.ctx.blue);
  for (const s of seqs) {
    if (s.lastValue !== null) await query(u.worker.green, `SELECT setval(${literal(qualified(s.schema, s.name))}, $1::bigint, true)`, [s.lastValue], { side: 'green' });
  }
  return { sequences: seqs.length };
}

/**
 * How each kind of unit runs (a foreign key's work is built with its statements by the step). Units
 * with `sql` run exactly it. Pre-data, ranges, data, sequences and verify have none: what they run
 * is only known when they run (pg_dump's script inside the snapshot, COPY streams and PK boundaries,
 * blue's sequence values at that moment); mark-loaded's statement takes the run id, which `migrate
 * plan` does not have.
 */
export const UNIT_WORK: Record<Exclude<UnitKind, 'foreign-key'>, Work> = {
  'pre-data': loadPreData,
  ranges: splitTable,
  data: copyData,
  post: (u) => runPostData(u.worker.green, u.unit.sql!),
  other: (u) => runPostData(u.worker.green, u.unit.sql!),
  sequences: setSequences,
  analyze: async (u) => {
    await query(u.worker.green, u.unit.sql!, [], { side: 'green', sql: u.unit.sql! });
  },
  verify: (u) => verifyCopy(u.ctx, u.copy.actions, u.details, [...u.copy.tables.values()]),
  'mark-loaded': (u) => markLoaded(u.ctx.green, u.ctx.journal!.runId),
};
