// Semantic invariants: the Hydra profile's hold on an honest upgrade, a migration that silently
// un-remembers consents is caught with the invariant's name, counts and sample keys (exit 5), and
// every relation behaves as documented on real databases (quarantine is listed, never credited).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Db } from '../src/db/connect.ts';
import { DIRTY_CLASSES } from '../support/fixture/seed.ts';
import { checkInvariant } from '../src/validate/invariants.ts';
import { createDbPair, ROOT, runCli, seedBlue, V2_MIGRATIONS, withClient, writeConfig, type DbPair } from './harness.ts';

const CORRUPTION = path.join(ROOT, 'sql/fixtures/faults/20211011000013000000_corrupt_consent_remember.postgres.up.sql');

describe('semantic invariants', () => {
  const pairs: DbPair[] = [];
  afterAll(async () => Promise.all(pairs.map((p) => p.drop())));

  it('hold on an honest upgrade of the dirty fixture, and the report lists each with its counts', async () => {
    const pair = await createDbPair('inv_ok');
    pairs.push(pair);
    await seedBlue(pair, { rows: 1500, seed: 11, dirty: DIRTY_CLASSES });
    const cfg = writeConfig(pair);
    const applied = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(applied.code, applied.stdout + applied.stderr).toBe(0);
    const validated = await runCli(['validate', '--config', cfg.file, '--json'], cfg.env);
    expect(validated.code, validated.stdout).toBe(0);
    const report = JSON.parse(validated.stdout).validation as { invariants: { name: string; passed: boolean; blueCount: number }[] };
    expect(report.invariants.map((i) => [i.name, i.passed])).toEqual([
      ['active-tokens-stay-active', true],
      ['remembered-consents-stay-remembered', true],
      ['revoked-tokens-stay-revoked', true],
    ]);
    for (const i of report.invariants) expect(i.blueCount, i.name).toBeGreaterThan(0);
  });

  it('catch a migration that rewrites the remember column, naming the invariant, counts and sample keys (exit 5)', async () => {
    const pair = await createDbPair('inv_bad');
    pairs.push(pair);
    await seedBlue(pair, { rows: 1500, seed: 12, dirty: [] });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-corrupt-'));
    for (const f of fs.readdirSync(V2_MIGRATIONS)) fs.copyFileSync(path.join(V2_MIGRATIONS, f), path.join(dir, f));
    fs.copyFileSync(CORRUPTION, path.join(dir, path.basename(CORRUPTION)));
    const cfg = writeConfig(pair, { migrations: { kind: 'pop', dir } });
    const applied = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(applied.code, applied.stderr).toBe(5);
    const out = JSON.parse(applied.stdout);
    const failures: string[] = out.validation.failures;
    expect(failures).toHaveLength(1);
    expect(failures[0]).toMatch(/^invariant remembered-consents-stay-remembered: 7 of \d+ blue keys are missing on green/);
    const inv = out.error.validation.invariants.find((i: { name: string }) => i.name === 'remembered-consents-stay-remembered');
    expect(inv).toMatchObject({ passed: false, offending: 7 });
    expect(inv.sample).toHaveLength(5);
    const stillRemembered = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT remember FROM hydra_oauth2_consent_request_handled WHERE challenge = ANY($1)`, [inv.sample])).rows);
    expect(stillRemembered.map((r) => r.remember)).toEqual([true, true, true, true, true]);
  });

  describe('relations', () => {
    let pair: DbPair;
    let blue: Db;
    let green: Db;
    const params = { captureStart: new Date().toISOString(), drained: true };
    beforeAll(async () => {
      pair = await createDbPair('inv_rel');
      pairs.push(pair);
      blue = await connect('blue', pair.blueDsn);
      green = await connect('green', pair.greenDsn);
      await blue.query(`CREATE TABLE k (id text); INSERT INTO k VALUES ('a'), ('b'), ('c')`);
      await green.query(`CREATE TABLE k (id text); INSERT INTO k VALUES ('a'), ('b'), ('z')`);
      await green.query(`CREATE SCHEMA bluegreen_quarantine; CREATE TABLE bluegreen_quarantine.k (rule text, row jsonb); INSERT INTO bluegreen_quarantine.k VALUES ('rule-c', '{"id":"c"}')`);
    });
    afterAll(async () => {
      await blue?.end();
      await green?.end();
    });
    const spec = (relation: 'equal' | 'equal-counts' | 'blue-subset-of-green' | 'green-empty', extra: Record<string, unknown> = {}) => ({
      name: `rel-${relation}`,
      description: '',
      blue: 'SELECT id FROM k',
      green: 'SELECT id FROM k',
      relation,
      quarantine: [],
      ...extra,
    });

    it('blue-subset-of-green lists a quarantined blue key as an expected loss by rule, and an unquarantined one as unexpected', async () => {
      const bare = await checkInvariant(blue, green, spec('blue-subset-of-green'), params);
      expect(bare).toMatchObject({ passed: false, offending: 1, sample: ['c'], expected: [] });
      const net = await checkInvariant(blue, green, spec('blue-subset-of-green', { quarantine: [{ table: 'public.k', key: `row ->> 'id'` }] }), params);
      expect(net).toMatchObject({ passed: true, offending: 0, quarantinedCount: 1, expected: [{ rule: 'rule-c', count: 1, sample: ['c'] }] });
      expect(net.message).toContain('expected: 1 quarantined (rule-c 1)');
    });

    it('equal reports keys missing on either side', async () => {
      const r = await checkInvariant(blue, green, spec('equal', { quarantine: [{ table: 'public.k', key: `row ->> 'id'` }] }), params);
      expect(r).toMatchObject({ passed: false, sample: ['z'] });
    });

    it('equal-counts compares row counts, quarantined keys listed as expected', async () => {
      expect((await checkInvariant(blue, green, spec('equal-counts'), params)).passed).toBe(true);
      const r = await checkInvariant(blue, green, spec('equal-counts', { green: `SELECT id FROM k WHERE id <> 'z'` }), params);
      expect(r).toMatchObject({ passed: false, blueCount: 3, greenCount: 2 });
    });

    it('green-empty hands blue keys to the green query as $1 and fails on any row it returns', async () => {
      const r = await checkInvariant(blue, green, spec('green-empty', { green: 'SELECT id FROM k WHERE id = ANY($1::text[])' }), params);
      expect(r).toMatchObject({ passed: false, offending: 2, sample: ['a', 'b'] });
      const ok = await checkInvariant(blue, green, spec('green-empty', { blue: undefined, green: `SELECT id FROM k WHERE id = 'nope'` }), params);
      expect(ok.passed).toBe(true);
    });
  });
});
