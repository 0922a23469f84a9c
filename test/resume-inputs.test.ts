// Resume agrees with plan: a run journals a digest of each step's inputs, `apply --resume` re-opens a
// finished step whose inputs changed (or refuses when that is unsafe), and `plan` on a half-done run
// shows exactly what the resume then runs. Every test goes through the real CLI on real clusters.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createDbPair, fingerprint, kill9, runCli, seedBlue, startCliUntil, V2_MIGRATIONS, withClient, writeConfig, type DbPair } from './harness.ts';

// Our own rule for the fixture's duplicate-consent class (not the profile's, which other work reshapes):
// the older of two consents for one login goes, as the v2 flow table keeps one consent per login.
const DUPLICATE_CONSENT = {
  name: 'late-duplicate-consent',
  table: 'public.hydra_oauth2_consent_request',
  where: 't.login_challenge IS NOT NULL AND EXISTS (SELECT 1 FROM public.hydra_oauth2_consent_request n WHERE n.login_challenge = t.login_challenge AND (n.requested_at, n.challenge) > (t.requested_at, t.challenge))',
  reason: 'the v2 flow table holds one consent per login',
};

type PlanStep = { step: string; status?: string; doneUnits?: number; remainingUnits?: string[]; reason?: string; hint?: string; actions: { id: string }[] };

function rewriteConfig(file: string, change: (cfg: Record<string, unknown>) => void): void {
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  change(cfg);
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
}

async function journal(dsn: string, step: string): Promise<Map<string, { status: string; finished: string | null }>> {
  return withClient(dsn, async (c) => {
    const { rows } = await c.query<{ unit: string; status: string; finished: string | null }>(`SELECT unit, status, finished_at::text AS finished FROM bluegreen.journal WHERE step = $1`, [step]);
    return new Map(rows.map((r) => [r.unit, { status: r.status, finished: r.finished }]));
  });
}

