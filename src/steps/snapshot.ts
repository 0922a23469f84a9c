// Snapshot: copy blue into green from one exported snapshot while blue keeps serving. Pre-data DDL
// from pg_dump, then one task graph on N workers: table data streamed server to server with binary
// COPY (large tables as PK ranges, largest first), each table's indexes and PK/UNIQUE constraints as
// soon as its data is in, foreign keys once both sides are ready, ANALYZE per table, sequences, and a
// verification against counts and checksums taken inside the snapshot. Every unit is journalled, so a
// crash resumes where it stopped. Units and their order: src/snapshot/units.ts.

import { listSequences, listTables, tableEstimates, type TableInfo } from '../db/catalog.ts';
import { connect, query, withTransaction, type Db } from '../db/connect.ts';
import { dumpSection, splitDump, type DumpStatement } from '../db/dump.ts';
import { assertGreenUsable, markLoaded, readMarker, userTableCount, wipeGreen, writeMarker } from '../db/green.ts';
import { runGraph } from '../db/parallel.ts';
import { literal, qualified, tableKey } from '../db/sql.ts';
import { StateError } from '../errors.ts';
import { copyRange, copyWhole, rangePredicate, splitRanges, type KeyRange } from '../snapshot/copy.ts';
import { fingerprint, SAMPLE_ABOVE_BYTES } from '../snapshot/check.ts';
import { exportSnapshot, importSnapshot, openGreenWorker, runPostData } from '../snapshot/session.ts';
import { verifyCopy } from '../snapshot/verify.ts';
import { reopenLostUnits } from '../snapshot/lost.ts';
import { CopyProgress } from '../snapshot/progress.ts';
import { defaultSplitBytes, planUnits, rangesUnit, type UnitAction } from '../snapshot/units.ts';
import { digestOf, unitOnce, type Action, type Step, type StepContext, type StepInputs, type UnitInputs } from './step.ts';

