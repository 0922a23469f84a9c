// The constraint pre-flight on the dirty Hydra fixture: derived from the v2 migrations' DDL plus the
// configured rules, shown by `plan` per row class, and refusing an in-place run (exit 5, blue untouched).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DIRTY_CLASSES } from '../support/fixture/seed.ts';
import { createDbPair, fingerprint, runCli, seedBlue, writeConfig, type DbPair } from './harness.ts';

interface Safety {
  preflight: { rule: string; constraint: string; table: string; rows: number; sample: unknown[] }[];
  unchecked: { name: string; constraint: string; note?: string }[];
  cascades: { index: string; dropped: { name: string; table: string; readdedAs: string | null }[] }[];
  lint: { rule: string }[];
}

describe('constraint pre-flight', () => {
  let pair: DbPair;
  let hydra: Safety;
  let ddlOnly: Safety;
  let cfg: ReturnType<typeof writeConfig>;

  beforeAll(async () => {
    pair = await createDbPair('preflight');
    await seedBlue(pair, { rows: 2000, seed: 5, dirty: DIRTY_CLASSES });
    cfg = writeConfig(pair);
    const none = writeConfig(pair, { profile: 'none' });
    const [a, b] = await Promise.all([runCli(['plan', '--config', cfg.file, '--json'], cfg.env), runCli(['plan', '--config', none.file, '--json'], none.env)]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    hydra = JSON.parse(a.stdout).safety;
    ddlOnly = JSON.parse(b.stdout).safety;
  });
  afterAll(async () => pair?.drop());

  it('names every dirty-row class of the fixture with its constraint, table, row count and sample keys', () => {
    const rules = hydra.preflight.map((p) => p.rule);
    for (const rule of ['duplicate-consent', 'unhandled-login', 'invalid-json', 'pipe-quote']) expect(rules).toContain(rule);
    expect(rules.some((r) => /^fk-orphans:.*access_client_id/.test(r))).toBe(true);
    // Dangling challenges are followed to NULL (as Hydra's migration does), not quarantined as orphans.
    expect(rules.some((r) => /^null-dangling:.*challenge/.test(r))).toBe(true);
    for (const p of hydra.preflight) {
      expect(p.rows).toBeGreaterThan(0);
      expect(p.sample.length).toBeGreaterThan(0);
      expect(p.constraint.length).toBeGreaterThan(0);
    }
  });

  it('lists no row class twice when a DDL-derived check covers rows a configured rule already takes', () => {
    expect(hydra.preflight.filter((p) => p.rule.startsWith('ddl-'))).toEqual([]);
  });

  it('derives the JSON casts from the DDL alone when no rule is configured', () => {
    const ddl = ddlOnly.preflight.filter((p) => p.rule.startsWith('ddl-json:'));
    expect([...new Set(ddl.map((p) => p.table))].sort()).toEqual(['public.hydra_client', 'public.hydra_oauth2_consent_request_handled']);
    expect(ddl.find((p) => p.rule === 'ddl-json:hydra_client:13')!.constraint).toContain('REPLACE(redirect_uris');
  });

  it('says which derived constraints it cannot check before the migrations run, and why', () => {
    const flowFk = ddlOnly.unchecked.find((u) => u.name === 'ddl-fk:hydra_oauth2_access_challenge_id_fk');
    expect(flowFk?.note).toContain('hydra_oauth2_flow');
    expect(ddlOnly.unchecked.some((u) => u.name === 'ddl-not-null:hydra_oauth2_access.nid')).toBe(true);
  });

  it('names the foreign keys DROP INDEX ... CASCADE drops silently, and which ones come back', () => {
    const c = hydra.cascades.find((x) => x.index === 'public.hydra_client_idx_id_uq')!;
    const byTable = Object.fromEntries(c.dropped.map((d) => [d.table, d.readdedAs]));
    expect(byTable['public.hydra_oauth2_access']).toBe('hydra_oauth2_access_client_id_fk');
    expect(byTable['public.hydra_oauth2_refresh']).toBe('hydra_oauth2_refresh_client_id_fk');
    expect(byTable['public.hydra_oauth2_consent_request']).toBeNull();
  });

  it('refuses an in-place run on the dirty blue with exit 5, naming the classes, and changes nothing', async () => {
    const before = await fingerprint(pair.blueDsn);
    const r = await runCli(['apply', '--in-place', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stdout + r.stderr).toBe(5);
    const err = JSON.parse(r.stdout).error;
    expect(err.name).toBe('FindingsError');
    expect(err.failing.map((f: { rule: string }) => f.rule)).toContain('duplicate-consent');
    expect(await fingerprint(pair.blueDsn)).toBe(before);
  });
});
