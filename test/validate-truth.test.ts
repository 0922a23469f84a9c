// Validation tells the truth in both directions: quarantined access is listed as an expected loss by
// rule (never credited as "still works"), an unexpected loss fails naming it, conversions and the
// merge's dropped rows and rewritten states are reported, writes blue takes after the snapshot are
// not differences (while a real corruption still is), and a half-migrated green never passes.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../src/db/connect.ts';
import { DIRTY_CLASSES, loadHydraV1Schema, seedHydraV1 } from '../support/fixture/seed.ts';
import { popSource } from '../src/sources/pop.ts';
import { compareConversion } from '../src/validate/changes.ts';
import { HYDRA_CONVERSIONS } from '../src/engines/hydra/conversions.ts';
import { createDbPair, fingerprint, ROOT, runCli, seedBlue, V2_MIGRATIONS, withClient, writeConfig, type DbPair } from './harness.ts';

const CORRUPTION = path.join(ROOT, 'sql/fixtures/faults/20211011000013000000_corrupt_consent_remember.postgres.up.sql');

interface Invariant {
  name: string;
  passed: boolean;
  blueCount: number;
  offending: number;
  sample: string[];
  expected: { rule: string; count: number; sample: string[] }[];
}
interface Change {
  name: string;
  count: number;
  sample: { key: string; blue: string | null; green?: string | null }[];
}
interface Report {
  passed: boolean;
  failures: string[];
  invariants: Invariant[];
  changes: Change[];
  tables: { table: string; ok: boolean; checkedColumns: string[] }[];
}

/** A copy of the fixture's migration folder plus `extra` files (name -> SQL). */
function migrationsWith(extra: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-truth-'));
  for (const f of fs.readdirSync(V2_MIGRATIONS)) fs.copyFileSync(path.join(V2_MIGRATIONS, f), path.join(dir, f));
  for (const [name, sql] of Object.entries(extra)) fs.writeFileSync(path.join(dir, name), sql);
  return dir;
}

/**
 * Production-like writes on blue until `stop()` (bounded): tokens issued, revoked, rotated away,
 * deleted and edited; consents revoked, re-remembered, and new remembered consents granted.
 */
async function writeOnBlue(dsn: string, stop: () => boolean): Promise<number> {
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  const pick = (table: string, where = 'TRUE'): string => `(SELECT signature FROM ${table} WHERE ${where} ORDER BY md5(signature || $1) LIMIT 1)`;
  let ops = 0;
  try {
    for (; ops < 4000 && !stop(); ops++) {
      const n = String(ops);
      switch (ops % 8) {
        case 0:
          await c.query(
            `INSERT INTO hydra_oauth2_access (signature, request_id, client_id, scope, granted_scope, form_data, session_data, subject, challenge_id)
             SELECT 'live-' || $1, 'live-req-' || $1, a.client_id, a.scope, a.granted_scope, '', '{}', a.subject, a.challenge_id
               FROM hydra_oauth2_access a
              WHERE a.active
                -- seeded dirty tokens point at a gone client or challenge: a new row copying them would fail the FK
                AND EXISTS (SELECT 1 FROM hydra_client cl WHERE cl.id = a.client_id)
                AND (a.challenge_id IS NULL OR EXISTS (SELECT 1 FROM hydra_oauth2_consent_request_handled h WHERE h.challenge = a.challenge_id))
              ORDER BY md5(a.signature || $1) LIMIT 1`,
            [n],
          );
          break;
        case 1:
          await c.query(`UPDATE hydra_oauth2_refresh SET active = false WHERE signature = ${pick('hydra_oauth2_refresh', 'active')}`, [n]);
          break;
        case 2:
          await c.query(`DELETE FROM hydra_oauth2_access WHERE signature = ${pick('hydra_oauth2_access')}`, [n]);
          break;
        case 3:
          await c.query(`UPDATE hydra_oauth2_access SET scope = scope || ' live' WHERE signature = ${pick('hydra_oauth2_access', 'active')}`, [n]);
          break;
        case 4:
          await c.query(`DELETE FROM hydra_oauth2_consent_request_handled WHERE challenge = (SELECT challenge FROM hydra_oauth2_consent_request_handled ORDER BY md5(challenge || $1) LIMIT 1)`, [n]);
          break;
        case 5:
          await c.query(`UPDATE hydra_oauth2_consent_request_handled SET remember = NOT remember WHERE challenge = (SELECT challenge FROM hydra_oauth2_consent_request_handled ORDER BY md5(challenge || $1) LIMIT 1)`, [n]);
          break;
        case 6:
          // A whole new login and remembered consent (what a user signing in does): green never had it.
          await c.query(
            `WITH cl AS (SELECT id FROM hydra_client ORDER BY md5(id || $1) LIMIT 1),
                  ar AS (INSERT INTO hydra_oauth2_authentication_request (challenge, requested_scope, verifier, csrf, subject, request_url, skip, client_id)
                         SELECT 'live-l-' || $1, 'openid', 'live-lv-' || $1, 'csrf', 'live-subject', 'https://live.test', false, id FROM cl RETURNING challenge, client_id),
                  lh AS (INSERT INTO hydra_oauth2_authentication_request_handled (challenge, subject, remember, remember_for, error, acr, was_used)
                         SELECT challenge, 'live-subject', true, 0, '{}', '', true FROM ar RETURNING challenge),
                  cr AS (INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf, login_challenge)
                         SELECT 'live-c-' || $1, 'live-cv-' || $1, ar.client_id, 'live-subject', 'https://live.test', false, 'openid', 'csrf', lh.challenge FROM ar, lh RETURNING challenge)
             INSERT INTO hydra_oauth2_consent_request_handled (challenge, granted_scope, remember, remember_for, error, was_used) SELECT challenge, 'openid', true, 0, '{}', false FROM cr`,
            [n],
          );
          break;
        default:
          await c.query(`UPDATE hydra_oauth2_refresh SET active = true WHERE signature = ${pick('hydra_oauth2_refresh', 'NOT active')}`, [n]);
      }
    }
  } finally {
    await c.end();
  }
  return ops;
}

