// Snapshot: copy blue into green from one exported snapshot while blue keeps serving. Pre-data DDL
// from pg_dump, table data streamed server to server with binary COPY (no files), then indexes and
// constraints in parallel, foreign keys NOT VALID then VALIDATE, sequences, ANALYZE. Each table and
// each post-data object is a journal unit, so a crash resumes where it stopped.

import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import copyStreams from 'pg-copy-streams';
import { listSequences, listTables, type TableInfo } from '../db/catalog.ts';
import { connect, query, toPostgresError, type Db } from '../db/connect.ts';
import { dumpSection, splitDump, type DumpStatement } from '../db/dump.ts';
import { assertGreenUsable, markLoaded, readMarker, userTableCount, wipeGreen, writeMarker } from '../db/green.ts';
import { runPool } from '../db/parallel.ts';
import { ident, literal, qualified, tableKey } from '../db/sql.ts';
import { StateError } from '../errors.ts';
import { unitOnce, type Action, type Step, type StepContext } from './step.ts';

const DUPLICATE_OBJECT = new Set(['42P07', '42710', '42P16']);

/** Journal unit id of a table's data. */
export const dataUnit = (t: { schema: string; name: string }): string => `data:${tableKey(t)}`;

async function postDataStatements(ctx: StepContext, snapshotId?: string): Promise<DumpStatement[]> {
  const script = await dumpSection(ctx.config.blueDsn, 'post-data', { ...(snapshotId ? { snapshot: snapshotId } : {}), excludeSchemas: ctx.config.raw.snapshot.excludeSchemas });
  return (await splitDump(script)).filter((s) => s.kind !== 'own-trigger');
}

/** Opens a blue connection inside the exported snapshot (REPEATABLE READ, read only). */
async function importSnapshot(dsn: string, snapshotId: string): Promise<Db> {
  const db = await connect('blue', dsn, 'migrate-snapshot-worker');
  try {
    await db.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    await db.query(`SET TRANSACTION SNAPSHOT ${literal(snapshotId)}`);
  } catch (err) {
    await db.end().catch(() => {});
    throw err;
  }
  return db;
}

/** True when an exported snapshot can still be imported (its exporting transaction is alive). */
async function snapshotAlive(dsn: string, snapshotId: string): Promise<boolean> {
  try {
    const db = await importSnapshot(dsn, snapshotId);
    await db.end();
    return true;
  } catch {
    return false;
  }
}

/** Streams one table blue -> green inside one green transaction (TRUNCATE + COPY FREEZE: rerunnable). */
async function copyTable(blue: Db, green: Db, table: TableInfo, onBytes: (n: number) => void): Promise<{ rows: number; bytes: number }> {
  const cols = table.columns.map(ident).join(', ');
  const target = qualified(table.schema, table.name);
  let bytes = 0;
  await query(green, 'BEGIN', [], { side: 'green' });
  try {
    await query(green, `TRUNCATE ONLY ${target}`, [], { side: 'green' });
    const source = blue.query(copyStreams.to(`COPY ${target} (${cols}) TO STDOUT (FORMAT binary)`));
    const sink = green.query(copyStreams.from(`COPY ${target} (${cols}) FROM STDIN (FORMAT binary, FREEZE)`));
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        bytes += chunk.length;
        onBytes(bytes);
        cb(null, chunk);
      },
    });
    await pipeline(source, counter, sink);
    await query(green, 'COMMIT', [], { side: 'green' });
    return { rows: Number(sink.rowCount ?? 0), bytes };
  } catch (err) {
    await green.query('ROLLBACK').catch(() => {});
    throw toPostgresError(err, { side: 'green' });
  }
}

