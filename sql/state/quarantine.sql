-- Quarantine on the cleaned database (green in blue-green mode). Rows are moved here, never deleted:
-- one table per source table, created from _template, with the original row as jsonb.
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
