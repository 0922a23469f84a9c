-- pg-bluegreen's own state, on blue. Never copied to green (the snapshot excludes this schema).
-- Every statement is idempotent: the capture and apply steps run this on every start.
CREATE SCHEMA IF NOT EXISTS bluegreen;

-- One row per `migrate apply` run. A run is finished when every step is done.
CREATE TABLE IF NOT EXISTS bluegreen.run (
  run_id        text PRIMARY KEY,
  started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
  finished_at   timestamptz,
  status        text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed', 'abandoned')),
  mode          text NOT NULL DEFAULT 'bluegreen',
  config_digest text NOT NULL,
  snapshot_id   text,
  green_target  text NOT NULL
);
-- mode says what kind of run this is; blues installed before rehearsals were marked have every
-- run as 'bluegreen', which is what they were treated as. Re-running this is harmless.
COMMENT ON COLUMN bluegreen.run.mode IS
  'bluegreen: a real run (cut over, resumed and shown by status); rehearsal: started by apply --dry-run, never cut over';

-- The journal: one row per step (unit = '') and per resumable unit inside a step.
CREATE TABLE IF NOT EXISTS bluegreen.journal (
  run_id      text NOT NULL REFERENCES bluegreen.run (run_id),
  step        text NOT NULL,
  unit        text NOT NULL DEFAULT '',
  started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
  finished_at timestamptz,
  status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
  detail      jsonb NOT NULL DEFAULT '{}',
  PRIMARY KEY (run_id, step, unit)
);

-- Capture: when it started (time and WAL position), so replay knows its lower bound.
CREATE TABLE IF NOT EXISTS bluegreen.capture (
  capture_id  int PRIMARY KEY DEFAULT 1 CHECK (capture_id = 1),
  started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
  start_lsn   pg_lsn NOT NULL DEFAULT pg_current_wal_lsn()
);

-- The outbox: every access-removing write on a captured table, in commit-independent sequence order.
CREATE TABLE IF NOT EXISTS bluegreen.outbox (
  seq         bigserial PRIMARY KEY,
  captured_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  txid        bigint NOT NULL DEFAULT txid_current(),
  table_name  text NOT NULL,
  kind        text NOT NULL,
  op          text NOT NULL CHECK (op IN ('delete', 'deactivate')),
  row_key     jsonb NOT NULL,
  attributes  jsonb NOT NULL DEFAULT '{}'
);
