-- Quarantine on the cleaned database (green in blue-green mode). Rows are moved here, never deleted:
-- one table per source table, created from _template, with the original row as jsonb; values
-- rewritten in place are in _rewrites.
CREATE SCHEMA IF NOT EXISTS bluegreen_quarantine;
CREATE SEQUENCE IF NOT EXISTS bluegreen_quarantine.q_seq;
CREATE TABLE IF NOT EXISTS bluegreen_quarantine._template (
  q_id           bigint PRIMARY KEY DEFAULT nextval('bluegreen_quarantine.q_seq'),
  run_id         text NOT NULL,
  rule           text NOT NULL,
  reason         text NOT NULL,
  source_table   text NOT NULL,
  quarantined_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  row            jsonb NOT NULL
);
-- Values cleanup rewrote in place instead of moving the row (a dangling reference set to NULL, as the
-- engine's own migration does; a value escaped or replaced so the migration converts it): the row
-- stays; `row` holds its primary key and the column's old value (a partial row, read like any
-- quarantined row), so restore can put the value back. `column_type` is the column's type when it
-- was rewritten: a migration that retyped the column since makes the old value meaningless there.
CREATE TABLE IF NOT EXISTS bluegreen_quarantine._rewrites (
  q_id         bigint PRIMARY KEY DEFAULT nextval('bluegreen_quarantine.q_seq'),
  run_id       text NOT NULL,
  rule         text NOT NULL,
  reason       text NOT NULL,
  source_table text NOT NULL,
  column_name  text NOT NULL,
  key_columns  text[] NOT NULL,
  row          jsonb NOT NULL,
  rewritten_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE bluegreen_quarantine._rewrites ADD COLUMN IF NOT EXISTS column_type text;
-- True when the text parses as JSON (Postgres 15 has no IS JSON predicate).
CREATE OR REPLACE FUNCTION bluegreen_quarantine.is_json(value text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  PERFORM value::jsonb;
  RETURN true;
EXCEPTION WHEN others THEN
  RETURN false;
END
$fn$;
