-- Outbox capture on blue: one generic trigger function records every access-removing write.
-- Arguments (per trigger): kind, key columns, active column ('' for none), extra columns.
-- DELETE records op 'delete'; an UPDATE that turns the active column from true to false records
-- op 'deactivate'. Only what the database stores is recorded (signatures, ids), never a raw token.
CREATE OR REPLACE FUNCTION bluegreen.capture_revocation() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  old_row jsonb := to_jsonb(OLD);
  key_cols text[] := TG_ARGV[1]::text[];
  extra_cols text[] := TG_ARGV[3]::text[];
  row_key jsonb := '{}';
  attrs jsonb := '{}';
  col text;
BEGIN
  FOREACH col IN ARRAY key_cols LOOP
    row_key := row_key || jsonb_build_object(col, old_row -> col);
  END LOOP;
  FOREACH col IN ARRAY extra_cols LOOP
    attrs := attrs || jsonb_build_object(col, old_row -> col);
  END LOOP;
  INSERT INTO bluegreen.outbox (table_name, kind, op, row_key, attributes)
  VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_ARGV[0],
          CASE TG_OP WHEN 'DELETE' THEN 'delete' ELSE 'deactivate' END, row_key, attrs);
  RETURN NULL;
END
$fn$;
