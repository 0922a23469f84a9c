// Pre-flight that is complete: a COALESCE-wrapped cast in an INSERT ... SELECT into a table the
// migrations create is derived statically (a cleanup rule); a conversion done by a SQL function an
// earlier migration creates, which no static check sees, is found by evaluating the statement row by
// row (src/preflight/) and named by `plan` with file:line, SQLSTATE, row count and keys; `apply`
// refuses it before any migration runs and takes it once the suggested rule is configured; and a data
// error that still happens during apply names its rows and carries a cleanup rule to paste.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDbPair, fingerprint, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

interface PlanAction { id: string; sentence: string; facts?: Record<string, any> }

describe('pre-flight on shapes a bare-cast check misses', () => {
  let pair: DbPair;
  let plan: { steps: { step: string; actions: PlanAction[] }[] };
  let blueBefore: string;

  // No engine knowledge: the hydra engine escapes a quoted contact list in place (nothing would be
  // left for the pre-flight to find), and this is about what the mechanisms find on their own.
  const NO_ENGINE = { profile: 'none' };

  beforeAll(async () => {
    pair = await createDbPair('prefl');
    await seedBlue(pair, { rows: 400, seed: 11, dirty: [] });
    await withClient(pair.blueDsn, async (c) => {
      await c.query(`UPDATE hydra_client SET metadata = '{"team": oops' WHERE pk IN (1, 2)`);
      await c.query(`UPDATE hydra_client SET contacts = 'ops@example.test|"quoted"@example.test' WHERE pk = 3`);
    });
    blueBefore = await fingerprint(pair.blueDsn);
    const cfg = writeConfig(pair, NO_ENGINE);
    const r = await runCli(['plan', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stderr).toBe(0);
    plan = JSON.parse(r.stdout);
  });
  afterAll(async () => pair?.drop());

  const finding = (file: string): Record<string, any> | undefined =>
    plan.steps.find((s) => s.step === 'migrate')!.actions.find((a) => a.id.startsWith(`preflight:${file}`))?.facts;

  it('derives a COALESCE-wrapped cast inside INSERT ... SELECT into a created table statically, as a cleanup rule with count and keys', async () => {
    const rule = plan.steps.find((s) => s.step === 'cleanup')!.actions.find((a) => a.id === 'rule:ddl-json:hydra_client:11');
    expect(rule?.facts).toEqual(expect.objectContaining({ table: 'public.hydra_client', rows: 2, sample: [{ pk: 1 }, { pk: 2 }] }));
    expect(rule!.sentence).toContain('20211011000014000000_client_settings_table.postgres.up.sql:11');
    // Taken by cleanup, so the row pre-flight does not list the class a second time.
    expect(finding('20211011000014000000')).toBeUndefined();
    expect(await fingerprint(pair.blueDsn)).toBe(blueBefore);
  });

  it('names a conversion done by a SQL function an earlier migration creates', () => {
    const f = finding('20211011000016000000_client_contacts_jsonb.postgres.up.sql:4');
    expect(f).toBeDefined();
    expect(f!.sqlstate).toBe('22P02');
    expect(f!.rows).toBe(1);
    expect(f!.sample).toEqual([{ pk: 3 }]);
    expect(f!.expression).toContain('hydra_pipe_list_to_jsonb(contacts)');
    expect(f!.suggestedRule).toEqual(expect.objectContaining({ table: 'public.hydra_client', where: `(t."pk") IN (('3'))` }));
  });

  it('refuses apply with exit 5 before any migration runs, with the rules to paste in the hint', async () => {
    const cfg = writeConfig(pair, NO_ENGINE);
    const r = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stdout + r.stderr).toBe(5);
    const out = JSON.parse(r.stdout);
    expect(out.error.name).toBe('FindingsError');
    expect(out.error.message).toContain('20211011000016000000_client_contacts_jsonb.postgres.up.sql:4: 1 public.hydra_client row(s), 22P02');
    expect(out.error.hint).toContain('"where":"(t.\\"pk\\") IN ((\'3\'))"');
    expect(out.steps.map((s: { name: string; status: string }) => `${s.name}:${s.status}`)).toContain('migrate:failed');
    await withClient(pair.greenDsn, async (c) => {
      const { rows } = await c.query(`SELECT to_regclass('public.hydra_oauth2_flow') IS NULL AS untouched`);
      expect(rows[0].untouched).toBe(true);
    });
  });

  it('goes through once the suggested rule is in the config, quarantining exactly the rows of both shapes', async () => {
    const rules = plan.steps.find((s) => s.step === 'migrate')!.actions.filter((a) => a.facts?.suggestedRule).map((a) => a.facts!.suggestedRule);
    const cfg = writeConfig(pair, { ...NO_ENGINE, cleanup: { rules } });
    const r = await runCli(['apply', '--restart', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    await withClient(pair.greenDsn, async (c) => {
      const { rows } = await c.query(`SELECT row ->> 'pk' AS pk FROM bluegreen_quarantine.hydra_client ORDER BY 1`);
      expect(rows.map((x) => x.pk)).toEqual(['1', '2', '3']);
      const settings = await c.query('SELECT count(*)::int AS n FROM hydra_client_settings');
      expect(settings.rows[0].n).toBeGreaterThan(0);
    });
  });
});

describe('a data error the pre-flight cannot see', () => {
  let pair: DbPair;
  let dir: string;

  beforeAll(async () => {
    pair = await createDbPair('dataerr');
    await seedBlue(pair, { rows: 200, seed: 3, dirty: [] });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-dataerr-'));
    // A parent table the migrations create and fill with half the clients, then a foreign key onto it:
    // the key's parent does not exist on blue, so nothing can check it before the migrations run.
    fs.writeFileSync(path.join(dir, '20990101000001000000_partner_clients.postgres.up.sql'),
      'CREATE TABLE partner_clients (id varchar(255) PRIMARY KEY);\nINSERT INTO partner_clients SELECT id FROM hydra_client WHERE pk % 2 = 0;\n');
    fs.writeFileSync(path.join(dir, '20990101000002000000_partner_fk.postgres.up.sql'),
      'ALTER TABLE hydra_oauth2_access ADD CONSTRAINT access_partner_fk FOREIGN KEY (client_id) REFERENCES partner_clients (id);\n');
  });
  afterAll(async () => {
    await pair?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('names the row Postgres reports, the class, and a ready-to-paste cleanup rule', async () => {
    const cfg = writeConfig(pair, { profile: 'none', migrations: { kind: 'pop', dir } });
    const r = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stdout + r.stderr).toBe(4);
    const err = JSON.parse(r.stdout).error;
    expect(err.sqlstate).toBe('23503');
    expect(err.message).toContain('class: reference to a missing row (foreign key violation); rows of public.hydra_oauth2_access with (client_id) = (');
    expect(err.suggestedRule.table).toBe('public.hydra_oauth2_access');
    expect(err.suggestedRule.where).toMatch(/^t\."client_id" = '.+'$/);
    expect(err.hint).toContain('ready to paste into cleanup.rules: {"name":"data-error-23503-access-partner-fk"');
  });
});

describe('pre-flight through a CASE', () => {
  let pair: DbPair;
  let quoted: number;
  beforeAll(async () => {
    pair = await createDbPair('prefl_case');
    await seedBlue(pair, { rows: 200, seed: 12, dirty: [] });
    quoted = await withClient(pair.blueDsn, async (c) => (await c.query(`UPDATE hydra_client SET redirect_uris = 'https://app.test/cb|https://app.test/"x"' WHERE pk = (SELECT max(pk) FROM hydra_client) RETURNING pk`)).rows[0].pk as number);
  });
  afterAll(async () => pair?.drop());

  it('names a cast of a CASE expression (ALTER ... TYPE jsonb USING (CASE ... END)::jsonb) with the file and the row, without engine knowledge', async () => {
    const cfg = writeConfig(pair, { profile: 'none' });
    const r = await runCli(['plan', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stderr).toBe(0);
    const plan = JSON.parse(r.stdout) as { steps: { step: string; actions: PlanAction[] }[] };
    // Named by one of the two mechanisms: a rule derived from the DDL, or the row-by-row pre-flight.
    const named = plan.steps.flatMap((s) => s.actions).filter((a) => `${a.id} ${a.sentence}`.includes('20211011000011000000'));
    expect(named.map((a) => a.id), JSON.stringify(named)).not.toEqual([]);
    const finding = named.find((a) => a.facts?.sample);
    expect(finding?.facts).toEqual(expect.objectContaining({ table: 'public.hydra_client', rows: 1, sample: [{ pk: quoted }] }));
  });
});
