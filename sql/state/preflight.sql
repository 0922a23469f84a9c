-- Row-by-row pre-flight helpers (src/preflight/evaluate.ts). Installed inside a transaction that is
-- always rolled back, before it turns READ ONLY, exactly like the quarantine helpers: nothing stays
-- on blue. A probe is a SELECT built from a migration's own expressions whose driving table is
-- restricted to `ctid = ANY($1)`; fetching its rows forces every output expression to be computed.

-- Evaluates `probe` for a set of rows; when the set fails, each row again under its own exception
-- guard (a subtransaction: no xid is used, the transaction is read-only), returning the failures.
CREATE OR REPLACE FUNCTION bluegreen_quarantine.preflight_chunk(probe text, ids tid[])
RETURNS TABLE (row_id tid, state text, message text)
LANGUAGE plpgsql AS $fn$
DECLARE
  r record;
  one tid;
BEGIN
  BEGIN
    FOR r IN EXECUTE probe USING ids LOOP
    END LOOP;
    RETURN;
  EXCEPTION WHEN others THEN
    NULL; -- some row of the set fails: find which
  END;
  FOREACH one IN ARRAY ids LOOP
    BEGIN
      FOR r IN EXECUTE probe USING ARRAY[one] LOOP
      END LOOP;
    EXCEPTION WHEN others THEN
      row_id := one;
      state := SQLSTATE;
      message := SQLERRM;
      RETURN NEXT;
    END;
  END LOOP;
END
$fn$;

-- Walks the driving table (`driver` returns its ctids) in sets of `chunk` rows.
CREATE OR REPLACE FUNCTION bluegreen_quarantine.preflight_rows(driver text, probe text, chunk int)
RETURNS TABLE (row_id tid, state text, message text)
LANGUAGE plpgsql AS $fn$
DECLARE
  one tid;
  batch tid[] := '{}';
BEGIN
  FOR one IN EXECUTE driver LOOP
    batch := batch || one;
    IF cardinality(batch) >= chunk THEN
      RETURN QUERY SELECT * FROM bluegreen_quarantine.preflight_chunk(probe, batch);
      batch := '{}';
    END IF;
  END LOOP;
  IF cardinality(batch) > 0 THEN
    RETURN QUERY SELECT * FROM bluegreen_quarantine.preflight_chunk(probe, batch);
  END IF;
END
$fn$;
