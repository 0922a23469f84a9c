// Applying green's change log to green's own tables (issue G, item 2), engine-independent.
//
// The stream reader (reader.ts) stages blue's committed changes in bluegreen_green.change_log, as
// blue's rows. This driver hands them to an engine's mapping (e.g. src/engines/hydra/stream-map/)
// a batch at a time, in (lsn, seq) order, and keeps its own mark in bluegreen_green.mapped_mark
// (sql/state/mapped.sql):
//   * a batch is the next `batch` changes after the mark, extended to the end of the last blue
//     transaction it touches (a transaction is never split, so a mapping never sees half of one);
//   * the batch is copied into a temporary table `pg_temp.bluegreen_batch` (the change log's columns;
//     the session's, emptied at every commit) that every mapping statement reads; the statements run
//     in the mapping's order, then the mark moves to the batch's last (lsn, seq), all in ONE green
//     transaction: a crash repeats the whole batch or nothing of it;
//   * the mapping's statements are themselves idempotent (last state per key, upserts and deletes),
//     so mapping a batch again (the mark reset by hand) leaves the tables as they are.
// Per batch the driver makes a handful of round trips whatever the mapping's size: the batch's
// relations are read once, the statements that have work in it (MappingStatement.reads) go to green
// as ONE multi-statement query (each result still gives its statement's row count), and the
// quarantine is settled in one more. The batch table is ANALYZEd: without statistics the planner takes
// a few rows for thousands (or the reverse) and picks nested loops or whole-table scans.
// Changes a mapping cannot apply without breaking a constraint go to bluegreen_green.unmapped with a
// reason and a rule (counted in the stats), never dropped silently. Where the mapping gives the row
// to hold (`held`, restorable into `target`), it lands in the quarantine the cleanup step uses
// (bluegreen_quarantine.<target>, run id `stream:<slot>`), in the batch's transaction, so
// `migrate quarantine list` shows it and `migrate quarantine restore` puts it back. One key is held
// once: a newer held change of the same key replaces the older one, and a held row whose key has
// reached green (a later change applied it, or it was restored) or was deleted on blue leaves the
// quarantine; the ledger keeps every version (released_at, release_reason).

import type pg from 'pg';
import type { MappingStatement, StreamMapping } from '../engines/types.ts';
import fs from 'node:fs';
import { listTables } from '../db/catalog.ts';
import { query, withTransaction, type Db } from '../db/connect.ts';
import { QUARANTINE_SCHEMA, QUARANTINE_SETUP_SQL, quarantineTable, RUN_ID_SETTING } from '../db/quarantine.ts';
import { ident, literal, qualified } from '../db/sql.ts';
import { StateError } from '../errors.ts';

/** The idempotent DDL of the mapped mark, the unmapped table and is_json(). */
export const MAPPED_SQL = fs.readFileSync(new URL('../../sql/state/mapped.sql', import.meta.url), 'utf8');

/** What to apply. */
export interface ApplyChangesOptions {
  /** The engine's mapping. */
  mapping: StreamMapping;
  /** About this many changes per green transaction (whole blue transactions: a bigger one is one batch). */
  batch: number;
  /** The mark's key; default: the one slot of bluegreen_green.stream_mark. */
  slot?: string;
  /** Stop after this many batches (default: until the change log is exhausted). */
  maxBatches?: number;
}

/** Figures of one call. */
export interface ApplyChangesStats {
  /** Green transactions committed. */
  batches: number;
  /** Change log rows applied. */
  changes: number;
  /** Rows each mapping statement touched, summed over the batches. */
  statements: Record<string, number>;
  /** Rows added to bluegreen_green.unmapped. */
  unmapped: number;
  /** Rows put into the quarantine (held rows of the ledger). */
  quarantined: number;
  /** Held rows that left the quarantine (superseded, reached green, deleted on blue). */
  released: number;
  /** The mark at the end; null before the first batch ever. */
  applied: { lsn: string; seq: number } | null;
  /** Wall time. */
  ms: number;
}

