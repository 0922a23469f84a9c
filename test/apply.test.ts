// End to end through the real CLI: a dirty Hydra-v1 blue becomes a clean v2 green.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { comparePlanWithJournal } from '../support/plan-check.ts';
import { DIRTY_CLASSES, type SeedResult } from '../support/fixture/seed.ts';
import { createDbPair, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

describe('migrate apply on the dirty Hydra fixture', () => {
  let pair: DbPair;
  let seeded: SeedResult;
  let cfg: ReturnType<typeof writeConfig>;
  let planJson: { steps: { step: string; actions: { id: string; sql?: string; facts?: { rows?: number } }[] }[] };
  let applyJson: Record<string, unknown> & { steps: { name: string; status: string }[]; quarantine: { rows: number; byReason: Record<string, number> }; validation: { passed: boolean } };

  beforeAll(async () => {
    pair = await createDbPair('apply');
    seeded = await seedBlue(pair, { rows: 3000, seed: 7, dirty: DIRTY_CLASSES });
    cfg = writeConfig(pair);
    const plan = await runCli(['plan', '--config', cfg.file, '--json'], cfg.env);
    expect(plan.code, plan.stderr).toBe(0);
    planJson = JSON.parse(plan.stdout);
    const applied = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(applied.code, applied.stdout + applied.stderr).toBe(0);
    applyJson = JSON.parse(applied.stdout);
  });
  afterAll(async () => pair?.drop());

  it('names every dirty-row class in the plan before anything runs', () => {
    const cleanup = planJson.steps.find((s) => s.step === 'cleanup')!;
    const ids = cleanup.actions.map((a) => a.id).join(' ');
    for (const rule of ['pipe-quote', 'invalid-json', 'duplicate-consent', 'unhandled-login']) expect(ids).toContain(`rule:${rule}`);
    expect(ids).toMatch(/rule:fk-orphans:\S*client/);
    // A token whose challenge points nowhere is kept with challenge_id NULL, as Hydra's migration does.
    expect(ids).toMatch(/rule:null-dangling:\S*challenge/);
  });

  it('ran exactly the plan: every action plan --json printed is a journal unit with the same SQL, and nothing else ran', async () => {
    const rows = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT step, unit, status, detail FROM bluegreen.journal WHERE run_id = $1`, [applyJson.runId])).rows);
    const check = comparePlanWithJournal(planJson.steps, rows);
    expect(check.differences).toEqual([]);
    // Actions of every step, and SQL in the capture, snapshot, cleanup and migrate steps.
    expect(check.actions).toBeGreaterThan(50);
    expect(check.sqlMatched).toBeGreaterThan(20);
    for (const step of ['capture', 'snapshot', 'cleanup', 'migrate']) {
      const withSql = planJson.steps.find((s) => s.step === step)!.actions.filter((a) => a.sql);
      expect(withSql.length, step).toBeGreaterThan(0);
    }
  });

  it('ends with every step done, rows quarantined and validation passed', () => {
    expect(applyJson.ok).toBe(true);
    expect(applyJson.steps.map((s) => `${s.name}:${s.status}`)).toEqual(['preflight:done', 'capture:done', 'snapshot:done', 'cleanup:done', 'migrate:done', 'validate:done']);
    expect(applyJson.quarantine.rows).toBeGreaterThanOrEqual(seeded.dirty.length);
    expect(applyJson.validation.passed).toBe(true);
  });

  it('leaves green on the v2 schema with every v2 version recorded', async () => {
    await withClient(pair.greenDsn, async (c) => {
      const flow = await c.query(`SELECT to_regclass('public.hydra_oauth2_flow') IS NOT NULL AS ok, to_regclass('public.hydra_oauth2_consent_request') IS NULL AS gone`);
      expect(flow.rows[0]).toEqual({ ok: true, gone: true });
      const nid = await c.query(`SELECT is_nullable FROM information_schema.columns WHERE table_name = 'hydra_oauth2_access' AND column_name = 'nid'`);
      expect(nid.rows[0]?.is_nullable).toBe('NO');
      const versions = await c.query(`SELECT count(*)::int AS n FROM schema_migration WHERE version = '20150101000001000000'`);
      expect(versions.rows[0]?.n).toBe(1);
      const invalid = await c.query(`SELECT count(*)::int AS n FROM pg_constraint WHERE NOT convalidated`);
      expect(invalid.rows[0]?.n).toBe(0);
    });
  });

  it('holds every seeded dirty row in quarantine, or its rewritten values in _rewrites, byte for byte as it was on blue', async () => {
    // Rows kept with rewritten values: orphan-challenge tokens (challenge_id NULL), quoted client lists
    // (escaped) and broken session text ('{}'); see test/cleanup-access.test.ts.
    const rewritten = new Set(['orphan-challenge', 'pipe-quote', 'invalid-json']);
    for (const d of seeded.dirty) {
      const [, table] = d.table.split('.');
      const blueRow = await withClient(pair.blueDsn, async (c) => {
        const where = Object.keys(d.key).map((k, i) => `t.${k} = $${i + 1}`).join(' AND ');
        return (await c.query(`SELECT to_jsonb(t) AS row FROM ${d.table} t WHERE ${where}`, Object.values(d.key))).rows[0]?.row;
      });
      expect(blueRow, `${d.dirtyClass} ${JSON.stringify(d.key)} on blue`).toBeTruthy();
      const keyMatch = Object.keys(d.key).map((k, i) => `row->>'${k}' = $${i + 1}`).join(' AND ');
      const from = rewritten.has(d.dirtyClass) ? `bluegreen_quarantine._rewrites WHERE source_table = '${d.table}' AND` : `bluegreen_quarantine.${table} WHERE`;
      const held = await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT row FROM ${from} ${keyMatch}`, Object.values(d.key))).rows);
      if (!rewritten.has(d.dirtyClass)) {
        expect(held, `${d.dirtyClass} ${JSON.stringify(d.key)} in quarantine`).toHaveLength(1);
        expect(held[0].row).toEqual(blueRow);
        continue;
      }
      // Each record is the key and one column's old value: all of it as blue has it.
      expect(held.length, `${d.dirtyClass} ${JSON.stringify(d.key)} in _rewrites`).toBeGreaterThan(0);
      for (const h of held) for (const [k, v] of Object.entries(h.row)) expect(v, `${d.dirtyClass} ${k}`).toEqual(blueRow[k]);
    }
  });

  it('never copies its own state schema or capture triggers to green', async () => {
    await withClient(pair.greenDsn, async (c) => {
      const r = await c.query(`SELECT to_regnamespace('bluegreen') IS NULL AS no_state, (SELECT count(*)::int FROM pg_trigger WHERE tgname LIKE 'bluegreen_%') AS triggers`);
      expect(r.rows[0]).toEqual({ no_state: true, triggers: 0 });
    });
  });

  it('runs exactly the actions the plan printed for copy, cleanup and migrations', async () => {
    const journalUnits = await withClient(pair.blueDsn, async (c) => (await c.query<{ u: string }>(`SELECT step || '/' || unit AS u FROM bluegreen.journal WHERE unit <> '' AND step IN ('snapshot','cleanup','migrate') ORDER BY 1`)).rows.map((r) => r.u));
    const planned = planJson.steps.filter((s) => ['snapshot', 'cleanup', 'migrate'].includes(s.step)).flatMap((s) => s.actions.map((a) => `${s.step}/${a.id}`)).sort();
    expect(journalUnits).toEqual(planned);
  });

  it('records revocations on blue in the outbox from the capture step on', async () => {
    await withClient(pair.blueDsn, async (c) => {
      const sig = (await c.query(`SELECT signature FROM hydra_oauth2_refresh WHERE active LIMIT 1`)).rows[0].signature;
      await c.query(`UPDATE hydra_oauth2_refresh SET active = false WHERE signature = $1`, [sig]);
      await c.query(`DELETE FROM hydra_oauth2_access WHERE signature = (SELECT signature FROM hydra_oauth2_access LIMIT 1)`);
      const out = await c.query(`SELECT kind, op, row_key FROM bluegreen.outbox ORDER BY seq`);
      expect(out.rows).toHaveLength(2);
      expect(out.rows[0]).toEqual({ kind: 'refresh', op: 'deactivate', row_key: { signature: sig } });
      expect(out.rows[1].op).toBe('delete');
    });
  });

  it('refuses a second fresh apply once green holds this run, and rebuilds the same green with --restart', async () => {
    const again = await runCli(['apply', '--config', cfg.file], cfg.env);
    expect(again.code).toBe(3);
    expect(again.stderr).toContain('--restart');
    const restarted = await runCli(['apply', '--config', cfg.file, '--restart', '--json'], cfg.env);
    expect(restarted.code, restarted.stderr).toBe(0);
    const doc = JSON.parse(restarted.stdout);
    expect(doc.runId).not.toBe(applyJson.runId);
    expect(doc.validation.passed).toBe(true);
    expect(doc.quarantine.rows).toBe(applyJson.quarantine.rows);
    const runs = await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT DISTINCT run_id FROM bluegreen_quarantine.hydra_oauth2_consent_request UNION SELECT run_id FROM bluegreen_quarantine._rewrites UNION SELECT run_id FROM bluegreen_green.copy`)).rows);
    expect(runs).toEqual([{ run_id: doc.runId }]);
  });
});