/** Runs `migrate apply` while blue takes writes; returns the CLI result and how many writes were made. */
async function applyUnderWrites(pair: DbPair, cfg: ReturnType<typeof writeConfig>): Promise<{ code: number | null; out: { validation: Report | null; error?: { validation?: Report } }; stdout: string; ops: number }> {
  let done = false;
  const writer = writeOnBlue(pair.blueDsn, () => done);
  const applied = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env).finally(() => (done = true));
  const ops = await writer;
  return { code: applied.code, out: JSON.parse(applied.stdout), stdout: applied.stdout + applied.stderr, ops };
}

describe('validation tells the truth', () => {
  const pairs: DbPair[] = [];
  afterAll(async () => Promise.all(pairs.map((p) => p.drop())));

  describe('on the dirty fixture', () => {
    let pair: DbPair;
    let cfg: ReturnType<typeof writeConfig>;
    let report: Report;
    let retired: string;
    beforeAll(async () => {
      pair = await createDbPair('truth_dirty');
      pairs.push(pair);
      await seedBlue(pair, { rows: 1500, seed: 21, dirty: DIRTY_CLASSES });
      // An operator rule that retires one remembered consent that active tokens hang off: an access loss by rule.
      retired = await withClient(pair.blueDsn, async (c) => {
        const { rows } = await c.query(
          `SELECT h.challenge FROM hydra_oauth2_consent_request_handled h JOIN hydra_oauth2_consent_request r USING (challenge)
            WHERE h.remember AND h.error = '{}' AND r.login_challenge IS NOT NULL AND EXISTS (SELECT 1 FROM hydra_oauth2_access a WHERE a.challenge_id = h.challenge AND a.active)
            ORDER BY 1 LIMIT 1`,
        );
        return rows[0].challenge as string;
      });
      cfg = writeConfig(pair, { cleanup: { rules: [{ name: 'retire-consent', table: 'public.hydra_oauth2_consent_request', where: `t.challenge = '${retired}'`, reason: 'retired by the operator' }] } });
      const applied = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
      expect(applied.code, applied.stdout + applied.stderr).toBe(0);
      report = JSON.parse(applied.stdout).validation;
    });

    it('lists quarantined remembered consents and active tokens as expected losses by rule, with counts and sample keys, and passes', async () => {
      const consents = report.invariants.find((i) => i.name === 'remembered-consents-stay-remembered')!;
      const tokens = report.invariants.find((i) => i.name === 'active-tokens-stay-active')!;
      for (const inv of [consents, tokens]) {
        expect(inv).toMatchObject({ passed: true, offending: 0 });
        expect(inv.expected.length, inv.name).toBeGreaterThan(0);
        for (const e of inv.expected) expect(e.sample.length).toBe(Math.min(5, e.count));
      }
      expect(consents.expected).toContainEqual({ rule: 'retire-consent', count: 1, sample: [retired] });
      // (A quoted client list is escaped in place now, so its client's tokens stay: unhandled-login is the class that takes tokens.)
      expect(tokens.expected.map((e) => e.rule)).toEqual(expect.arrayContaining(['unhandled-login', 'retire-consent']));
      // The quarantined consents really are remembered on blue and really are absent from green.
      const sample = consents.expected.flatMap((e) => e.sample);
      const onBlue = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT count(*)::int AS n FROM hydra_oauth2_consent_request_handled WHERE remember AND challenge = ANY($1)`, [sample])).rows[0].n);
      const onGreen = await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT count(*)::int AS n FROM hydra_oauth2_flow WHERE consent_challenge_id = ANY($1)`, [sample])).rows[0].n);
      expect([onBlue, onGreen]).toEqual([sample.length, 0]);
    });

    it('prints every invariant with its counts and the expected losses by rule in the text output of validate', async () => {
      const r = await runCli(['validate', '--config', cfg.file], cfg.env);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      for (const name of ['active-tokens-stay-active', 'remembered-consents-stay-remembered', 'revoked-tokens-stay-revoked']) {
        expect(r.stdout).toMatch(new RegExp(`ok +${name}: blue \\d+, green \\d+, expected losses \\d+, unexpected 0`));
      }
      expect(r.stdout).toMatch(/expected: quarantined by rule unhandled-login: \d+ \(sample: /);
      expect(r.stdout).toContain(`expected: quarantined by rule retire-consent: 1 (sample: ${retired})`);
      expect(r.stdout).toMatch(/conversion public\.hydra_client\.redirect_uris -> public\.hydra_client\.redirect_uris \(pipe-list-to-json-array\): 0 of \d+ value\(s\) changed/);
      expect(r.stdout).toContain('validation: passed');
    });

    it('fails with exit 5 naming the invariant and the key when a remembered consent is deleted on green by hand', async () => {
      const lost = await withClient(pair.greenDsn, async (c) => {
        const { rows } = await c.query(`DELETE FROM hydra_oauth2_flow WHERE consent_challenge_id = (SELECT consent_challenge_id FROM hydra_oauth2_flow WHERE consent_remember AND state IN (5, 6) ORDER BY 1 LIMIT 1) RETURNING consent_challenge_id`);
        return rows[0].consent_challenge_id as string;
      });
      const r = await runCli(['validate', '--config', cfg.file, '--json'], cfg.env);
      expect(r.code, r.stderr).toBe(5);
      const v: Report = JSON.parse(r.stdout).validation;
      const inv = v.invariants.find((i) => i.name === 'remembered-consents-stay-remembered')!;
      expect(inv).toMatchObject({ passed: false, offending: 1, sample: [lost] });
      expect(v.failures.join('\n')).toMatch(new RegExp(`^invariant remembered-consents-stay-remembered: 1 of \\d+ blue keys are missing on green; expected: 1 quarantined \\(retire-consent 1\\) .*sample keys: ${lost}$`, 'm'));
      const text = await runCli(['validate', '--config', cfg.file], cfg.env);
      expect(text.code).toBe(5);
      // A failed command's report goes to stderr.
      expect(text.stderr).toMatch(new RegExp(`FAIL remembered-consents-stay-remembered: blue \\d+, green \\d+, expected losses 1, unexpected 1`));
      expect(text.stderr).toContain(`expected: quarantined by rule retire-consent: 1 (sample: ${retired})`);
      expect(text.stderr).toContain(`sample keys: ${lost}`);
    });
  });

  it('quarantines consents the merge would drop (NULL login_challenge) with their tokens kept, lists the remembered one as an expected loss, and reports the states it rewrites', async () => {
    const pair = await createDbPair('truth_merge');
    pairs.push(pair);
    await seedBlue(pair, { rows: 1000, seed: 22, dirty: [] });
    const { rewritten } = await withClient(pair.blueDsn, async (c) => {
      await c.query(
        `INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf)
         SELECT 'nologin-' || x, 'nologin-v-' || x, (SELECT id FROM hydra_client ORDER BY pk LIMIT 1), 'someone', 'https://x.test', false, 'openid', 'csrf' FROM unnest(ARRAY['remembered', 'pending']) x`,
      );
      await c.query(`INSERT INTO hydra_oauth2_consent_request_handled (challenge, granted_scope, remember, remember_for, error, was_used, requested_at) VALUES ('nologin-remembered', 'openid', true, 0, '{}', false, now() - interval '1 day')`);
      // An active token of that consent: Hydra's merge keeps it (challenge_id NULL), so cleanup must too.
      await c.query(
        `INSERT INTO hydra_oauth2_access (signature, request_id, client_id, scope, granted_scope, form_data, session_data, subject, challenge_id)
         SELECT 'nologin-token', 'nologin-req', client_id, 'openid', 'openid', '', '{}', 'someone', 'nologin-remembered' FROM hydra_oauth2_consent_request WHERE challenge = 'nologin-remembered'`,
      );
      // A handled login whose error text is '{}' padded with a space: the state classifier reads it as no
      // error, the v2 merge as a rejection (128), and the engine's repair (exactly '{}' or '' only) leaves it.
      const { rows } = await c.query(
        `UPDATE hydra_oauth2_authentication_request_handled h SET error = ' {}' WHERE h.challenge = (
           SELECT l.challenge FROM hydra_oauth2_authentication_request_handled l WHERE l.error = '{}'
              AND NOT EXISTS (SELECT 1 FROM hydra_oauth2_consent_request c WHERE c.login_challenge = l.challenge) ORDER BY 1 LIMIT 1)
         RETURNING h.challenge`,
      );
      return { rewritten: rows[0].challenge as string };
    });
    const cfg = writeConfig(pair);
    const plan = await runCli(['plan', '--config', cfg.file], cfg.env);
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stdout).toContain('consent-without-login: 1 remembered consent(s)');
    const applied = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(applied.code, applied.stderr).toBe(0);
    const v: Report = JSON.parse(applied.stdout).validation;
    expect(v.changes.find((c) => c.name === 'consents-dropped-by-merge')?.count ?? 0).toBe(0);
    const states = v.changes.find((c) => c.name === 'flow-state-rewrites')!;
    expect(states.count).toBe(1);
    expect(states.sample[0]).toMatchObject({ key: `${rewritten}:`, green: '128' });
    expect(['2', '3']).toContain(states.sample[0]!.blue);
    const inv = v.invariants.find((i) => i.name === 'remembered-consents-stay-remembered')!;
    expect(inv).toMatchObject({ passed: true, offending: 0 });
    expect(inv.expected).toEqual([expect.objectContaining({ rule: 'consent-without-login', count: 1, sample: ['nologin-remembered'] })]);
    const green = await withClient(pair.greenDsn, async (c) => ({
      quarantined: (await c.query(`SELECT row->>'challenge' AS k FROM bluegreen_quarantine.hydra_oauth2_consent_request WHERE rule = 'consent-without-login' ORDER BY 1`)).rows.map((r) => r.k),
      token: (await c.query(`SELECT challenge_id, active FROM hydra_oauth2_access WHERE signature = 'nologin-token'`)).rows,
      recorded: (await c.query(`SELECT row->>'challenge_id' AS old FROM bluegreen_quarantine._rewrites WHERE rule = 'consent-without-login'`)).rows.map((r) => r.old),
    }));
    expect(green.quarantined).toEqual(['nologin-pending', 'nologin-remembered']);
    expect(green.token).toEqual([{ challenge_id: null, active: true }]);
    expect(green.recorded).toEqual(['nologin-remembered']);
  });

  it('compares pipe lists element by element through the conversion and reports a \\n the migration turned into a newline', async () => {
    const pair = await createDbPair('truth_conv');
    pairs.push(pair);
    const dirtyValue = 'https://app.test/cb\\nfoo|https://app.test/other';
    const prepare = async (c: pg.Client): Promise<string> => {
      await loadHydraV1Schema(c);
      await seedHydraV1(c, { rows: 400, seed: 23, dirty: [] });
      return (await c.query(`UPDATE hydra_client SET redirect_uris = $1 WHERE pk = (SELECT min(pk) FROM hydra_client) RETURNING id`, [dirtyValue])).rows[0].id as string;
    };
    const blue = await connect('blue', pair.blueDsn);
    const green = await connect('green', pair.greenDsn);
    try {
      const clientId = await prepare(blue);
      await prepare(green);
      const source = popSource(V2_MIGRATIONS);
      for (const m of await source.pending(green)) await source.apply(green, m);
      const converted = (await green.query(`SELECT redirect_uris FROM hydra_client WHERE id = $1`, [clientId])).rows[0].redirect_uris;
      expect(converted).toEqual(['https://app.test/cb\nfoo', 'https://app.test/other']);
      const results = [];
      for (const conv of HYDRA_CONVERSIONS) results.push(await compareConversion(blue, green, conv, null));
      const lists = results.find((r) => r.name === 'public.hydra_client.redirect_uris -> public.hydra_client.redirect_uris')!;
      expect(lists).toMatchObject({ changed: 1, sample: [{ key: clientId, blue: JSON.stringify(['https://app.test/cb\\nfoo', 'https://app.test/other']), green: JSON.stringify(['https://app.test/cb\nfoo', 'https://app.test/other']) }] });
      expect(lists.compared).toBeGreaterThan(1);
      for (const r of results.filter((x) => x !== lists)) expect(r, r.name).toMatchObject({ changed: 0 });
      expect(results.filter((r) => r.kind === 'text-to-json').every((r) => r.compared > 0)).toBe(true);
    } finally {
      await blue.end();
      await green.end();
    }
  });

  it('ends apply with exit 0 while blue takes writes (tokens and consents) during the whole run', async () => {
    const pair = await createDbPair('truth_live');
    pairs.push(pair);
    await seedBlue(pair, { rows: 1500, seed: 24, dirty: DIRTY_CLASSES });
    const cfg = writeConfig(pair);
    const { code, out, stdout, ops } = await applyUnderWrites(pair, cfg);
    expect(code, stdout).toBe(0);
    expect(out.validation!.passed).toBe(true);
    expect(out.validation!.tables.find((t) => t.table === 'public.hydra_oauth2_access')).toMatchObject({ ok: true });
    // Blue really moved on after the snapshot: writes were captured, and blue now holds rows green never saw.
    const { captured, newOnBlue } = await withClient(pair.blueDsn, async (c) => ({
      captured: (await c.query(`SELECT count(*)::int AS n FROM bluegreen.outbox`)).rows[0].n as number,
      newOnBlue: (await c.query(`SELECT array_agg(signature) AS s FROM hydra_oauth2_access WHERE signature LIKE 'live-%'`)).rows[0].s as string[] | null,
    }));
    expect(ops).toBeGreaterThan(0);
    expect(captured).toBeGreaterThan(0);
    const onGreen = await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT count(*)::int AS n FROM hydra_oauth2_access WHERE signature = ANY($1)`, [newOnBlue ?? []])).rows[0].n);
    expect((newOnBlue ?? []).length - onGreen).toBeGreaterThan(0);
  });

  it('still fails with exit 5 naming the invariant when a migration corrupts consents while blue takes writes', async () => {
    const pair = await createDbPair('truth_live_bad');
    pairs.push(pair);
    await seedBlue(pair, { rows: 1500, seed: 25, dirty: [] });
    const cfg = writeConfig(pair, { migrations: { kind: 'pop', dir: migrationsWith({ [path.basename(CORRUPTION)]: fs.readFileSync(CORRUPTION, 'utf8') }) } });
    const { code, out, stdout } = await applyUnderWrites(pair, cfg);
    expect(code, stdout).toBe(5);
    const v = out.validation!;
    expect(v.failures.length, v.failures.join('\n')).toBe(1);
    expect(v.failures[0]).toMatch(/^invariant remembered-consents-stay-remembered: [1-7] of \d+ blue keys are missing on green/);
    expect(v.invariants.find((i) => i.name === 'remembered-consents-stay-remembered')!.offending).toBeGreaterThan(0);
  });

  it('refuses to validate a green whose migrate step failed (exit 3), naming the step, and changes nothing', async () => {
    const pair = await createDbPair('truth_half');
    pairs.push(pair);
    await seedBlue(pair, { rows: 300, seed: 26, dirty: [] });
    const cfg = writeConfig(pair, { migrations: { kind: 'pop', dir: migrationsWith({ '20991231000000000000_boom.postgres.up.sql': 'SELECT 1 / 0;\n' }) } });
    const applied = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(applied.code, applied.stderr).not.toBe(0);
    expect(JSON.parse(applied.stdout).steps.find((s: { name: string }) => s.name === 'migrate').status).toBe('failed');
    const before = { blue: await fingerprint(pair.blueDsn), green: await fingerprint(pair.greenDsn) };
    const r = await runCli(['validate', '--config', cfg.file], cfg.env);
    expect(r.code, r.stdout + r.stderr).toBe(3);
    const said = r.stdout + r.stderr;
    expect(said).not.toContain('passed');
    expect(said).toMatch(/has not finished its migrations; step migrate is unfinished \(unit migration:20991231000000000000 failed: division by zero/);
    expect(said).toContain('migrate apply --resume');
    const json = JSON.parse((await runCli(['validate', '--config', cfg.file, '--json'], cfg.env)).stdout);
    expect(json).toMatchObject({ ok: false, exitCode: 3, error: { unfinishedSteps: ['migrate'] } });
    expect(await fingerprint(pair.blueDsn)).toBe(before.blue);
    expect(await fingerprint(pair.greenDsn)).toBe(before.green);
  });
});
