// Cleanup never takes away more access than the real migration would: duplicates keep the row that
// grants access (handled, remembered, active tokens, newest), a token whose challenge points nowhere
// stays with challenge_id NULL (as Hydra 2.x's own migration does) and the old value is restorable,
// and `plan` lists every quarantined row that grants access before anything runs. Also: the Hydra
// engine's rules for tables that do not exist yet are skipped, so an in-place run that creates them works.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.ts';
import { HYDRA_CLEANUP_RULES } from '../src/engines/hydra/cleanup.ts';
import { resolveEngine } from '../src/engines/index.ts';
import { HYDRA_V1_SCHEMA_FILE, DIRTY_CLASSES, type SeedResult } from '../support/fixture/seed.ts';
import { withContext } from '../src/commands/session.ts';
import { resolveRuleSet } from '../src/steps/cleanup.ts';
import { createDbPair, fingerprint, runCli, seedBlue, V2_MIGRATIONS, withClient, writeConfig, type DbPair } from './harness.ts';

interface AccessChangeJson {
  rule: string;
  kind: string;
  table: string;
  rows: number;
  sample: Record<string, string>[];
}
interface PlanAction {
  id: string;
  sentence: string;
  facts?: { rows?: number; sample?: Record<string, string>[]; choices?: { kept: string; quarantined: string; decidedBy: string }[]; accessChanges?: AccessChangeJson[] };
}

const PER_CLASS = 4; // duplicate pairs k = 1..4 cover the four tie-breaks (support/fixture/seed.ts)

