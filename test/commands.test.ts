// The read-only commands an SRE runs around `apply`: doctor, plan, status, validate, quarantine list, demo.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDbPair, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

describe('doctor', () => {
  it('passes on this machine and reports pg_dump with its version', async () => {
    const r = await runCli(['doctor', '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.checks.find((c: { id: string }) => c.id === 'pg_dump')).toMatchObject({ ok: true, detail: expect.stringMatching(/^pg_dump 1\d\.\d+/) });
  });

  it('says clearly when pg_dump is missing, how to install it, and exits 3', async () => {
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), 'nopgdump-'));
    fs.symlinkSync(process.execPath, path.join(bin, 'node'));
    const r = await runCli(['doctor'], { PATH: bin });
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('pg_dump not found on PATH');
    expect(r.stderr).toContain('apt-get install postgresql-client-15');
  });

  it('says when pg_dump is too old for the minimum supported major', async () => {
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), 'oldpgdump-'));
    fs.writeFileSync(path.join(bin, 'pg_dump'), '#!/bin/sh\necho "pg_dump (PostgreSQL) 11.22"\n', { mode: 0o755 });
    const r = await runCli(['doctor', '--json'], { PATH: `${bin}:${process.env.PATH}` });
    expect(r.code).toBe(3);
    const check = JSON.parse(r.stdout).checks.find((c: { id: string }) => c.id === 'pg_dump');
    expect(check).toMatchObject({ ok: false, hint: expect.stringContaining('too old') });
  });
});

describe('status, validate and quarantine list around a run', () => {
  let pair: DbPair;
  let cfg: ReturnType<typeof writeConfig>;

  beforeAll(async () => {
    pair = await createDbPair('cmds');
    await seedBlue(pair, { rows: 500, seed: 3, dirty: ['orphan-client', 'pipe-quote'] });
    cfg = writeConfig(pair);
  });
  afterAll(async () => pair?.drop());

  it('status says there is no run yet and what to run first', async () => {
    const r = await runCli(['status', '--config', cfg.file], cfg.env);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('no run yet');
  });

  it('status, validate and quarantine list describe a finished run', async () => {
    const applied = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(applied.code, applied.stderr).toBe(0);
    const status = JSON.parse((await runCli(['status', '--config', cfg.file, '--json'], cfg.env)).stdout);
    expect(status.run.status).toBe('done');
    // The whole lifecycle in run order: apply's steps done, cutover's not started yet.
    expect(status.steps.map((s: { step: string; status: string }) => `${s.step}:${s.status}`)).toEqual([
      ...['preflight', 'capture', 'snapshot', 'cleanup', 'migrate', 'validate'].map((n) => `${n}:done`),
      ...['lever', 'cutover', 'drain', 'recheck', 'watch', 'restore-ttl'].map((n) => `${n}:not started`),
    ]);

    const validate = await runCli(['validate', '--config', cfg.file], cfg.env);
    expect(validate.code).toBe(0);
    expect(validate.stdout).toContain('validation: passed');
    expect(validate.stdout).toMatch(/not compared: public\.schema_migration/);

    const list = JSON.parse((await runCli(['quarantine', 'list', '--config', cfg.file, '--json'], cfg.env)).stdout);
    expect(list.rows).toBeGreaterThan(0);
    expect(list.entries.map((e: { rule: string }) => e.rule)).toEqual(expect.arrayContaining(['fk-orphans:hydra_oauth2_access_client_id_fk']));
    // A quoted client list is escaped in place (the client and its tokens stay), listed as a rewrite.
    expect(list.rewrites.map((e: { rule: string }) => e.rule)).toContain('pipe-quote');
  });

  it('validate fails with exit 5 and names the table when green loses a row', async () => {
    await withClient(pair.greenDsn, (c) => c.query(`DELETE FROM hydra_oauth2_refresh WHERE signature = (SELECT signature FROM hydra_oauth2_refresh ORDER BY 1 LIMIT 1)`));
    const r = await runCli(['validate', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code).toBe(5);
    const doc = JSON.parse(r.stdout);
    expect(doc.validation.failures).toEqual(expect.arrayContaining([expect.stringContaining('public.hydra_oauth2_refresh: blue has')]));
  });
});
