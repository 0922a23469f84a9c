-- Hazard: scans the whole table under ACCESS EXCLUSIVE (no reads, no writes).
ALTER TABLE bench_tokens ALTER COLUMN tenant SET NOT NULL;