/** The batch's table: the change log's columns, for this session, emptied at every commit (created once per call, not per batch). */
const BATCH_TABLE_SQL = `CREATE TEMP TABLE IF NOT EXISTS bluegreen_batch ON COMMIT DELETE ROWS AS
SELECT c.lsn, c.seq, c.xid, c.committed_at, c.relation, c.op, c.key, c.row, c.toast_unchanged FROM bluegreen_green.change_log c WITH NO DATA`;

/** The batch: the next `$3` changes after the mark, completed to whole transactions. */
const BATCH_SQL = `
INSERT INTO pg_temp.bluegreen_batch
SELECT c.lsn, c.seq, c.xid, c.committed_at, c.relation, c.op, c.key, c.row, c.toast_unchanged
  FROM bluegreen_green.change_log c
 WHERE (c.lsn, c.seq) > ($1::pg_lsn, $2::int)
   AND c.lsn <= (SELECT max(n.lsn) FROM (SELECT l.lsn FROM bluegreen_green.change_log l
                                          WHERE (l.lsn, l.seq) > ($1::pg_lsn, $2::int)
                                          ORDER BY l.lsn, l.seq LIMIT $3) n)
 ORDER BY c.lsn, c.seq`;

const UNMAPPED_COUNT = `SELECT count(*)::bigint AS n FROM bluegreen_green.unmapped`;

const LEDGER = 'bluegreen_green.unmapped';
/** Ledger rows with a row to hold that is not in the quarantine yet. */
const NEW_HELD = `u.held IS NOT NULL AND u.q_id IS NULL AND u.released_at IS NULL`;

/** An older held row of a key this batch holds anew leaves the quarantine. */
const SUPERSEDE_SQL = `
UPDATE ${LEDGER} o SET released_at = clock_timestamp(), release_reason = 'superseded by a newer change of the same key'
  FROM ${LEDGER} u
 WHERE ${NEW_HELD} AND o.relation = u.relation AND o.key = u.key AND (o.lsn, o.seq) < (u.lsn, u.seq)
   AND o.held IS NOT NULL AND o.released_at IS NULL AND o.q_id IS NOT NULL`;

/** Held rows of `target` whose primary key `pk` is on green now (applied by a later change, or restored) leave the quarantine. */
function reachedGreenSql(target: string, pk: readonly string[]): string {
  const [schema = 'public', name = ''] = target.split('.');
  const table = qualified(schema, name);
  const cols = (a: string): string => pk.map((c) => `${a}.${ident(c)}`).join(', ');
  return `UPDATE ${LEDGER} u SET released_at = clock_timestamp(), release_reason = 'the row reached green'
 WHERE u.target = ${literal(target)} AND u.q_id IS NOT NULL AND u.released_at IS NULL
   AND EXISTS (SELECT 1 FROM ${table} x, jsonb_populate_record(NULL::${table}, u.held) h WHERE (${cols('x')}) = (${cols('h')}))`;
}

/** The quarantine table holding `target`'s rows. */
function holdOf(target: string): string {
  const [schema = 'public', name = ''] = target.split('.');
  return qualified(QUARANTINE_SCHEMA, quarantineTable({ schema, name }));
}

/**
 * Runs `statements` (one SQL statement each) as ONE multi-statement query: one round trip for all of
 * them, inside the caller's transaction. Returns each statement's result, in order.
 */
async function runAll(green: Db, statements: readonly string[]): Promise<pg.QueryResult[]> {
  if (!statements.length) return [];
  const r = (await query(green, statements.join(';\n'), [], { side: 'green' })) as pg.QueryResult | pg.QueryResult[];
  const results = Array.isArray(r) ? r : [r];
  if (results.length !== statements.length) {
    throw new StateError(`a mapping statement is not exactly one SQL statement (${statements.length} sent, ${results.length} results)`, "split it in two in the engine's stream mapping");
  }
  return results;
}

/** Run after the mapping's statements (same round trip): supersedes older held rows, then names the quarantine tables with work to do. */
const SETTLE_START = [
  SUPERSEDE_SQL,
  // Two arms, each on its partial index (the ledger keeps every refused change ever).
  `SELECT u.target, false AS fresh FROM ${LEDGER} u WHERE u.q_id IS NOT NULL
   UNION SELECT u.target, true FROM ${LEDGER} u WHERE ${NEW_HELD} ORDER BY 1, 2`,
];