/** Runs one post-data statement; an object that already exists (a crash after commit) counts as done. */
async function runPostData(green: Db, stmt: DumpStatement): Promise<Record<string, unknown>> {
  if (stmt.kind !== 'foreign-key') {
    try {
      await green.query(stmt.sql);
    } catch (err) {
      if (!DUPLICATE_OBJECT.has((err as { code?: string }).code ?? '')) throw toPostgresError(err, { sql: stmt.sql, side: 'green' });
    }
    return {};
  }
  // Foreign keys go in NOT VALID (instant), then VALIDATE; rows that violate them are cleanup's job.
  const notValid = /\bNOT VALID\s*$/i.test(stmt.sql) ? stmt.sql : `${stmt.sql} NOT VALID`;
  try {
    await green.query(notValid);
  } catch (err) {
    if (!DUPLICATE_OBJECT.has((err as { code?: string }).code ?? '')) throw toPostgresError(err, { sql: notValid, side: 'green' });
  }
  const m = /^ALTER TABLE (?:ONLY )?(.+?)\s+ADD CONSTRAINT (\S+) FOREIGN KEY/is.exec(stmt.sql);
  if (!m) return { validated: false };
  try {
    await green.query(`ALTER TABLE ${m[1]} VALIDATE CONSTRAINT ${m[2]}`);
    return { validated: true };
  } catch (err) {
    if ((err as { code?: string }).code === '23503') return { validated: false, violation: (err as Error).message };
    throw toPostgresError(err, { side: 'green' });
  }
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
  async plan(ctx) {
    const tables = await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas);
    const post = await postDataStatements(ctx);
    const actions: Action[] = [{ id: 'pre-data', sentence: 'create schemas, tables and types on green from pg_dump --section=pre-data', side: 'green' }];
    for (const t of tables) {
      actions.push({ id: dataUnit(t), sentence: `stream ${tableKey(t)} (${(t.bytes / 1048576).toFixed(1)} MiB) blue -> green with binary COPY`, side: 'both', facts: { bytes: t.bytes } });
    }
    for (const s of post.filter((p) => p.kind !== 'setting')) {
      actions.push({ id: s.id, sentence: s.kind === 'foreign-key' ? `add ${s.id.replace(/^constraint:/, '')} NOT VALID, then VALIDATE` : `run ${s.id}`, side: 'green', sql: s.sql });
    }
    actions.push({ id: 'sequences', sentence: 'set every sequence on green to blue\'s value', side: 'both' });
    actions.push({ id: 'analyze', sentence: 'ANALYZE green', side: 'green' });
    return actions;
  },
  async run(ctx, actions) {
    const journal = ctx.journal!;
    const runId = journal.runId;
    const done = await journal.done('snapshot');
    const tables = await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas);
    const pendingTables = tables.filter((t) => !done.has(dataUnit(t)));

    // The snapshot: exported and held open on the control connection for as long as data is copied.
    let snapshotId: string | null = null;
    const exporter = await connect('blue', ctx.config.blueDsn, 'migrate-snapshot-exporter');
    try {
      if (pendingTables.length || !done.has('pre-data')) {
        const previous = (await query<{ snapshot_id: string | null }>(ctx.blue, 'SELECT snapshot_id FROM bluegreen.run WHERE run_id = $1', [runId])).rows[0]?.snapshot_id ?? null;
        const copiedAny = tables.some((t) => done.has(dataUnit(t)));
        if (previous && copiedAny && !(await snapshotAlive(ctx.config.blueDsn, previous))) {
          if (!ctx.options.acceptNewSnapshot) {
            throw new StateError(
              `snapshot ${previous} of run ${runId} is gone (its session ended); ${tables.length - pendingTables.length} of ${tables.length} tables were copied from it`,
              'rerun with --resume --accept-new-snapshot to copy the remaining tables from a new snapshot (tables may then differ by the writes in between; revocations are still replayed), or --restart for a fully consistent copy',
              { previousSnapshot: previous },
            );
          }
          ctx.progress(`snapshot ${previous} is gone; continuing with a new snapshot as --accept-new-snapshot allows`);
        }
        await exporter.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
        snapshotId = (await exporter.query<{ id: string }>('SELECT pg_export_snapshot() AS id')).rows[0]!.id;
        await journal.updateRun({ snapshot_id: snapshotId });
      }

      await unitOnce(ctx, 'snapshot', 'pre-data', async () => {
        await claimGreen(ctx, runId);
        if ((await userTableCount(ctx.green)) > 0) return { note: 'green already had the schema of this run' };
        await writeMarker(ctx.green, runId, snapshotId);
        const script = await dumpSection(ctx.config.blueDsn, 'pre-data', { snapshot: snapshotId!, excludeSchemas: ctx.config.raw.snapshot.excludeSchemas });
        const loader = await connect('green', ctx.config.greenDsn, 'migrate-pre-data');
        try {
          await query(loader, 'BEGIN', [], { side: 'green' });
          await query(loader, script, [], { side: 'green', sql: script });
          await query(loader, 'COMMIT');
        } finally {
          await loader.end().catch(() => {});
        }
        return { bytes: script.length };
      }, done);

      const totalBytes = pendingTables.reduce((a, t) => a + t.bytes, 0);
      let copiedBytes = 0;
      await runPool(
        pendingTables,
        ctx.options.jobs,
        async () => ({ blue: await importSnapshot(ctx.config.blueDsn, snapshotId!), green: await connect('green', ctx.config.greenDsn, 'migrate-copy-worker') }),
        async (w, table) => {
          await unitOnce(ctx, 'snapshot', dataUnit(table), async () => {
            let last = 0;
            const result = await copyTable(w.blue, w.green, table, (n) => {
              copiedBytes += n - last;
              last = n;
            });
            ctx.progress(`copied ${tableKey(table)}: ${result.rows} rows, ${(result.bytes / 1048576).toFixed(1)} MiB (${((100 * copiedBytes) / Math.max(1, totalBytes)).toFixed(0)}% of table bytes)`);
            return result;
          }, done);
        },
        async (w) => {
          await w.blue.end().catch(() => {});
          await w.green.end().catch(() => {});
        },
      );
    } finally {
      await exporter.end().catch(() => {});
    }

    const post = await postDataStatements(ctx);
    const planned = new Set(actions.map((a) => a.id));
    const drift = post.filter((s) => s.kind !== 'setting' && !planned.has(s.id));
    if (drift.length) throw new StateError(`blue's schema changed since the plan: ${drift.map((d) => d.id).join(', ')}`, 'run `migrate plan` again, then `migrate apply --resume`');
    const preamble = post.filter((s) => s.kind === 'setting');
    const byPhase = [post.filter((s) => s.kind === 'index' || s.kind === 'constraint'), post.filter((s) => s.kind === 'foreign-key'), post.filter((s) => s.kind === 'other')];
    let unvalidated = 0;
    for (const phase of byPhase) {
      await runPool(
        phase,
        ctx.options.jobs,
        async () => {
          const db = await connect('green', ctx.config.greenDsn, 'migrate-post-data');
          for (const s of preamble) await db.query(s.sql);
          return db;
        },
        async (db, stmt) => {
          const { detail } = await unitOnce(ctx, 'snapshot', stmt.id, () => runPostData(db, stmt), done);
          if (detail.validated === false) unvalidated++;
        },
        (db) => db.end().catch(() => {}),
      );
    }

    await unitOnce(ctx, 'snapshot', 'sequences', async () => {
      const seqs = await listSequences(ctx.blue);
      for (const s of seqs) {
        if (s.lastValue === null) continue;
        await query(ctx.green, `SELECT setval(${literal(qualified(s.schema, s.name))}, $1::bigint, true)`, [s.lastValue], { side: 'green' });
      }
      return { sequences: seqs.length };
    }, done);
    await unitOnce(ctx, 'snapshot', 'analyze', async () => {
      await query(ctx.green, 'ANALYZE', [], { side: 'green' });
      await markLoaded(ctx.green, runId);
      return {};
    }, done);

    const finished = await journal.done('snapshot');
    const rows = tables.reduce((a, t) => a + Number(finished.get(dataUnit(t))?.rows ?? 0), 0);
    const bytes = tables.reduce((a, t) => a + Number(finished.get(dataUnit(t))?.bytes ?? 0), 0);
    return { tables: tables.length, rows, bytes, snapshotId, foreignKeysLeftNotValid: unvalidated };
  },
  async verify(ctx) {
    const done = await ctx.journal!.done('snapshot');
    const tables = await listTables(ctx.blue, ctx.config.raw.snapshot.excludeSchemas);
    const mismatched: string[] = [];
    for (const t of tables) {
      const copied = Number(done.get(dataUnit(t))?.rows ?? -1);
      const { rows } = await query<{ n: string }>(ctx.green, `SELECT count(*) AS n FROM ONLY ${qualified(t.schema, t.name)}`, [], { side: 'green' });
      if (Number(rows[0]?.n) !== copied) mismatched.push(`${tableKey(t)}: copied ${copied}, green has ${rows[0]?.n}`);
    }
    if (mismatched.length) throw new StateError(`green does not hold what was copied:\n  ${mismatched.join('\n  ')}`, 'rerun with --restart to copy again');
  },
} satisfies Step;
