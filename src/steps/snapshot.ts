// Snapshot: copy blue into green from one exported snapshot while blue keeps serving. Pre-data DDL
// from pg_dump, then one task graph on N lanes: table data streamed server to server with binary
// COPY (large tables as PK ranges, largest first), each table's indexes and PK/UNIQUE constraints as
// soon as its data is in, foreign keys once both sides are ready, ANALYZE per table, sequences, a
// verification against counts and checksums taken inside the snapshot, and green marked loaded.
// `plan` gives every unit its `execute`; `open` exports the snapshot and opens the lanes the runner
// executes them on. Every unit is journalled, so a crash resumes where it stopped. Units and their
// order: src/snapshot/units.ts.

import { listTables, tableEstimates } from '../db/catalog.ts';
import { query } from '../db/connect.ts';
import { dumpSection, splitDump, type DumpStatement } from '../db/dump.ts';
import { readMarker } from '../db/green.ts';
import { tableKey } from '../db/sql.ts';
import { StateError } from '../errors.ts';
import { reopenLostUnits } from '../snapshot/lost.ts';
import { CopyProgress } from '../snapshot/progress.ts';
import { addForeignKey, closeCopyLane, exportSnapshot, foreignKeySql, foreignKeyStatements, openCopyLane } from '../snapshot/session.ts';
import { defaultSplitBytes, isDataUnit, planUnits, type UnitAction } from '../snapshot/units.ts';
import { busyKind, UNIT_WORK, type Copy, type Work } from '../snapshot/work.ts';
import { digestOf, type Action, type ActionRun, type Lane, type Step, type StepContext, type StepInputs, type StepScope, type UnitInputs } from './step.ts';

/** Blue's own autovacuum_enabled reloption of every table that sets one (restored on green by its analyze unit). */
const AUTOVACUUM_OPTIONS = `SELECT n.nspname AS schema, c.relname AS name, substr(o, length('autovacuum_enabled=') + 1) AS v
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, unnest(c.reloptions) o
 WHERE c.relkind = 'r' AND o LIKE 'autovacuum_enabled=%'`;

async function postDataStatements(ctx: StepContext): Promise<DumpStatement[]> {
  const script = await dumpSection(ctx.config.blueDsn, 'post-data', { excludeSchemas: ctx.config.raw.snapshot.excludeSchemas });
  return (await splitDump(script)).filter((s) => s.kind !== 'own-trigger' && s.kind !== 'setting');
}

/** Blue's own autovacuum_enabled reloption per `schema.table`, for the tables that set one. */
async function blueAutovacuum(ctx: StepContext): Promise<Map<string, string>> {
  const { rows } = await query<{ schema: string; name: string; v: string }>(ctx.blue, AUTOVACUUM_OPTIONS);
  return new Map(rows.map((r) => [tableKey(r), r.v]));
}

/** Units of this run that were started before but never finished: their effects may be half there. */
async function attemptedUnits(ctx: StepContext, runId: string): Promise<Set<string>> {
  const { rows } = await query<{ unit: string }>(ctx.blue, `SELECT unit FROM bluegreen.journal WHERE run_id = $1 AND step = 'snapshot' AND status <> 'done'`, [runId]);
  return new Set(rows.map((r) => r.unit));
}

/** What the units of the step being executed with a context share: set by `open`, read by every unit and by `summarize`. */
const copies = new WeakMap<StepContext, Copy>();

function copyOf(ctx: StepContext): Copy {
  const copy = copies.get(ctx);
  if (!copy) throw new Error('a snapshot unit ran without the step being opened (run it through executeStep)');
  return copy;
}

/** Runs `work` for the runner's call on the unit's lane. */
function onLane(work: Work): NonNullable<Action['execute']> {
  return async (run: ActionRun) => {
    const copy = copyOf(run.ctx);
    return work({ ctx: run.ctx, copy, unit: run.action as UnitAction, worker: run.lane, details: run.details });
  };
}

/** A planned unit with its `execute`; a foreign key's SQL becomes the two statements it runs. */
function executable(a: UnitAction): UnitAction {
  if (a.facts.unit !== 'foreign-key') return { ...a, execute: onLane(UNIT_WORK[a.facts.unit]) };
  const fk = foreignKeyStatements(a.sql!);
  return { ...a, sql: foreignKeySql(fk), execute: onLane((u) => addForeignKey(u.worker.green, fk)) };
}

/** Data and ranges units read blue inside the exported snapshot. */
const readsSnapshot = (a: UnitAction): boolean => a.facts.unit === 'data' || a.facts.unit === 'ranges';

/** After each unit: busy time, a line for slow non-copy units, and the snapshot let go once nothing reads it. */
async function settle(ctx: StepContext, copy: Copy, a: UnitAction, ms: number, lane: Lane): Promise<void> {
  const kind = busyKind(a.facts.unit);
  if (kind) copy.busy[kind] += ms;
  if (kind !== 'data' && ms >= 1000) ctx.progress(`${a.id} done in ${(ms / 1000).toFixed(1)} s`);
  if (readsSnapshot(a)) copy.blueLeft--;
  if (copy.blueLeft > 0) return;
  await copy.exporter?.release();
  if (lane.blue) {
    await lane.blue.end().catch(() => {});
    lane.blue = null;
  }
}

