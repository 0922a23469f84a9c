-- Hazard: validating the foreign key blocks writes to both tables for the whole scan.
ALTER TABLE bench_tokens ADD CONSTRAINT bench_tokens_client_fk FOREIGN KEY (client_id) REFERENCES bench_clients (id);
