-- Hazard: a plain index build blocks every write for its duration.
CREATE INDEX bench_tokens_tenant_idx ON bench_tokens (tenant, created_at);
