-- Mapping the change log into the new schema (issue G, item 2): how far green has applied its own
-- change log (src/stream/apply-changes.ts), and the staged changes it could not map.
--   mapped_mark: per slot, the (lsn, seq) of the last change_log row applied to green's tables; the
--                next batch starts after it, and it moves in the same transaction as the batch.
--   unmapped:    a staged change (or a row derived from several, e.g. a Hydra flow) that would have
--                violated a constraint of the new schema, kept with its reason instead of being
--                dropped silently. Keyed so that mapping the same batch again records it once. It is
--                the stream's ledger: `rule` names the cleanup rule that refuses the same row (or one
--                of the stream's own, `stream-*`, for a change with no row to hold); `held` is the
--                row the quarantine holds for it, restorable into `target` (`schema.table`), and
--                `q_id` its row in bluegreen_quarantine.<target> while held. A held row leaves the
--                quarantine (`released_at`, `release_reason`; the ledger keeps it) when a newer
--                change of the same key is held, reaches green, or is deleted on blue.
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
ALTER TABLE bluegreen_green.unmapped
  ADD COLUMN IF NOT EXISTS rule text,
  ADD COLUMN IF NOT EXISTS target text,
  ADD COLUMN IF NOT EXISTS held jsonb,
  ADD COLUMN IF NOT EXISTS q_id bigint,
  ADD COLUMN IF NOT EXISTS released_at timestamptz,
  ADD COLUMN IF NOT EXISTS release_reason text;
-- The ledger grows with every refused change; what apply-changes looks up per batch stays small.
CREATE INDEX IF NOT EXISTS unmapped_held_idx ON bluegreen_green.unmapped (relation, key) WHERE held IS NOT NULL AND released_at IS NULL;
CREATE INDEX IF NOT EXISTS unmapped_in_quarantine_idx ON bluegreen_green.unmapped (target) WHERE q_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS unmapped_to_hold_idx ON bluegreen_green.unmapped (target) WHERE held IS NOT NULL AND q_id IS NULL AND released_at IS NULL;
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
