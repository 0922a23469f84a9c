-- The change log on green (issue G): every change blue committed after the snapshot, staged in commit
-- order by the stream reader (src/stream/reader.ts) exactly as logical decoding (pgoutput) printed it.
-- A later step maps these rows into the new schema; nothing here interprets them.
--   lsn: the commit LSN of the change's transaction (all changes of one transaction share it)
--   seq: order of the change inside its transaction, from 1
--   key: the old key of an UPDATE or DELETE (replica identity columns), text values
--   row: the new row of an INSERT or UPDATE, text values as Postgres printed them; a column whose
--        unchanged TOASTed value was not sent is absent (not null) and listed in toast_unchanged
-- Idempotent: CREATE ... IF NOT EXISTS and ADD COLUMN IF NOT EXISTS only (older installs gain the new columns).
CREATE SCHEMA IF NOT EXISTS bluegreen_green;
CREATE TABLE IF NOT EXISTS bluegreen_green.change_log (
  lsn             pg_lsn NOT NULL,
  seq             int NOT NULL,
  xid             bigint,
  committed_at    timestamptz,
  relation        text NOT NULL,
  op              char(1) NOT NULL CHECK (op IN ('I', 'U', 'D', 'T')),
  key             jsonb,
  row             jsonb,
  toast_unchanged text[],
  PRIMARY KEY (lsn, seq)
);
-- One row per slot: the commit LSN of the last transaction staged (the reader resumes after it and
-- skips anything at or below it), its commit time (lag in seconds) and how many changes were staged.
--   caught_up_lsn/_at: the last position a reader caught up to (every transaction blue committed before
--                      it is staged) and when blue stood there: `migrate status` measures lag from it
--   window_*:          the mark as it was at the start of the rate window (10-20 s back while batches
--                      come; reset after an idle gap of 30 s): staged changes/s and WAL bytes/s
CREATE TABLE IF NOT EXISTS bluegreen_green.stream_mark (
  slot         text PRIMARY KEY,
  applied_lsn  pg_lsn NOT NULL,
  committed_at timestamptz,
  changes      bigint NOT NULL DEFAULT 0,
  updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE bluegreen_green.stream_mark
  ADD COLUMN IF NOT EXISTS caught_up_lsn pg_lsn,
  ADD COLUMN IF NOT EXISTS caught_up_at timestamptz,
  ADD COLUMN IF NOT EXISTS window_lsn pg_lsn,
  ADD COLUMN IF NOT EXISTS window_changes bigint,
  ADD COLUMN IF NOT EXISTS window_at timestamptz;
