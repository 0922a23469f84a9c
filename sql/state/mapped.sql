-- Mapping the change log into the new schema (issue G, item 2): how far green has applied its own
-- change log (src/stream/apply-changes.ts), and the staged changes it could not map.
--   mapped_mark: per slot, the (lsn, seq) of the last change_log row applied to green's tables; the
--                next batch starts after it, and it moves in the same transaction as the batch.
--   unmapped:    a staged change (or a row derived from several, e.g. a Hydra flow) that would have
--                violated a constraint of the new schema, kept with its reason instead of being
--                dropped silently. Keyed so that mapping the same batch again records it once.
-- Idempotent: CREATE ... IF NOT EXISTS / OR REPLACE only.
CREATE SCHEMA IF NOT EXISTS bluegreen_green;
CREATE TABLE IF NOT EXISTS bluegreen_green.mapped_mark (
  slot         text PRIMARY KEY,
  applied_lsn  pg_lsn NOT NULL,
  applied_seq  int NOT NULL,
  changes      bigint NOT NULL DEFAULT 0,
  updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS bluegreen_green.unmapped (
  lsn       pg_lsn NOT NULL,
  seq       int NOT NULL,
  relation  text NOT NULL,
  key       text NOT NULL,
  reason    text NOT NULL,
  row       jsonb,
  noted_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (lsn, seq, relation, key)
);
-- PostgreSQL 15 has no IS JSON predicate: true when the text parses as JSON (NULL stays NULL).
CREATE OR REPLACE FUNCTION bluegreen_green.is_json(t text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  IF t IS NULL THEN RETURN NULL; END IF;
  PERFORM t::jsonb;
  RETURN true;
EXCEPTION WHEN others THEN
  RETURN false;
END
$fn$;