/** The snapshot step. */
export const snapshot = {
  name: 'snapshot',
  purpose: 'copy blue into green from one consistent snapshot while blue keeps serving',
  async validate(ctx) {
    const tables = await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas);
    if (!tables.length) throw new StateError('blue has no user tables to copy', 'check blue.dsn: it should name the production database');
    const marker = await readMarker(ctx.green);
    if (marker && !ctx.options.resume && !ctx.options.restart) {
      throw new StateError(`green already holds the copy of run ${marker.run_id}`, 'pass --restart to wipe green and copy again, --resume to continue that run, or point green.dsn at a new empty database');
    }
  },
  async plan(ctx): Promise<Action[]> {
    const tables = await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas);
    const done = ctx.journal ? await ctx.journal.done('snapshot') : new Map<string, Record<string, unknown>>();
    const splitBytes = ctx.config.raw.snapshot.splitTableBytes ?? defaultSplitBytes(tables, ctx.options.jobs);
    const units = planUnits({ tables, post: await postDataStatements(ctx), jobs: ctx.options.jobs, splitBytes, done, autovacuum: await blueAutovacuum(ctx) });
    return units.map(executable);
  },
  async open(ctx, planned): Promise<StepScope> {
    const actions = planned as UnitAction[];
    const runId = ctx.journal!.runId;
    const details = await ctx.journal!.done('snapshot');
    const tables = new Map((await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas)).map((t) => [tableKey(t), t]));
    // Before the runner skips what the journal calls done, make sure green still holds it.
    if (ctx.options.resume && details.has('pre-data')) await reopenLostUnits(ctx, actions, details, tables);
    const redo = await attemptedUnits(ctx, runId);
    const estimates = await tableEstimates(ctx.blue);
    const pending = actions.filter((a) => a.facts.unit !== 'pre-data' && !details.has(a.id));
    const blueLeft = pending.filter(readsSnapshot).length;
    const copiedAny = actions.some((a) => a.facts.unit === 'data' && details.has(a.id));
    // Taken last: nothing after it can fail and leave the exporting session open.
    const exporter = blueLeft > 0 || !details.has('pre-data') ? await exportSnapshot(ctx, copiedAny) : null;
    const dataLeft = new Map<string, number>();
    for (const a of pending) if (a.facts.unit === 'data') dataLeft.set(String(a.facts.table), (dataLeft.get(String(a.facts.table)) ?? 0) + 1);
    const copy: Copy = {
      actions,
      tables,
      estimates,
      redo,
      exporter,
      progress: new CopyProgress(ctx.progress, estimates, dataLeft),
      busy: { data: 0, index: 0, foreignKey: 0, analyze: 0, verify: 0 },
      blueLeft,
    };
    copies.set(ctx, copy);
    return {
      lanes: ctx.options.jobs,
      // Every unit runs on a lane of its own connections (a tuned green, blue inside the snapshot), never on the control ones.
      openLane: () => openCopyLane(ctx.config.greenDsn),
      closeLane: closeCopyLane,
      settled: (a, _detail, ms, lane) => settle(ctx, copy, a as UnitAction, ms, lane),
      close: async () => {
        await copy.exporter?.release();
      },
    };
  },
  async summarize(ctx, details) {
    const copy = copyOf(ctx);
    copies.delete(ctx);
    const data = [...details].filter(([id]) => isDataUnit(id)).map(([, d]) => d);
    return {
      tables: copy.tables.size,
      rows: data.reduce((s, d) => s + Number(d.rows ?? 0), 0),
      bytes: data.reduce((s, d) => s + Number(d.bytes ?? 0), 0),
      snapshotId: copy.exporter?.snapshotId ?? null,
      // Foreign keys whose VALIDATE found violations stay NOT VALID for cleanup (see addForeignKey).
      foreignKeysLeftNotValid: [...details.values()].filter((d) => d.validated === false).length,
      verify: ctx.options.verify,
      busyMs: copy.busy,
    };
  },
  async inputs(ctx): Promise<StepInputs> {
    // Copied tables cannot be re-copied from the same snapshot, so a change after the fact refuses;
    // a copy checked in full covers a later resume that asks for the sampled check.
    const excludeSchemas = [...ctx.config.raw.snapshot.excludeSchemas].sort();
    const verify = ctx.options.verify;
    return {
      units: new Map<string, UnitInputs>([
        ['pre-data', { value: { excludeSchemas }, summary: `snapshot.excludeSchemas [${excludeSchemas.join(', ')}]`, whenChanged: 'refuse' as const }],
        ['verify', { value: { verify }, summary: `--verify ${verify}`, whenChanged: 'refuse' as const, coveredBy: (was) => was.digest === digestOf({ verify: 'full' }) }],
      ]),
      whenAdded: 'run',
      whenRemoved: 'keep',
    };
  },
  async verify(ctx) {
    const done = await ctx.journal!.done('snapshot');
    const marker = await readMarker(ctx.green);
    if (!done.has('verify') || !marker?.loaded_at) throw new StateError('the copy was not verified and marked loaded on green', 'rerun with --resume to finish the snapshot step');
  },
} satisfies Step;