async function postDataStatements(ctx: StepContext): Promise<DumpStatement[]> {
  const script = await dumpSection(ctx.config.blueDsn, 'post-data', { excludeSchemas: ctx.config.raw.snapshot.excludeSchemas });
  return (await splitDump(script)).filter((s) => s.kind !== 'own-trigger' && s.kind !== 'setting');
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

/** Units of this run that were started before but never finished: their effects may be half there. */
async function attemptedUnits(ctx: StepContext): Promise<Set<string>> {
  const { rows } = await query<{ unit: string }>(ctx.blue, `SELECT unit FROM bluegreen.journal WHERE run_id = $1 AND step = 'snapshot' AND status <> 'done'`, [ctx.journal!.runId]);
  return new Set(rows.map((r) => r.unit));
}

async function loadPreData(ctx: StepContext, runId: string, snapshotId: string | null): Promise<Record<string, unknown>> {
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

/** Blue's own autovacuum_enabled reloption of a table (null when unset), restored on green after the load. */
const AUTOVACUUM_OPTION = `SELECT substr(o, length('autovacuum_enabled=') + 1) AS v FROM pg_class c, unnest(c.reloptions) o WHERE c.oid = $1::regclass AND o LIKE 'autovacuum_enabled=%'`;

interface Worker {
  green: Db;
  blue: Db | null;
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
    return planUnits({ tables, post: await postDataStatements(ctx), jobs: ctx.options.jobs, splitBytes, done });
  },
  async run(ctx, planned) {
    const actions = planned as UnitAction[];
    const journal = ctx.journal!;
    const runId = journal.runId;
    const details = await journal.done('snapshot');
    const tables = new Map((await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas)).map((t) => [tableKey(t), t]));
    // Before skipping what the journal calls done, make sure green still holds it.
    if (ctx.options.resume && details.has('pre-data')) await reopenLostUnits(ctx, actions, details, tables);
    const redo = await attemptedUnits(ctx);
    const estimates = await tableEstimates(ctx.blue);
    const tableOf = (a: UnitAction): TableInfo => {
      const t = tables.get(a.facts.table ?? '');
      if (!t) throw new StateError(`table ${a.facts.table} of unit ${a.id} is gone from blue`, 'run `migrate plan` again, then `migrate apply --resume`');
      return t;
    };
    const pending = actions.filter((a) => a.facts.unit !== 'pre-data' && !details.has(a.id));
    let blueLeft = pending.filter((a) => a.facts.unit === 'data' || a.facts.unit === 'ranges').length;
    const needSnapshot = blueLeft > 0 || !details.has('pre-data');
    const copiedAny = actions.some((a) => a.facts.unit === 'data' && details.has(a.id));
    const exporter = needSnapshot ? await exportSnapshot(ctx, copiedAny) : null;
    const snapshotId = exporter?.snapshotId ?? null;
    const dataLeft = new Map<string, number>();
    for (const a of pending) if (a.facts.unit === 'data') dataLeft.set(String(a.facts.table), (dataLeft.get(String(a.facts.table)) ?? 0) + 1);
    const progress = new CopyProgress(ctx.progress, estimates, dataLeft);
    const busy = { data: 0, index: 0, foreignKey: 0, analyze: 0, verify: 0 };
    let unvalidated = 0;
    try {
      await unitOnce(ctx, 'snapshot', 'pre-data', () => loadPreData(ctx, runId, snapshotId), details);
      const execute = async (w: Worker, a: UnitAction): Promise<Record<string, unknown>> => {
        switch (a.facts.unit) {
          case 'ranges': {
            const t = tableOf(a);
            w.blue ??= await importSnapshot(ctx.config.blueDsn, snapshotId!);
            const parts = Number(a.facts.parts);
            const ranges = await splitRanges(w.blue, t, parts, estimates.get(tableKey(t))?.rows ?? 0);
            await query(w.green, `TRUNCATE ONLY ${qualified(t.schema, t.name)}`, [], { side: 'green' });
            return { parts, ranges };
          }
          case 'data': {
            const t = tableOf(a);
            const key = tableKey(t);
            w.blue ??= await importSnapshot(ctx.config.blueDsn, snapshotId!);
            const [i, n] = a.facts.part ?? [1, 1];
            const range = n > 1 ? ((details.get(rangesUnit(t))?.ranges as (KeyRange | null)[])[i - 1] ?? null) : null;
            progress.start(key);
            const onBytes = (b: number): void => progress.add(key, b);
            const moved = n > 1 ? await copyRange(w.blue, w.green, t, range, redo.has(a.id), onBytes) : await copyWhole(w.blue, w.green, t, onBytes);
            const full = ctx.options.verify === 'full' || t.bytes <= SAMPLE_ABOVE_BYTES;
            const check = await fingerprint(w.blue, t, n > 1 ? rangePredicate(t, range) : 'TRUE', { full, estimatedRows: (estimates.get(key)?.rows ?? 0) / n });
            progress.finish(key, moved.rows);
            return { ...moved, check };
          }
          case 'post':
            return runPostData(w.green, a.sql!, false);
          case 'foreign-key': {
            const out = await runPostData(w.green, a.sql!, true);
            if (out.validated === false) unvalidated++;
            return out;
          }
          case 'other':
            return runPostData(w.green, a.sql!, false);
          case 'sequences': {
            const seqs = await listSequences(ctx.blue);
            for (const s of seqs) {
              if (s.lastValue !== null) await query(w.green, `SELECT setval(${literal(qualified(s.schema, s.name))}, $1::bigint, true)`, [s.lastValue], { side: 'green' });
            }
            return { sequences: seqs.length };
          }
          case 'analyze': {
            const t = tableOf(a);
            const target = qualified(t.schema, t.name);
            const own = (await query<{ v: string | null }>(ctx.blue, AUTOVACUUM_OPTION, [target])).rows[0]?.v ?? null;
            await query(w.green, own === null ? `ALTER TABLE ONLY ${target} RESET (autovacuum_enabled)` : `ALTER TABLE ONLY ${target} SET (autovacuum_enabled = ${literal(own)})`, [], { side: 'green' });
            await query(w.green, `ANALYZE ${target}`, [], { side: 'green' });
            return {};
          }
          case 'verify':
            return verifyCopy(ctx, actions, details, [...tables.values()]);
          default:
            throw new Error(`unknown snapshot unit ${a.id}`);
        }
      };
      const category = (a: UnitAction): keyof typeof busy | null =>
        a.facts.unit === 'data' || a.facts.unit === 'ranges' ? 'data' : a.facts.unit === 'post' ? 'index' : a.facts.unit === 'foreign-key' ? 'foreignKey' : a.facts.unit === 'analyze' ? 'analyze' : a.facts.unit === 'verify' ? 'verify' : null;
      await runGraph(
        pending.map((a) => ({ ...a, after: a.facts.after, priority: a.facts.priority })),
        ctx.options.jobs,
        async (): Promise<Worker> => ({ green: await openGreenWorker(ctx.config.greenDsn), blue: null }),
        async (w, a) => {
          const started = Date.now();
          const { detail } = await unitOnce(ctx, 'snapshot', a.id, () => execute(w, a), details);
          details.set(a.id, detail);
          const c = category(a);
          if (c) busy[c] += Date.now() - started;
          if (c !== 'data' && Date.now() - started >= 1000) ctx.progress(`${a.id} done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
          if ((a.facts.unit === 'data' || a.facts.unit === 'ranges') && --blueLeft === 0) await exporter?.release();
          if (blueLeft === 0 && w.blue) {
            await w.blue.end().catch(() => {});
            w.blue = null;
          }
        },
        async (w) => {
          await w.blue?.end().catch(() => {});
          await w.green.end().catch(() => {});
        },
      );
      await markLoaded(ctx.green, runId);
    } finally {
      await exporter?.release();
    }
    const rows = actions.filter((a) => a.facts.unit === 'data').reduce((s, a) => s + Number(details.get(a.id)?.rows ?? 0), 0);
    const bytes = actions.filter((a) => a.facts.unit === 'data').reduce((s, a) => s + Number(details.get(a.id)?.bytes ?? 0), 0);
    return { tables: tables.size, rows, bytes, snapshotId, foreignKeysLeftNotValid: unvalidated, verify: ctx.options.verify, busyMs: busy };
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
