-- Cheap: a constant default is stored in the catalog (PostgreSQL 11+), no rewrite. New rows get it too.
ALTER TABLE bench_tokens ADD COLUMN tenant text DEFAULT 'default';
