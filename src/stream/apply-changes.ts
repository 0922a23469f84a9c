// Applying green's change log to green's own tables (issue G, item 2), engine-independent.
//
// The stream reader (reader.ts) stages blue's committed changes in bluegreen_green.change_log, as
// blue's rows. This driver hands them to an engine's mapping (e.g. src/engines/hydra/stream-map.ts)
// a batch at a time, in (lsn, seq) order, and keeps its own mark in bluegreen_green.mapped_mark
// (sql/state/mapped.sql):
//   * a batch is the next `batch` changes after the mark, extended to the end of the last blue
//     transaction it touches (a transaction is never split, so a mapping never sees half of one);
//   * the batch is copied into a temporary table `pg_temp.bluegreen_batch` (the change log's columns)
//     that every mapping statement reads; the statements run in the mapping's order, then the mark
//     moves to the batch's last (lsn, seq), all in ONE green transaction: a crash repeats the whole
//     batch or nothing of it;
//   * the mapping's statements are themselves idempotent (last state per key, upserts and deletes),
//     so mapping a batch again (the mark reset by hand) leaves the tables as they are.
// Changes a mapping cannot apply without breaking a constraint go to bluegreen_green.unmapped with a
// reason (counted in the stats), never dropped silently.

import type { StreamMapping } from '../engines/types.ts';
import fs from 'node:fs';
import { query, withTransaction, type Db } from '../db/connect.ts';
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
  /** The mark at the end; null before the first batch ever. */
  applied: { lsn: string; seq: number } | null;
  /** Wall time. */
  ms: number;
}

/** The batch: the next `$3` changes after the mark, completed to whole transactions. */
const BATCH_SQL = `
CREATE TEMP TABLE bluegreen_batch ON COMMIT DROP AS
SELECT c.lsn, c.seq, c.xid, c.committed_at, c.relation, c.op, c.key, c.row, c.toast_unchanged
  FROM bluegreen_green.change_log c
 WHERE (c.lsn, c.seq) > ($1::pg_lsn, $2::int)
   AND c.lsn <= (SELECT max(n.lsn) FROM (SELECT l.lsn FROM bluegreen_green.change_log l
                                          WHERE (l.lsn, l.seq) > ($1::pg_lsn, $2::int)
                                          ORDER BY l.lsn, l.seq LIMIT $3) n)
 ORDER BY c.lsn, c.seq`;

const UNMAPPED_COUNT = `SELECT count(*)::bigint AS n FROM bluegreen_green.unmapped`;

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
  await query(green, opts.mapping.setup, [], { side: 'green' });
  const slot = await markSlot(green, opts.slot);
  const stats: ApplyChangesStats = { batches: 0, changes: 0, statements: {}, unmapped: 0, applied: null, ms: 0 };
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
        for (const s of opts.mapping.statements) {
          const r = await query(green, s.sql, [], { side: 'green' });
          stats.statements[s.id] = (stats.statements[s.id] ?? 0) + (r.rowCount ?? 0);
        }
        const last = await query<{ lsn: string; seq: number }>(
          green,
          `INSERT INTO bluegreen_green.mapped_mark AS m (slot, applied_lsn, applied_seq, changes)
           SELECT $1, b.lsn, b.seq, $2 FROM bluegreen_batch b ORDER BY b.lsn DESC, b.seq DESC LIMIT 1
           ON CONFLICT (slot) DO UPDATE SET applied_lsn = EXCLUDED.applied_lsn, applied_seq = EXCLUDED.applied_seq,
                                            changes = m.changes + EXCLUDED.changes, updated_at = clock_timestamp()
           RETURNING applied_lsn::text AS lsn, applied_seq AS seq`,
          [slot, batch.rowCount],
          { side: 'green' },
        );
        return { changes: batch.rowCount, mark: last.rows[0]! };
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