describe('cleanup keeps what grants access', () => {
  let pair: DbPair;
  let seeded: SeedResult;
  let cfg: ReturnType<typeof writeConfig>;
  let plan: { steps: { step: string; actions: PlanAction[] }[]; accessChanges: AccessChangeJson[] };
  let planText: string;
  let applied: {
    ok: boolean;
    steps: { name: string; status: string }[];
    accessChanges: AccessChangeJson[];
    rewritten: Record<string, number>;
    quarantine: { byReason: Record<string, number> };
    validation: { passed: boolean; conversions: { name: string; compared: number; changed: number; rewrittenByCleanup?: Record<string, number> }[] };
  };
  /** Per seeded duplicate pair: the row the rule should quarantine (the seed's dirty row) and its sibling. */
  let pairs: { k: number; loser: string; winner: string }[];

  beforeAll(async () => {
    pair = await createDbPair('access');
    seeded = await seedBlue(pair, { rows: 1500, seed: 17, dirty: DIRTY_CLASSES, dirtyPerClass: PER_CLASS });
    cfg = writeConfig(pair);
    const losers = seeded.dirty.filter((d) => d.dirtyClass === 'duplicate-consent').map((d) => d.key.challenge!);
    pairs = await withClient(pair.blueDsn, async (c) =>
      (
        await c.query<{ loser: string; winner: string; subject: string }>(
          `SELECT l.challenge AS loser, w.challenge AS winner, l.subject FROM hydra_oauth2_consent_request l
             JOIN hydra_oauth2_consent_request w ON w.login_challenge = l.login_challenge AND w.challenge <> l.challenge
            WHERE l.challenge = ANY ($1) ORDER BY l.subject`,
          [losers],
        )
      ).rows.map((r) => ({ k: Number(r.subject.replace('user-dirty-', '')), loser: r.loser, winner: r.winner })),
    );
    const planned = await runCli(['plan', '--config', cfg.file, '--json'], cfg.env);
    expect(planned.code, planned.stderr).toBe(0);
    plan = JSON.parse(planned.stdout);
    const text = await runCli(['plan', '--config', cfg.file], cfg.env);
    expect(text.code, text.stderr).toBe(0);
    planText = text.stdout;
    const run = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(run.code, run.stdout + run.stderr).toBe(0);
    applied = JSON.parse(run.stdout);
  });
  afterAll(async () => pair?.drop());

  const cleanupActions = (): PlanAction[] => plan.steps.find((s) => s.step === 'cleanup')!.actions;

  it('seeds one duplicate pair per tie-break', () => {
    expect(pairs.map((p) => p.k)).toEqual([1, 2, 3, 4]);
  });

  it('keeps the older handled, remembered consent and its active tokens on green, and quarantines the newer one that was never handled', async () => {
    const first = pairs.find((p) => p.k === 1)!;
    const blue = await withClient(pair.blueDsn, async (c) => ({
      handled: (await c.query(`SELECT challenge, remember FROM hydra_oauth2_consent_request_handled WHERE challenge = ANY ($1)`, [[first.loser, first.winner]])).rows,
      older: (await c.query(`SELECT (SELECT requested_at FROM hydra_oauth2_consent_request WHERE challenge = $1) < (SELECT requested_at FROM hydra_oauth2_consent_request WHERE challenge = $2) AS older`, [first.winner, first.loser])).rows[0].older,
      tokens: (await c.query(`SELECT signature FROM hydra_oauth2_access WHERE challenge_id = $1 AND active UNION ALL SELECT signature FROM hydra_oauth2_refresh WHERE challenge_id = $1 AND active`, [first.winner])).rows.map((r) => r.signature),
    }));
    expect(blue.handled).toEqual([{ challenge: first.winner, remember: true }]);
    expect(blue.older).toBe(true);
    expect(blue.tokens).toHaveLength(2);
    await withClient(pair.greenDsn, async (c) => {
      const flow = await c.query(`SELECT consent_challenge_id, consent_remember FROM hydra_oauth2_flow WHERE consent_challenge_id = ANY ($1)`, [[first.loser, first.winner]]);
      expect(flow.rows).toEqual([{ consent_challenge_id: first.winner, consent_remember: true }]);
      const tokens = await c.query(`SELECT signature FROM hydra_oauth2_access WHERE challenge_id = $1 AND active UNION ALL SELECT signature FROM hydra_oauth2_refresh WHERE challenge_id = $1 AND active`, [first.winner]);
      expect(tokens.rows.map((r) => r.signature).sort()).toEqual([...blue.tokens].sort());
      const held = await c.query(`SELECT rule FROM bluegreen_quarantine.hydra_oauth2_consent_request WHERE row ->> 'challenge' = ANY ($1)`, [[first.loser, first.winner]]);
      expect(held.rows).toEqual([{ rule: 'duplicate-consent' }]);
      const loser = await c.query(`SELECT row ->> 'challenge' AS challenge FROM bluegreen_quarantine.hydra_oauth2_consent_request WHERE rule = 'duplicate-consent' AND row ->> 'challenge' = $1`, [first.loser]);
      expect(loser.rows).toHaveLength(1);
    });
  });

  it('resolves every pair by the declared order: handled, then remembered, then active tokens, then newest', async () => {
    await withClient(pair.greenDsn, async (c) => {
      const kept = (await c.query(`SELECT consent_challenge_id AS c FROM hydra_oauth2_flow WHERE consent_challenge_id = ANY ($1)`, [pairs.flatMap((p) => [p.loser, p.winner])])).rows.map((r) => r.c);
      expect(kept.sort()).toEqual(pairs.map((p) => p.winner).sort());
    });
    const choices = cleanupActions().find((a) => a.id === 'rule:duplicate-consent')!.facts!.choices!;
    const decided = Object.fromEntries(pairs.map((p) => [p.k, choices.find((ch) => ch.quarantined === p.loser)]));
    expect(pairs.map((p) => [p.k, decided[p.k]?.kept === p.winner, decided[p.k]?.decidedBy])).toEqual([
      [1, true, 'not handled'],
      [2, true, 'not remembered'],
      [3, true, 'no active token'],
      [4, true, 'older'],
    ]);
  });

  it('states the choice in the plan sentence: which consent it keeps and which it quarantines', () => {
    const action = cleanupActions().find((a) => a.id === 'rule:duplicate-consent')!;
    expect(action.sentence).toContain('per login it keeps the consent that grants access (handled, then remembered, then referenced by active tokens, then newest)');
    expect(action.sentence).toMatch(/keeps the (handled|handled, remembered|handled, referenced by active tokens|handled, remembered, referenced by active tokens) consent \w+; quarantines \w+ \(/);
    const first = pairs.find((p) => p.k === 1)!;
    expect(planText).toContain(`keeps the handled, remembered, referenced by active tokens consent ${first.winner}; quarantines ${first.loser} (not handled)`);
  });

  it('keeps a token whose challenge points nowhere, with challenge_id set to NULL, instead of quarantining it', async () => {
    const orphans = seeded.dirty.filter((d) => d.dirtyClass === 'orphan-challenge');
    expect(orphans).toHaveLength(PER_CLASS);
    const ids = cleanupActions().map((a) => a.id);
    expect(ids).toContain('rule:null-dangling:hydra_oauth2_access_challenge_id_fk');
    expect(ids).toContain('rule:null-dangling:hydra_oauth2_refresh_challenge_id_fk');
    expect(ids.filter((id) => /^rule:fk-orphans:.*challenge/.test(id))).toEqual([]);
    const dangling = Object.entries(applied.rewritten).filter(([rule]) => rule.startsWith('null-dangling:'));
    expect(dangling.reduce((a, [, n]) => a + n, 0)).toBe(PER_CLASS);
    await withClient(pair.greenDsn, async (c) => {
      for (const d of orphans) {
        const [, table] = d.table.split('.');
        const row = await c.query(`SELECT challenge_id, active FROM ${table} WHERE signature = $1`, [d.key.signature]);
        expect(row.rows, `${table} ${d.key.signature}`).toEqual([{ challenge_id: null, active: expect.any(Boolean) }]);
        const held = await c.query(`SELECT 1 FROM bluegreen_quarantine.${table} WHERE row ->> 'signature' = $1`, [d.key.signature]).catch(() => ({ rows: [] }));
        expect(held.rows).toEqual([]);
      }
      const recorded = await c.query(`SELECT source_table, column_name, key_columns, row FROM bluegreen_quarantine._rewrites WHERE rule LIKE 'null-dangling:%' ORDER BY row ->> 'signature'`);
      const blueValues = await withClient(pair.blueDsn, async (b) =>
        (await b.query(`SELECT signature, challenge_id FROM hydra_oauth2_access WHERE signature = ANY ($1) UNION ALL SELECT signature, challenge_id FROM hydra_oauth2_refresh WHERE signature = ANY ($1) ORDER BY 1`, [orphans.map((d) => d.key.signature)])).rows,
      );
      expect(recorded.rows.map((r) => r.row)).toEqual(blueValues);
      expect(recorded.rows.every((r) => r.column_name === 'challenge_id' && r.key_columns.join() === 'signature')).toBe(true);
    });
  });

  it('lists in the plan, before anything runs, every quarantined row that grants access, by rule with counts and keys', async () => {
    expect(planText).toMatch(/^access changes: \d+ row\(s\) that grant access would be quarantined/m);
    const byRule = (rule: string, kind: string) => plan.accessChanges.find((c) => c.rule === rule && c.kind === kind);
    // The tie-break keeps access: the duplicate rule takes nothing that grants it.
    expect(plan.accessChanges.filter((c) => c.rule === 'duplicate-consent')).toEqual([]);
    const dirty = (cls: string) => seeded.dirty.filter((d) => d.dirtyClass === cls);
    await withClient(pair.blueDsn, async (c) => {
      const unhandled = dirty('unhandled-login').map((d) => d.key.challenge);
      const lostTokens = (await c.query(`SELECT signature FROM hydra_oauth2_access WHERE active AND challenge_id = ANY ($1) ORDER BY 1`, [unhandled])).rows.map((r) => r.signature);
      expect(lostTokens.length).toBeGreaterThan(0);
      const entry = byRule('unhandled-login', 'active access token')!;
      expect(entry).toMatchObject({ table: 'public.hydra_oauth2_access', rows: lostTokens.length });
      expect(entry.sample.map((k) => k.signature)).toEqual(lostTokens.slice(0, 5));

      // Quoted lists and broken session JSON are rewritten, not quarantined: they take no access.
      expect(plan.accessChanges.filter((c) => ['pipe-quote', 'invalid-json'].includes(c.rule))).toEqual([]);

      const orphanClient = dirty('orphan-client').filter((d) => d.table === 'public.hydra_oauth2_access').map((d) => d.key.signature);
      const active = (await c.query(`SELECT count(*)::int AS n FROM hydra_oauth2_access WHERE active AND signature = ANY ($1)`, [orphanClient])).rows[0].n;
      expect(byRule('fk-orphans:hydra_oauth2_access_client_id_fk', 'active access token')?.rows ?? 0).toBe(active);
    });
  });

  it('reports after apply the access it took, the same as the plan said', () => {
    const key = (c: AccessChangeJson) => `${c.rule}/${c.kind}=${c.rows}`;
    expect(applied.accessChanges.map(key).sort()).toEqual(plan.accessChanges.map(key).sort());
  });

  it('still applies the v2 fixture migrations after cleanup', () => {
    expect(applied.ok).toBe(true);
    expect(applied.steps.map((s) => `${s.name}:${s.status}`)).toEqual(['preflight:done', 'capture:done', 'snapshot:done', 'cleanup:done', 'migrate:done', 'validate:done']);
  });

  it('keeps a client whose lists hold a quote or a backslash, with its tokens, and green converts them to exactly the original elements', async () => {
    const clients = seeded.dirty.filter((d) => d.dirtyClass === 'pipe-quote').map((d) => String(d.key.pk));
    expect(clients).toHaveLength(PER_CLASS);
    expect(applied.rewritten['pipe-quote']).toBe(PER_CLASS);
    expect(applied.quarantine.byReason['pipe-quote']).toBeUndefined();
    const read = (dsn: string) =>
      withClient(dsn, async (c) =>
        (
          await c.query(
            `SELECT cl.pk, cl.id, cl.redirect_uris, (SELECT count(*)::int FROM hydra_oauth2_access a WHERE a.client_id = cl.id AND a.active)
                    + (SELECT count(*)::int FROM hydra_oauth2_refresh r WHERE r.client_id = cl.id AND r.active) AS tokens
               FROM hydra_client cl WHERE cl.pk::text = ANY ($1) ORDER BY cl.pk`,
            [clients],
          )
        ).rows,
      );
    const [blue, green] = [await read(pair.blueDsn), await read(pair.greenDsn)];
    expect(blue.some((r) => r.redirect_uris.includes('"'))).toBe(true);
    expect(blue.some((r) => r.redirect_uris.includes('\\'))).toBe(true);
    expect(blue.every((r) => r.tokens > 0)).toBe(true);
    // The jsonb array on green holds the pipe-split blue strings, byte for byte; every active token stays.
    expect(green).toEqual(blue.map((r) => ({ ...r, redirect_uris: r.redirect_uris.split('|') })));
    const lists = applied.validation.conversions.find((c) => c.name === 'public.hydra_client.redirect_uris -> public.hydra_client.redirect_uris')!;
    expect(lists.compared).toBeGreaterThan(PER_CLASS);
    expect(lists.changed).toBe(0);
    expect(applied.validation.passed).toBe(true);
  });

  it("keeps a consent whose session text is not JSON, with its tokens, as '{}' on green and the old text recorded", async () => {
    const consents = seeded.dirty.filter((d) => d.dirtyClass === 'invalid-json').map((d) => d.key.challenge!);
    expect(consents).toHaveLength(PER_CLASS);
    expect(applied.quarantine.byReason['invalid-json']).toBeUndefined();
    const tokens = (dsn: string) => withClient(dsn, async (c) => (await c.query(`SELECT signature FROM hydra_oauth2_access WHERE active AND challenge_id = ANY ($1) ORDER BY 1`, [consents])).rows);
    const onBlue = await tokens(pair.blueDsn);
    expect(onBlue.length).toBeGreaterThan(0);
    expect(await tokens(pair.greenDsn)).toEqual(onBlue);
    const old = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT challenge, session_access_token FROM hydra_oauth2_consent_request_handled WHERE challenge = ANY ($1) ORDER BY 1`, [consents])).rows);
    await withClient(pair.greenDsn, async (c) => {
      const flows = await c.query(`SELECT consent_challenge_id AS challenge, session_access_token FROM hydra_oauth2_flow WHERE consent_challenge_id = ANY ($1) ORDER BY 1`, [consents]);
      expect(flows.rows).toEqual(old.map((r) => ({ challenge: r.challenge, session_access_token: {} })));
      const recorded = await c.query(`SELECT row ->> 'challenge' AS challenge, row ->> 'session_access_token' AS session_access_token FROM bluegreen_quarantine._rewrites WHERE rule = 'invalid-json' AND column_name = 'session_access_token' ORDER BY 1`);
      expect(recorded.rows).toEqual(old);
    });
    // Validation attributes the difference to the rewrite, not to the migration.
    const session = applied.validation.conversions.find((c) => c.name.startsWith('public.hydra_oauth2_consent_request_handled.session_access_token'))!;
    expect(session).toMatchObject({ changed: 0, rewrittenByCleanup: { 'invalid-json': PER_CLASS } });
  });

  it('refuses to put a rewritten list back once the migrations converted the column (exit 3), changing nothing', async () => {
    const before = await fingerprint(pair.greenDsn);
    const r = await runCli(['quarantine', 'restore', '--rule', 'pipe-quote', '--config', cfg.file], cfg.env);
    expect(r.code, r.stdout + r.stderr).toBe(3);
    expect(r.stderr).toMatch(/cannot restore the rewritten public\.hydra_client\.redirect_uris: it was text when cleanup rewrote it and is jsonb now/);
    expect(r.stderr).toMatch(/restore before running the migrations/);
    expect(await fingerprint(pair.greenDsn)).toEqual(before);
  });

  it('puts a rewritten challenge_id back with `quarantine restore --rule`', async () => {
    const listed = await runCli(['quarantine', 'list', '--config', cfg.file, '--json'], cfg.env);
    expect(listed.code, listed.stderr).toBe(0);
    expect([...new Set(JSON.parse(listed.stdout).rewrites.map((r: { rule: string }) => r.rule))].sort()).toEqual([
      'invalid-json',
      'null-dangling:hydra_oauth2_access_challenge_id_fk',
      'null-dangling:hydra_oauth2_refresh_challenge_id_fk',
      'pipe-quote',
      'repair:flow-state-no-error',
    ]);
    const rule = 'null-dangling:hydra_oauth2_access_challenge_id_fk';
    const restored = await runCli(['quarantine', 'restore', '--rule', rule, '--config', cfg.file, '--json'], cfg.env);
    expect(restored.code, restored.stdout + restored.stderr).toBe(0);
    const tokens = seeded.dirty.filter((d) => d.dirtyClass === 'orphan-challenge' && d.table === 'public.hydra_oauth2_access').map((d) => d.key.signature);
    const read = (dsn: string) => withClient(dsn, async (c) => (await c.query(`SELECT signature, challenge_id FROM hydra_oauth2_access WHERE signature = ANY ($1) ORDER BY 1`, [tokens])).rows);
    const onBlue = await read(pair.blueDsn);
    expect(onBlue.every((r) => r.challenge_id !== null)).toBe(true);
    expect(await read(pair.greenDsn)).toEqual(onBlue);
    const left = await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT DISTINCT rule FROM bluegreen_quarantine._rewrites ORDER BY 1`)).rows.map((r) => r.rule));
    expect(left).toEqual(['invalid-json', 'null-dangling:hydra_oauth2_refresh_challenge_id_fk', 'pipe-quote', 'repair:flow-state-no-error']);
  });
});