describe('resume agrees with plan', () => {
  const pairs: DbPair[] = [];
  const dirs: string[] = [];
  afterAll(async () => {
    for (const p of pairs) await p.drop();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  it('runs a cleanup rule added after the run failed: plan shows cleanup re-opened, the resume quarantines the rows and ends 0', async () => {
    const pair = await createDbPair('resume_rule');
    pairs.push(pair);
    await seedBlue(pair, { rows: 600, seed: 5, dirty: ['duplicate-consent', 'orphan-client'] });
    const cfg = writeConfig(pair, { profile: 'none' });
    // The migrations fail on the duplicates (4), or a pre-flight refuses them before any runs (5).
    const failed = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect([4, 5], failed.stdout + failed.stderr).toContain(failed.code);
    expect(JSON.parse(failed.stdout).steps.map((s: { name: string; status: string }) => `${s.name}:${s.status}`)).toContain('migrate:failed');
    const cleanupBefore = await journal(pair.blueDsn, 'cleanup');
    expect(cleanupBefore.get('')?.status).toBe('done');

    rewriteConfig(cfg.file, (c) => (c.cleanup = { rules: [DUPLICATE_CONSENT] }));
    const plan = await runCli(['plan', '--config', cfg.file, '--json'], cfg.env);
    expect(plan.code, plan.stderr).toBe(0);
    const steps = JSON.parse(plan.stdout).steps as PlanStep[];
    const byStep = new Map(steps.map((s) => [s.step, s]));
    expect(byStep.get('snapshot')?.status).toBe('done');
    // Only the new rule and the FK check run: rules that ran are not judged again on a green the migrations may have moved on.
    const cleanup = byStep.get('cleanup')!;
    expect(cleanup).toMatchObject({ status: 'reopened', remainingUnits: [`rule:${DUPLICATE_CONSENT.name}`, 'validate-foreign-keys'] });
    expect(cleanup.reason).toContain(`rule:${DUPLICATE_CONSENT.name} is new`);
    expect(byStep.get('migrate')?.status).toBe('remaining');
    expect(byStep.get('migrate')?.remainingUnits).toContain('migration:20211011000007000000');
    expect(byStep.get('validate')?.status).toBe('remaining');
    const text = await runCli(['plan', '--config', cfg.file], cfg.env);
    expect(text.stdout).toContain('re-opened: rule:late-duplicate-consent is new');
    expect(text.stdout).toMatch(/\[rule:late-duplicate-consent\] .*\(would still run\)/);

    const expected = await withClient(pair.blueDsn, async (c) => (await c.query<{ challenge: string }>(`SELECT challenge FROM public.hydra_oauth2_consent_request t WHERE ${DUPLICATE_CONSENT.where} ORDER BY 1`)).rows.map((r) => r.challenge));
    expect(expected.length).toBeGreaterThan(0);
    const resumed = await runCli(['apply', '--config', cfg.file, '--resume', '--json'], cfg.env);
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout).steps.map((s: { name: string; status: string }) => `${s.name}:${s.status}`)).toEqual(['preflight:skipped', 'capture:skipped', 'snapshot:skipped', 'cleanup:done', 'migrate:done', 'validate:done']);
    const held = await withClient(pair.greenDsn, async (c) => (await c.query<{ k: string }>(`SELECT row->>'challenge' AS k FROM bluegreen_quarantine.hydra_oauth2_consent_request WHERE rule = $1 ORDER BY 1`, [DUPLICATE_CONSENT.name])).rows.map((r) => r.k));
    expect(held).toEqual(expected);
    // Nothing else was taken: every quarantined row belongs to a rule of the first attempt or to the new rule's rows and their dependents.
    const byRule = JSON.parse(resumed.stdout).quarantine.byReason as Record<string, number>;
    expect(Object.keys(byRule).sort()).toEqual([...Object.keys(JSON.parse(failed.stdout).quarantine.byReason), DUPLICATE_CONSENT.name].sort());

    // The rules that had run stay done (not run twice); the foreign-key check ran again after the new rule.
    const cleanupAfter = await journal(pair.blueDsn, 'cleanup');
    const kept = [...cleanupBefore.keys()].filter((u) => u.startsWith('rule:') && !cleanup.remainingUnits!.includes(u));
    expect(kept.length).toBeGreaterThan(0);
    for (const unit of kept) expect(cleanupAfter.get(unit), unit).toEqual(cleanupBefore.get(unit));
    expect(cleanupAfter.get('validate-foreign-keys')?.finished).not.toBe(cleanupBefore.get('validate-foreign-keys')?.finished);
  });

  it('refuses (exit 3) a resume after a migration green already ran was changed, naming the file, both hashes and --restart, and changes nothing', async () => {
    const pair = await createDbPair('resume_mig');
    pairs.push(pair);
    await seedBlue(pair, { rows: 300, seed: 6, dirty: [] });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-migrations-'));
    dirs.push(dir);
    fs.cpSync(V2_MIGRATIONS, dir, { recursive: true });
    const cfg = writeConfig(pair, { migrations: { kind: 'pop', dir } });
    const { child } = await startCliUntil(['apply', '--config', cfg.file, '--drill-pause', 'before:migrate:migration:20211011000006000000'], cfg.env, 'fault: paused before migrate:migration:');
    await kill9(child);

    const changed = path.join(dir, '20211011000003000000_nid_not_null.postgres.up.sql');
    const original = fs.readFileSync(changed, 'utf8');
    fs.writeFileSync(changed, `${original}\nALTER TABLE hydra_jwk ALTER COLUMN nid DROP NOT NULL;\n`);
    const before = { blue: await fingerprint(pair.blueDsn), green: await fingerprint(pair.greenDsn) };

    const plan = await runCli(['plan', '--config', cfg.file, '--json'], cfg.env);
    expect(plan.code, plan.stderr).toBe(0);
    const migrate = (JSON.parse(plan.stdout).steps as PlanStep[]).find((s) => s.step === 'migrate');
    expect(migrate).toMatchObject({ status: 'refused', remainingUnits: [] });
    expect(migrate?.reason).toContain('20211011000003000000_nid_not_null.postgres.up.sql');
    expect(migrate?.hint).toContain('--restart');

    const refused = await runCli(['apply', '--config', cfg.file, '--resume', '--json'], cfg.env);
    expect(refused.code, refused.stdout + refused.stderr).toBe(3);
    const error = JSON.parse(refused.stdout).error as { name: string; message: string; hint: string };
    expect(error.name).toBe('StateError');
    expect(error.message).toContain('migration:20211011000003000000 changed since it ran');
    expect(error.message).toMatch(/was 20211011000003000000_nid_not_null\.postgres\.up\.sql sha256 [0-9a-f]{12}; now 20211011000003000000_nid_not_null\.postgres\.up\.sql sha256 [0-9a-f]{12}/);
    expect(error.hint).toContain('migrate apply --restart');
    expect(await fingerprint(pair.blueDsn)).toBe(before.blue);
    expect(await fingerprint(pair.greenDsn)).toBe(before.green);

    // A new file that sorts before an applied one is refused too; one that sorts after every file runs.
    fs.writeFileSync(changed, original);
    const early = path.join(dir, '20211011000002500000_early.postgres.up.sql');
    fs.writeFileSync(early, 'CREATE TABLE resume_early (id int);\n');
    const outOfOrder = await runCli(['apply', '--config', cfg.file, '--resume'], cfg.env);
    expect(outOfOrder.code, outOfOrder.stderr).toBe(3);
    expect(outOfOrder.stderr).toContain('migration:20211011000002500000 (20211011000002500000_early.postgres.up.sql');
    expect(outOfOrder.stderr).toContain('sorts before migration:20211011000003000000');
    expect(await fingerprint(pair.greenDsn)).toBe(before.green);
    fs.rmSync(early);
    fs.writeFileSync(path.join(dir, '20991231000000000000_late.postgres.up.sql'), 'CREATE TABLE resume_late (id int);\n');
    const resumed = await runCli(['apply', '--config', cfg.file, '--resume', '--json'], cfg.env);
    expect(JSON.parse(resumed.stdout).steps.find((s: { name: string }) => s.name === 'migrate')?.status, resumed.stdout + resumed.stderr).toBe('done');
    const late = await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT to_regclass('public.resume_late') IS NOT NULL AS ok, to_regclass('public.resume_early') IS NULL AS no_early`)).rows[0]);
    expect(late).toEqual({ ok: true, no_early: true });
  });

  it('lists in plan --json exactly the snapshot units a resume after a SIGKILL then runs, and skips every finished step', async () => {
    const pair = await createDbPair('resume_plan');
    pairs.push(pair);
    await seedBlue(pair, { rows: 800, seed: 9, dirty: [] });
    const cfg = writeConfig(pair, { snapshot: { jobs: 1 } });
    const { child } = await startCliUntil(['apply', '--config', cfg.file, '--drill-pause', 'after:snapshot:data:*'], cfg.env, 'fault: paused after snapshot:data:');
    await kill9(child);

    const plan = await runCli(['plan', '--config', cfg.file, '--json'], cfg.env);
    expect(plan.code, plan.stderr).toBe(0);
    const steps = JSON.parse(plan.stdout).steps as PlanStep[];
    expect(steps.map((s) => `${s.step}:${s.status}`)).toEqual(['preflight:done', 'capture:done', 'snapshot:remaining', 'cleanup:remaining', 'migrate:remaining', 'validate:remaining']);
    const snapshot = steps.find((s) => s.step === 'snapshot')!;
    expect(snapshot.doneUnits).toBe(2); // pre-data and the one table copied before the kill
    expect(snapshot.remainingUnits!.length).toBeGreaterThan(5);
    const text = await runCli(['plan', '--config', cfg.file], cfg.env);
    expect(text.stdout).toContain(`done: 2 unit(s); would still run: ${snapshot.remainingUnits!.length} unit(s)`);

    const since = await withClient(pair.blueDsn, async (c) => (await c.query<{ t: string }>('SELECT clock_timestamp()::text AS t')).rows[0]!.t);
    const resumed = await runCli(['apply', '--config', cfg.file, '--resume', '--accept-new-snapshot', '--json'], cfg.env);
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout).steps.map((s: { name: string; status: string }) => `${s.name}:${s.status}`)).toEqual(['preflight:skipped', 'capture:skipped', 'snapshot:done', 'cleanup:done', 'migrate:done', 'validate:done']);
    const ran = await withClient(pair.blueDsn, async (c) => (await c.query<{ unit: string }>(`SELECT unit FROM bluegreen.journal WHERE step = 'snapshot' AND unit <> '' AND started_at >= $1 ORDER BY 1`, [since])).rows.map((r) => r.unit));
    expect(ran).toEqual([...snapshot.remainingUnits!].sort());
  });
});