/**
 * The rest of settling the ledger against the quarantine, for the targets SETTLE_START named: held
 * rows whose key reached green are released, released rows leave their quarantine table, new held
 * rows move in. The statements in that order, with the indexes of the `released` and `quarantined` counts.
 */
function settleStatements(targets: readonly { target: string; fresh: boolean }[], primaryKeys: ReadonlyMap<string, readonly string[]>): { sql: string[]; released: number[]; quarantined: number[] } {
  const out = { sql: [] as string[], released: [] as number[], quarantined: [] as number[] };
  const held = targets.filter((t) => !t.fresh).map((t) => t.target);
  for (const target of held) {
    const pk = primaryKeys.get(target);
    if (pk?.length) out.sql.push(reachedGreenSql(target, pk));
  }
  // Every target with rows in the quarantine: those released before this point and those just released.
  for (const target of held) {
    out.released.push(out.sql.length);
    out.sql.push(`WITH o AS (SELECT u.lsn, u.seq, u.relation, u.key, u.q_id FROM ${LEDGER} u WHERE u.target = ${literal(target)} AND u.q_id IS NOT NULL AND u.released_at IS NOT NULL),
            out AS (DELETE FROM ${holdOf(target)} h USING o WHERE h.q_id = o.q_id)
       UPDATE ${LEDGER} u SET q_id = NULL FROM o WHERE (u.lsn, u.seq, u.relation, u.key) = (o.lsn, o.seq, o.relation, o.key)`);
  }
  for (const target of targets.filter((t) => t.fresh).map((t) => t.target)) {
    const hold = holdOf(target);
    out.sql.push(`CREATE TABLE IF NOT EXISTS ${hold} (LIKE ${qualified(QUARANTINE_SCHEMA, '_template')} INCLUDING ALL)`);
    out.quarantined.push(out.sql.length);
    out.sql.push(`WITH n AS (SELECT u.lsn, u.seq, u.relation, u.key, u.rule, u.reason, u.held, nextval('${QUARANTINE_SCHEMA}.q_seq') AS q_id
                    FROM ${LEDGER} u WHERE u.target = ${literal(target)} AND ${NEW_HELD}),
            ins AS (INSERT INTO ${hold} (q_id, run_id, rule, reason, source_table, row)
                    SELECT n.q_id, current_setting('${RUN_ID_SETTING}'), n.rule, n.reason, ${literal(target)}, n.held FROM n)
       UPDATE ${LEDGER} u SET q_id = n.q_id FROM n WHERE (u.lsn, u.seq, u.relation, u.key) = (n.lsn, n.seq, n.relation, n.key)`);
  }
  return out;
}

/** True when `s` has work in a batch holding changes of `present` (a statement that declares no reads always has). */
const runs = (s: MappingStatement, present: ReadonlySet<string>): boolean => !s.reads || s.reads.some((r) => present.has(r));

/** The slot whose mark to use: the given one, or the only one the reader keeps. */
async function markSlot(green: Db, slot: string | undefined): Promise<string> {
  if (slot) return slot;
  const { rows } = await query<{ slot: string }>(green, `SELECT slot FROM bluegreen_green.stream_mark ORDER BY slot`, [], { side: 'green' });
  if (rows.length !== 1) {
    throw new StateError(`green's change log has ${rows.length} stream marks; which slot's changes to map is not clear`, 'pass the slot (as the stream step names it) explicitly');
  }
  return rows[0]!.slot;
}

/**
 * Applies green's staged changes after its mapped mark to green's tables through `mapping`, one
 * transaction per batch, until the change log is exhausted (or `maxBatches`). Returns its figures.
 */