describe('the Hydra engine in one place', () => {
  it('names capture tables, replay sides and rules for v1 -> v2 once, and cutover reads them from there', () => {
    const hydra = resolveEngine('hydra', 'hydra-v2');
    expect(hydra.versions).toBe('v1 -> v2');
    expect(hydra.replay).toEqual({ green: 'hydra-v2', blue: 'hydra-v1' });
    expect(hydra.capture.blue.map((t) => t.table)).toContain('public.hydra_oauth2_consent_request_handled');
    expect(hydra.capture.green.map((t) => t.table)).toContain('public.hydra_oauth2_flow');
    expect(hydra.cleanupRules.find((r) => r.name === 'duplicate-consent')?.tieBreak?.order.map((c) => c.name)).toEqual(['handled', 'remembered', 'referenced by active tokens', 'newest']);
    // A green that keeps the old shape is replayed with the old semantics both ways.
    expect(resolveEngine('hydra', 'hydra-v1').replay).toEqual({ green: 'hydra-v1', blue: 'hydra-v1' });
    expect(resolveEngine('none', 'hydra-v2')).toMatchObject({ cleanupRules: [], invariants: [], capture: { blue: [], green: [] } });
    const cutover = fs.readFileSync(new URL('../src/commands/cutover.ts', import.meta.url), 'utf8');
    expect(cutover).not.toMatch(/'hydra-v[12]'|installGreenCapture\(ctx\.green\)/);
  });

  it("skips, and says so, the engine's rules for tables that do not exist yet, so in place the v1 and v2 migrations apply onto an empty database", async () => {
    const pair = await createDbPair('access_inplace');
    try {
      // The v1 schema as a migration of its own (pop creates schema_migration itself), then the v2 set.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-v1v2-'));
      const schema = fs.readFileSync(HYDRA_V1_SCHEMA_FILE, 'utf8');
      const tables = schema.slice(schema.indexOf('CREATE TABLE hydra_client'), schema.indexOf('-- The v1 migrations this schema stands for'));
      fs.writeFileSync(path.join(dir, '20190100000001000000_v1_schema.postgres.up.sql'), tables);
      for (const f of fs.readdirSync(V2_MIGRATIONS)) fs.copyFileSync(path.join(V2_MIGRATIONS, f), path.join(dir, f));
      const cfg = writeConfig(pair, { migrations: { kind: 'pop', dir } });

      const config = loadConfig(cfg.file, { ...process.env, ...cfg.env });
      const { skipped } = await withContext({ config }, (ctx) => resolveRuleSet(ctx, ctx.blue));
      expect(skipped.map((s) => s.name)).toEqual(HYDRA_CLEANUP_RULES.map((r) => r.name));
      expect(skipped[0]!.why).toMatch(/public\.hydra_oauth2_consent_request.* not exist here \(yet\); the hydra rule is for its v1 -> v2 tables/);

      const run = await runCli(['apply', '--in-place', '--config', cfg.file, '--json'], cfg.env);
      expect(run.code, run.stdout + run.stderr).toBe(0);
      const flow = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT to_regclass('public.hydra_oauth2_flow') IS NOT NULL AS ok`)).rows[0].ok);
      expect(flow).toBe(true);
    } finally {
      await pair.drop();
    }
  });
});
