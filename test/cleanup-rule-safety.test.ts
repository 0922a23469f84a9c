// A cleanup rule's `where` (and every other SQL fragment from the config) is one read-only expression:
// statements, comments, side-effecting or volatile calls are a config error (exit 2) before anything
// is written, and whatever is evaluated on blue runs in a READ ONLY transaction (issue K, defect 1).
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HYDRA_CLEANUP_RULES } from '../src/engines/hydra/cleanup.ts';
import { checkSqlFragment } from '../src/config/sql-fragment.ts';
import { withEphemeralHelpers } from '../src/db/quarantine.ts';
import { HYDRA_INVARIANTS } from '../src/validate/hydra-invariants.ts';
import { checkInvariant } from '../src/validate/invariants.ts';
import { createDbPair, fingerprint, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

describe('the SQL fragment checker', () => {
  it("accepts the Hydra profile's own rules, with their EXISTS sub-queries and the is_json helper", () => {
    for (const rule of HYDRA_CLEANUP_RULES) expect(checkSqlFragment(rule.where, 'predicate'), rule.name).toMatchObject({ ok: true });
    expect(checkSqlFragment(HYDRA_CLEANUP_RULES.find((r) => r.name === 'invalid-json')!.where, 'predicate')).toMatchObject({
      functions: [{ schema: 'bluegreen_quarantine', name: 'is_json' }, { schema: 'bluegreen_quarantine', name: 'is_json' }],
    });
  });

  it("accepts the Hydra invariants' queries and quarantine keys", () => {
    for (const inv of HYDRA_INVARIANTS) {
      for (const q of [inv.blue, inv.green]) if (q) expect(checkSqlFragment(q, 'query'), inv.name).toMatchObject({ ok: true });
      for (const q of inv.quarantine) expect(checkSqlFragment(q.key, 'expression'), inv.name).toMatchObject({ ok: true });
    }
  });

  it.each([
    ["t.id = ''; COMMIT; DROP TABLE public.x; --", "contains ';'"],
    ['1=1; drop table public.hydra_jwk; --', "contains ';'"],
    ["t.id = '' --", 'contains a comment'],
    ["t.id = '' /* AND false */", 'contains a comment'],
    ["nextval('public.probe_seq') < 0", 'calls nextval()'],
    ["pg_catalog.set_config('search_path', 'x', false) = ''", 'calls set_config()'],
    ['pg_try_advisory_lock(1)', 'calls pg_try_advisory_lock()'],
    ["EXISTS (SELECT query_to_xml('DROP TABLE x', true, true, ''))", 'calls query_to_xml()'],
    ['EXISTS (SELECT 1 FROM public.hydra_client c FOR UPDATE)', 'row locks'],
    ['EXISTS (WITH d AS (DELETE FROM public.x RETURNING 1) SELECT 1 FROM d)', 'Delete statement'],
    ['true ORDER BY 1', 'adds clauses'],
    ['true UNION SELECT 1', 'adds clauses'],
    ['1=1) OR (1=1', 'does not parse'],
    ['t.id = (1', 'does not parse'],
    ['   ', 'is empty'],
  ])('refuses the predicate %j', (where, problem) => {
    const verdict = checkSqlFragment(where, 'predicate');
    expect(verdict.ok).toBe(false);
    expect(verdict.ok ? '' : verdict.problem).toContain(problem);
  });

  it("keeps ';' and '--' inside string literals, which are data, not SQL", () => {
    expect(checkSqlFragment("t.subject IN (';', '--', '/* */')", 'predicate')).toMatchObject({ ok: true });
  });

  it('refuses a query that is not exactly one read-only SELECT', () => {
    expect(checkSqlFragment('SELECT 1; DROP TABLE x', 'query')).toMatchObject({ ok: false, problem: 'holds 2 statements' });
    expect(checkSqlFragment('DELETE FROM x RETURNING id', 'query')).toMatchObject({ ok: false });
    expect(checkSqlFragment('SELECT * INTO y FROM x', 'query')).toMatchObject({ ok: false });
    expect(checkSqlFragment('SELECT id FROM k WHERE id = ANY($1::text[])', 'query')).toMatchObject({ ok: true });
  });
});

describe("a cleanup rule's where cannot change blue or green", () => {
  let pair: DbPair;
  let before: { blue: string; green: string };
  let seqBefore: string;

  const sequenceValue = (): Promise<string> => withClient(pair.blueDsn, async (c) => (await c.query<{ v: string }>('SELECT last_value::text || is_called::text AS v FROM public.probe_seq')).rows[0]!.v);

  beforeAll(async () => {
    pair = await createDbPair('rulesafe');
    await seedBlue(pair, { rows: 50, seed: 3, dirty: [] });
    await withClient(pair.blueDsn, (c) =>
      c.query(`CREATE TABLE public.x (id int); CREATE SEQUENCE public.probe_seq;
               CREATE FUNCTION public.writes_x() RETURNS boolean LANGUAGE sql VOLATILE AS $$ INSERT INTO public.x VALUES (1) RETURNING true $$;`),
    );
    before = { blue: await fingerprint(pair.blueDsn), green: await fingerprint(pair.greenDsn) };
    seqBefore = await sequenceValue();
  });
  afterAll(async () => pair?.drop());

  async function expectUnchanged(): Promise<void> {
    expect(await fingerprint(pair.blueDsn)).toBe(before.blue);
    expect(await fingerprint(pair.greenDsn)).toBe(before.green);
    expect(await sequenceValue()).toBe(seqBefore);
    await withClient(pair.blueDsn, async (c) => {
      expect((await c.query(`SELECT 1 FROM pg_namespace WHERE nspname = 'bluegreen_quarantine'`)).rowCount).toBe(0);
      expect((await c.query('SELECT count(*)::int AS n FROM public.x')).rows[0].n).toBe(0);
    });
  }

  const configWith = (where: string) => writeConfig(pair, { cleanup: { rules: [{ name: 'i', table: 'public.hydra_client', where, reason: 'x' }] } });
  const COMMANDS = [['plan'], ['apply'], ['apply', '--dry-run'], ['apply', '--in-place']] as const;

  // Refused by the parser at config load: no connection is opened.
  const AT_LOAD = [
    ["t.id = ''; COMMIT; DROP TABLE public.x; --", "contains ';'"],
    ['1=1; drop table public.hydra_jwk; --', "contains ';'"],
    ["t.id = '' --", 'contains a comment'],
    ["t.id = '' /* AND false */", 'contains a comment'],
    ["nextval('public.probe_seq') < 0", 'calls nextval()'],
  ] as const;

  for (const [where, problem] of AT_LOAD) {
    for (const cmd of COMMANDS) {
      it(`refuses where ${JSON.stringify(where)} at config check with exit 2 through migrate ${cmd.join(' ')}`, async () => {
        const cfg = configWith(where);
        const r = await runCli([...cmd, '--config', cfg.file], cfg.env);
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr).toContain('cleanup.rules.0.where: cleanup rule "i": where');
        expect(r.stderr).toContain(problem);
        expect(r.stderr).toContain('write it as one boolean expression over alias t');
        await expectUnchanged();
      });
    }
    it(`makes doctor --config report where ${JSON.stringify(where)} as a config problem with exit 2`, async () => {
      const cfg = configWith(where);
      const r = await runCli(['doctor', '--config', cfg.file], cfg.env);
      expect(r.code).toBe(2);
      expect(r.stdout + r.stderr).toContain('cleanup rule "i"');
      expect(r.stdout + r.stderr).toContain(problem);
      await expectUnchanged();
    });
  }

  // Well-formed, but blue's catalog says the function may write or returns a set: refused once connected, before any write.
  const ON_BLUE = [
    ['public.writes_x()', 'writes_x()', 'which is VOLATILE'],
    ['random() < 2', 'random()', 'which is VOLATILE'],
    ['EXISTS (SELECT 1 FROM generate_series(1, 2) g)', 'generate_series(', 'set-returning'],
  ] as const;

  for (const [where, fn, why] of ON_BLUE) {
    for (const cmd of COMMANDS) {
      it(`refuses where ${JSON.stringify(where)} after reading blue's catalog with exit 2 through migrate ${cmd.join(' ')}`, async () => {
        const cfg = configWith(where);
        const r = await runCli([...cmd, '--config', cfg.file], cfg.env);
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr).toContain('cleanup.rules.0.where: cleanup rule "i": where calls');
        expect(r.stderr).toContain(fn);
        expect(r.stderr).toContain(why);
        expect(r.stderr).toContain('use only IMMUTABLE or STABLE functions');
        await expectUnchanged();
      });
    }
  }

  it('evaluates rule SQL on blue in a READ ONLY transaction that leaves no helper schema behind', async () => {
    const db = new pg.Client({ connectionString: pair.blueDsn });
    await db.connect();
    try {
      const err = await withEphemeralHelpers(db, async () => {
        expect((await db.query(`SELECT bluegreen_quarantine.is_json('{}') AS ok`)).rows[0].ok).toBe(true);
        return db.query('INSERT INTO public.x VALUES (1)').then(() => null, (e: { code?: string }) => e);
      });
      expect(err?.code).toBe('25006');
    } finally {
      await db.end();
    }
    await expectUnchanged();
  });

  it('runs invariant SQL in a READ ONLY transaction, so a function in it that writes is refused', async () => {
    const blue = new pg.Client({ connectionString: pair.blueDsn });
    const green = new pg.Client({ connectionString: pair.greenDsn });
    await blue.connect();
    await green.connect();
    try {
      const spec = { name: 'writes', description: '', blue: 'SELECT public.writes_x()::text', green: 'SELECT 1 WHERE false', relation: 'blue-subset-of-green' as const, quarantine: [] };
      await expect(checkInvariant(blue, green, spec, { captureStart: new Date().toISOString(), drained: false })).rejects.toThrow(/read-only transaction/);
      const honest = await checkInvariant(blue, green, { ...spec, blue: 'SELECT 1 WHERE false' }, { captureStart: new Date().toISOString(), drained: false });
      expect(honest.passed).toBe(true);
    } finally {
      await blue.end();
      await green.end();
    }
    await expectUnchanged();
  });

  it('finds the helper is_json IMMUTABLE, so the profile rule that calls it passes the volatility check', async () => {
    const cfg = writeConfig(pair);
    const r = await runCli(['plan', '--config', cfg.file], cfg.env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('cleanup:');
    await expectUnchanged();
  });
});
