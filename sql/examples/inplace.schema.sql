-- The table set the in-place migrations under sql/examples/inplace/ change (bench and tests).
CREATE TABLE bench_clients (id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE bench_tokens (
  id         bigserial PRIMARY KEY,
  client_id  text NOT NULL,
  subject    text NOT NULL,
  state      integer NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO bench_clients SELECT 'client-' || g, 'Client ' || g FROM generate_series(1, 100) g;
-- bench_tokens is filled by bench/workload.ts (the row count is a parameter).
