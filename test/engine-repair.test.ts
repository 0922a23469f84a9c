// The engine's post-migration repair: Hydra 1.11 writes '{}' for "no error" and the 2.x flow merge
// (like our fixture's, which follows its shape) tests `error IS NOT NULL` first, so every accepted
// login lands in state 128 and no remembered consent survives. Without the engine that loss is what
// validation reports; with it, the states are recomputed as the old rows imply, the old values are
// recorded and restorable, and a login whose error is a real one stays rejected.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HYDRA_INVARIANTS } from '../src/validate/hydra-invariants.ts';
import { createDbPair, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

const REPAIR = 'repair:flow-state-no-error';

interface Invariant {
  name: string;
  passed: boolean;
  blueCount: number;
  offending: number;
}
interface ApplyJson {
  ok: boolean;
  validation: { passed: boolean; invariants: Invariant[]; changes: { name: string; count: number }[] };
}

/** The flow state the v1 rows of each login imply, read on blue ('{}' and '' are no error, as Hydra 1.11 reads them). */
async function impliedStates(dsn: string): Promise<Map<string, number>> {
  return withClient(dsn, async (c) => {
    const { rows } = await c.query<{ k: string; s: number }>(
      `SELECT ar.challenge AS k,
              CASE WHEN lh.challenge IS NULL THEN CASE WHEN cr.challenge IS NULL THEN 1 END
                   WHEN lh.error NOT IN ('{}', '') THEN 128
                   WHEN ch.challenge IS NOT NULL THEN CASE WHEN ch.error NOT IN ('{}', '') THEN 129 WHEN ch.was_used THEN 6 ELSE 5 END
                   WHEN cr.challenge IS NOT NULL THEN 4
                   WHEN lh.was_used THEN 3 ELSE 2 END AS s
         FROM hydra_oauth2_authentication_request ar
         LEFT JOIN hydra_oauth2_authentication_request_handled lh ON lh.challenge = ar.challenge
         LEFT JOIN hydra_oauth2_consent_request cr ON cr.login_challenge = ar.challenge
         LEFT JOIN hydra_oauth2_consent_request_handled ch ON ch.challenge = cr.challenge`,
    );
    return new Map(rows.map((r) => [r.k, r.s]));
  });
}

async function greenStates(dsn: string): Promise<Map<string, number>> {
  return withClient(dsn, async (c) => new Map((await c.query<{ k: string; s: number }>('SELECT login_challenge AS k, state AS s FROM hydra_oauth2_flow')).rows.map((r) => [r.k, r.s])));
}

describe('without the engine, the flow merge forgets remembered consents', () => {
  let pair: DbPair;
  afterAll(async () => pair?.drop());

  it('leaves every accepted login at state 128 and validation reports every remembered consent lost (exit 5)', async () => {
    pair = await createDbPair('repair_none');
    await seedBlue(pair, { rows: 600, seed: 41, dirty: [] });
    const remembered = HYDRA_INVARIANTS.find((i) => i.name === 'remembered-consents-stay-remembered')!;
    const cfg = writeConfig(pair, { profile: 'none', invariants: [remembered] });
    const run = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(run.code, run.stderr).toBe(5);
    const inv = (JSON.parse(run.stdout) as ApplyJson).validation.invariants.find((i) => i.name === remembered.name)!;
    expect(inv.blueCount).toBeGreaterThan(0);
    expect(inv).toMatchObject({ passed: false, offending: inv.blueCount });
    const shape = await withClient(pair.greenDsn, async (c) => (await c.query<{ state: number; accepted: boolean; n: string }>(
      `SELECT state, login_error = '{}' AS accepted, count(*) AS n FROM hydra_oauth2_flow WHERE login_error IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2`,
    )).rows);
    // Every handled login, accepted or not, is "rejected"; and nothing was recorded as repaired.
    expect(shape.map((r) => r.state)).toEqual(shape.map(() => 128));
    expect(shape.find((r) => r.accepted)?.n).toBeDefined();
    const recorded = await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT count(*)::int AS n FROM bluegreen_quarantine._rewrites WHERE rule = $1`, [REPAIR]).catch(() => ({ rows: [{ n: 0 }] }))).rows[0].n);
    expect(recorded).toBe(0);
  });
});

describe('with the hydra engine, the repair puts back what the old rows meant', () => {
  let pair: DbPair;
  let cfg: ReturnType<typeof writeConfig>;
  let planned: { steps: { step: string; actions: { id: string; sentence: string; sql?: string }[] }[] };
  let applied: { code: number | null; json: ApplyJson; stderr: string };
  let implied: Map<string, number>;
  let realErrors: string[];

  beforeAll(async () => {
    pair = await createDbPair('repair_hydra');
    await seedBlue(pair, { rows: 600, seed: 41, dirty: [] });
    realErrors = await withClient(pair.blueDsn, async (c) => (await c.query<{ challenge: string }>(`SELECT challenge FROM hydra_oauth2_authentication_request_handled WHERE error NOT IN ('{}', '') ORDER BY 1`)).rows.map((r) => r.challenge));
    implied = await impliedStates(pair.blueDsn);
    cfg = writeConfig(pair);
    const plan = await runCli(['plan', '--config', cfg.file, '--json'], cfg.env);
    expect(plan.code, plan.stderr).toBe(0);
    planned = JSON.parse(plan.stdout);
    const run = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    applied = { code: run.code, json: JSON.parse(run.stdout), stderr: run.stderr };
  });
  afterAll(async () => pair?.drop());

  it('plans the repair after the last migration, with the SQL it runs', () => {
    const actions = planned.steps.find((s) => s.step === 'migrate')!.actions;
    expect(actions.at(-1)?.id).toBe(REPAIR);
    // Old values are recorded in _rewrites by the same statement (a WITH), then the UPDATE runs.
    expect(actions.at(-1)?.sql).toContain('UPDATE "public"."hydra_oauth2_flow" t SET "state" = CASE');
    expect(actions.at(-1)?.sql).toContain(`t.login_error::text IN ('{}', '')`);
    expect(actions.at(-1)?.sentence).toContain('bluegreen_quarantine._rewrites');
  });

  it('ends 0 with every remembered consent still remembered and no state rewritten', () => {
    expect(applied.code, applied.stderr).toBe(0);
    const inv = applied.json.validation.invariants.find((i) => i.name === 'remembered-consents-stay-remembered')!;
    expect(inv.blueCount).toBeGreaterThan(0);
    expect(inv).toMatchObject({ passed: true, offending: 0 });
    expect(applied.json.validation.changes.find((c) => c.name === 'flow-state-rewrites')?.count).toBe(0);
  });

  it('gives each flow the state its v1 rows imply, and a login whose error is a real one stays 128', async () => {
    expect(realErrors.length).toBeGreaterThan(0);
    const green = await greenStates(pair.greenDsn);
    expect(Object.fromEntries(green)).toEqual(Object.fromEntries(implied));
    for (const k of realErrors) expect(green.get(k), k).toBe(128);
    expect(new Set(green.values()).size).toBeGreaterThanOrEqual(6);
  });

  it('records each repaired key with its old state, and `quarantine restore --rule` puts the old states back', async () => {
    const repairedKeys = [...implied].filter(([k, s]) => s !== 128 && s !== 1 && !realErrors.includes(k)).map(([k]) => k).sort();
    const recorded = await withClient(pair.greenDsn, async (c) => (await c.query<{ k: string; old: string }>(
      `SELECT row ->> 'login_challenge' AS k, row ->> 'state' AS old FROM bluegreen_quarantine._rewrites WHERE rule = $1 ORDER BY 1`, [REPAIR],
    )).rows);
    expect(recorded.map((r) => r.k)).toEqual(repairedKeys);
    expect(new Set(recorded.map((r) => r.old))).toEqual(new Set(['128']));
    const restored = await runCli(['quarantine', 'restore', '--rule', REPAIR, '--config', cfg.file, '--json'], cfg.env);
    expect(restored.code, restored.stdout + restored.stderr).toBe(0);
    const green = await greenStates(pair.greenDsn);
    for (const k of repairedKeys) expect(green.get(k), k).toBe(128);
    const left = await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT count(*)::int AS n FROM bluegreen_quarantine._rewrites WHERE rule = $1`, [REPAIR])).rows[0].n);
    expect(left).toBe(0);
  });
});
