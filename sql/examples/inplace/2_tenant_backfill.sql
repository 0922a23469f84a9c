-- Hazard: one whole-table UPDATE; every row stays locked until it commits.
UPDATE bench_tokens SET tenant = 'tenant-' || (id % 16);
