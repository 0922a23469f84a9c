// The change log on green (sql/state/changelog.sql): staged transactions and the per-slot mark the
// reader resumes from. A batch of whole transactions and the mark move in one statement, so green
// never holds a change without the mark that covers it, nor a mark ahead of its changes.

import fs from 'node:fs';
import { query, toPostgresError, type Db } from '../db/connect.ts';
import type { Change } from './decode.ts';
import { formatLsn, parseLsn } from './lsn.ts';

/** The idempotent DDL of the change log and the stream mark. */
export const CHANGELOG_SQL = fs.readFileSync(new URL('../../sql/state/changelog.sql', import.meta.url), 'utf8');

/** What a concurrent CREATE ... IF NOT EXISTS of the same object fails with (the catalog's unique index, the row type). */
const CREATED_CONCURRENTLY = new Set(['23505', '42710', '42P06', '42P07']);

/** One committed transaction of blue, ready to stage. */
export interface StagedTransaction {
  /** Its commit LSN (the change log's `lsn`). */
  commitLsn: bigint;
  /** Its transaction id on blue. */
  xid: number;
  /** Its commit time (ISO 8601, microseconds). */
  committedAt: string;
  /** Its changes in order (`seq` = index + 1). */
  changes: Change[];
}

/** Where a slot's staging stands on green. */
export interface StreamMark {
  /** Commit LSN of the last staged transaction; null before the first. */
  applied: bigint | null;
  /** Its commit time. */
  committedAt: Date | null;
}

/** Creates the change log and the stream mark when missing. */
export async function installChangeLog(green: Db): Promise<void> {
  try {
    await green.query(CHANGELOG_SQL);
  } catch (err) {
    // The drain or the consumer may be creating bluegreen_green at this very moment: once more then.
    if (!CREATED_CONCURRENTLY.has((err as { code?: string }).code ?? '')) throw toPostgresError(err, { sql: CHANGELOG_SQL, side: 'green' });
    await query(green, CHANGELOG_SQL, [], { side: 'green' });
  }
}

/** The slot's mark on green. */
export async function readMark(green: Db, slot: string): Promise<StreamMark> {
  const { rows } = await query<{ applied_lsn: string; committed_at: Date | null }>(
    green,
    'SELECT applied_lsn::text, committed_at FROM bluegreen_green.stream_mark WHERE slot = $1',
    [slot],
    { side: 'green' },
  );
  const row = rows[0];
  return row ? { applied: parseLsn(row.applied_lsn), committedAt: row.committed_at } : { applied: null, committedAt: null };
}

// One statement, so one transaction: the batch's changes (set-based, from one jsonb parameter) and
// the mark moved to the batch's last commit. ON CONFLICT is the second guard against a change staged
// twice (the reader already skips transactions at or below the mark).
const STAGE_SQL = `WITH batch AS (
  SELECT * FROM jsonb_to_recordset($2::jsonb) AS c(lsn pg_lsn, seq int, xid bigint, committed_at timestamptz, relation text,
                                                  op text, key jsonb, "row" jsonb, toast_unchanged text[])
), staged AS (
  INSERT INTO bluegreen_green.change_log (lsn, seq, xid, committed_at, relation, op, key, "row", toast_unchanged)
  SELECT lsn, seq, xid, committed_at, relation, op, key, "row", toast_unchanged FROM batch
  ON CONFLICT (lsn, seq) DO NOTHING
  RETURNING 1
)
INSERT INTO bluegreen_green.stream_mark AS m (slot, applied_lsn, committed_at, changes)
VALUES ($1, $3::pg_lsn, $4::timestamptz, (SELECT count(*) FROM staged))
ON CONFLICT (slot) DO UPDATE SET applied_lsn = EXCLUDED.applied_lsn, committed_at = EXCLUDED.committed_at,
  changes = m.changes + EXCLUDED.changes, updated_at = clock_timestamp()
RETURNING (SELECT count(*) FROM staged)::int AS staged`;

/** Stages whole transactions (in commit order) and moves the slot's mark to the last one; returns the changes inserted. */
export async function stageBatch(green: Db, slot: string, txs: readonly StagedTransaction[]): Promise<number> {
  const last = txs[txs.length - 1];
  if (!last) return 0;
  const rows = txs.flatMap((tx) =>
    tx.changes.map((c, i) => ({
      lsn: formatLsn(tx.commitLsn),
      seq: i + 1,
      xid: tx.xid,
      committed_at: tx.committedAt,
      relation: c.relation,
      op: c.op,
      key: c.key,
      row: c.row,
      toast_unchanged: c.toastUnchanged,
    })),
  );
  const { rows: out } = await query<{ staged: number }>(green, STAGE_SQL, [slot, JSON.stringify(rows), formatLsn(last.commitLsn), last.committedAt], { side: 'green' });
  return out[0]?.staged ?? 0;
}
