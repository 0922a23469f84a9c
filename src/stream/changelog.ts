// The change log on green (sql/state/changelog.sql): staged transactions and the per-slot mark the
// reader resumes from. A batch of whole transactions and the mark move in one statement, so green
// never holds a change without the mark that covers it, nor a mark ahead of its changes. The mark also
// keeps where a reader last caught up and a rolling rate window; `migrate status` reads them (and how
// much of the log is not mapped yet) to show lag, rate and ETA.

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

/** The rate window: the mark's state this long back (up to twice that) is the window's start ... */
const RATE_WINDOW = "interval '10 seconds'";
/** ... unless the previous batch is older than this: the reader was idle, the rate starts afresh. */
const RATE_IDLE = "interval '30 seconds'";

// One statement, so one transaction: the batch's changes (set-based, from one jsonb parameter) and
// the mark moved to the batch's last commit (its rate window along). ON CONFLICT is the second guard
// against a change staged twice (the reader already skips transactions at or below the mark).
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
  changes = m.changes + EXCLUDED.changes, updated_at = clock_timestamp(),
  (window_lsn, window_changes, window_at) = (
    SELECT CASE WHEN w.idle THEN NULL WHEN w.shift THEN m.applied_lsn ELSE m.window_lsn END,
           CASE WHEN w.idle THEN NULL WHEN w.shift THEN m.changes ELSE m.window_changes END,
           CASE WHEN w.idle THEN NULL WHEN w.shift THEN m.updated_at ELSE m.window_at END
      FROM (SELECT clock_timestamp() - m.updated_at > ${RATE_IDLE} AS idle,
                   m.window_at IS NULL OR m.updated_at - m.window_at >= ${RATE_WINDOW} AS shift) w)
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

/** Records that every transaction blue committed before `lsn` is staged (blue stood there at `at`); never moves back. */
export async function markCaughtUp(green: Db, slot: string, lsn: bigint, at: Date): Promise<void> {
  await query(
    green,
    `UPDATE bluegreen_green.stream_mark SET caught_up_lsn = $2::pg_lsn, caught_up_at = $3::timestamptz
      WHERE slot = $1 AND (caught_up_lsn IS NULL OR caught_up_lsn < $2::pg_lsn)`,
    [slot, formatLsn(lsn), at.toISOString()],
    { side: 'green' },
  );
}

/** A slot's mark with what `migrate status` measures lag and rate from. */
export interface MarkProgress extends StreamMark {
  /** Changes staged so far. */
  changes: number;
  /** When the last batch was staged (green's clock). */
  updatedAt: Date;
  /** The last position a reader caught up to, and when blue stood there; null before the first. */
  caughtUp: { lsn: bigint; at: Date } | null;
  /** The rate window: changes/s and WAL bytes/s over it; null until two batches came close enough together. */
  rate: { changesPerSecond: number; bytesPerSecond: number; seconds: number } | null;
}

/** The stream mark as JSON (to_jsonb): columns an older install lacks are simply absent. */
interface MarkJson {
  applied_lsn: string;
  committed_at: string | null;
  changes: number;
  updated_at: string;
  caught_up_lsn?: string | null;
  caught_up_at?: string | null;
  window_lsn?: string | null;
  window_changes?: number | null;
  window_at?: string | null;
}

/** The slot's mark with its catch-up point and rate; null when nothing is staged (or no change log exists). Read-only. */
export async function readProgress(green: Db, slot: string): Promise<MarkProgress | null> {
  const installed = (await query<{ ok: boolean }>(green, "SELECT to_regclass('bluegreen_green.stream_mark') IS NOT NULL AS ok", [], { side: 'green' })).rows[0]?.ok;
  if (!installed) return null;
  const { rows } = await query<{ m: MarkJson }>(green, 'SELECT to_jsonb(m) AS m FROM bluegreen_green.stream_mark m WHERE m.slot = $1', [slot], { side: 'green' });
  const m = rows[0]?.m;
  if (!m) return null;
  const updatedAt = new Date(m.updated_at);
  const windowAt = m.window_at ? new Date(m.window_at) : null;
  const seconds = windowAt ? (updatedAt.getTime() - windowAt.getTime()) / 1000 : 0;
  const applied = parseLsn(m.applied_lsn);
  return {
    applied,
    committedAt: m.committed_at ? new Date(m.committed_at) : null,
    changes: Number(m.changes),
    updatedAt,
    caughtUp: m.caught_up_lsn && m.caught_up_at ? { lsn: parseLsn(m.caught_up_lsn), at: new Date(m.caught_up_at) } : null,
    rate:
      seconds > 0 && m.window_lsn && m.window_changes !== null && m.window_changes !== undefined
        ? { changesPerSecond: (Number(m.changes) - Number(m.window_changes)) / seconds, bytesPerSecond: Number(applied - parseLsn(m.window_lsn)) / seconds, seconds }
        : null,
  };
}

/** Staged changes green's mapping has not applied yet (bluegreen_green.mapped_mark), the oldest commit time and LSN among them. */
export async function unmappedChanges(green: Db, slot: string): Promise<{ changes: number; oldestCommit: Date | null; firstLsn: bigint | null }> {
  const { rows: has } = await query<{ mapped: boolean; log: boolean }>(
    green,
    `SELECT to_regclass('bluegreen_green.mapped_mark') IS NOT NULL AS mapped, to_regclass('bluegreen_green.change_log') IS NOT NULL AS log`,
    [],
    { side: 'green' },
  );
  if (!has[0]?.log) return { changes: 0, oldestCommit: null, firstLsn: null };
  const from = has[0].mapped
    ? ((await query<{ lsn: string; seq: number }>(green, 'SELECT applied_lsn::text AS lsn, applied_seq AS seq FROM bluegreen_green.mapped_mark WHERE slot = $1', [slot], { side: 'green' })).rows[0] ?? null)
    : null;
  const { rows } = await query<{ n: string; oldest: Date | null; first: string | null }>(
    green,
    `SELECT count(*)::text AS n, min(committed_at) AS oldest, min(lsn)::text AS first FROM bluegreen_green.change_log WHERE (lsn, seq) > ($1::pg_lsn, $2::int)`,
    [from?.lsn ?? '0/0', from?.seq ?? 0],
    { side: 'green' },
  );
  const r = rows[0]!;
  return { changes: Number(r.n), oldestCommit: r.oldest, firstLsn: r.first === null ? null : parseLsn(r.first) };
}