export async function applyStagedChanges(green: Db, opts: ApplyChangesOptions): Promise<ApplyChangesStats> {
  const started = Date.now();
  await query(green, MAPPED_SQL, [], { side: 'green' });
  await query(green, QUARANTINE_SETUP_SQL, [], { side: 'green' });
  await query(green, BATCH_TABLE_SQL, [], { side: 'green' });
  await query(green, opts.mapping.setup, [], { side: 'green' });
  const slot = await markSlot(green, opts.slot);
  const primaryKeys = new Map((await listTables(green)).map((t) => [`${t.schema}.${t.name}`, t.primaryKey]));
  const stats: ApplyChangesStats = { batches: 0, changes: 0, statements: {}, unmapped: 0, quarantined: 0, released: 0, applied: null, ms: 0 };
  const before = Number((await query<{ n: string }>(green, UNMAPPED_COUNT, [], { side: 'green' })).rows[0]!.n);
  for (;;) {
    if (opts.maxBatches !== undefined && stats.batches >= opts.maxBatches) break;
    const applied = await withTransaction(
      green,
      async () => {
        // FOR UPDATE: two appliers of one slot take turns instead of applying a batch twice.
        const mark = await query<{ lsn: string; seq: number }>(green, `SELECT applied_lsn::text AS lsn, applied_seq AS seq FROM bluegreen_green.mapped_mark WHERE slot = $1 FOR UPDATE`, [slot], { side: 'green' });
        const from = mark.rows[0] ?? { lsn: '0/0', seq: 0 };
        const batch = await query(green, BATCH_SQL, [from.lsn, from.seq, Math.max(1, opts.batch)], { side: 'green' });
        if (!batch.rowCount) return null;
        const [, relations] = await runAll(green, ['ANALYZE pg_temp.bluegreen_batch (relation, op)', 'SELECT DISTINCT relation FROM pg_temp.bluegreen_batch']);
        const present = new Set((relations!.rows as { relation: string }[]).map((r) => r.relation));
        const chosen = opts.mapping.statements.filter((s) => runs(s, present));
        // What this batch holds or rewrites is recorded under the stream's run id (is_local: this transaction only).
        const results = await runAll(green, [`SELECT set_config(${literal(RUN_ID_SETTING)}, ${literal(`stream:${slot}`)}, true)`, ...chosen.map((s) => s.sql), ...SETTLE_START]);
        for (const s of opts.mapping.statements) stats.statements[s.id] ??= 0;
        chosen.forEach((s, i) => (stats.statements[s.id]! += results[i + 1]!.rowCount ?? 0));
        const settle = settleStatements(results[results.length - 1]!.rows as { target: string; fresh: boolean }[], primaryKeys);
        const settled = await runAll(green, [
          ...settle.sql,
          `INSERT INTO bluegreen_green.mapped_mark AS m (slot, applied_lsn, applied_seq, changes)
           SELECT ${literal(slot)}, b.lsn, b.seq, ${batch.rowCount} FROM pg_temp.bluegreen_batch b ORDER BY b.lsn DESC, b.seq DESC LIMIT 1
           ON CONFLICT (slot) DO UPDATE SET applied_lsn = EXCLUDED.applied_lsn, applied_seq = EXCLUDED.applied_seq,
                                            changes = m.changes + EXCLUDED.changes, updated_at = clock_timestamp()
           RETURNING applied_lsn::text AS lsn, applied_seq AS seq`,
        ]);
        for (const i of settle.released) stats.released += settled[i]!.rowCount ?? 0;
        for (const i of settle.quarantined) stats.quarantined += settled[i]!.rowCount ?? 0;
        const last = settled[settled.length - 1]!;
        return { changes: batch.rowCount, mark: last.rows[0] as { lsn: string; seq: number } };
      },
      { side: 'green' },
    );
    if (!applied) break;
    stats.batches++;
    stats.changes += applied.changes;
    stats.applied = applied.mark;
  }
  if (!stats.applied) {
    const mark = await query<{ lsn: string; seq: number }>(green, `SELECT applied_lsn::text AS lsn, applied_seq AS seq FROM bluegreen_green.mapped_mark WHERE slot = $1`, [slot], { side: 'green' });
    stats.applied = mark.rows[0] ?? null;
  }
  stats.unmapped = Number((await query<{ n: string }>(green, UNMAPPED_COUNT, [], { side: 'green' })).rows[0]!.n) - before;
  stats.ms = Date.now() - started;
  return stats;
}
