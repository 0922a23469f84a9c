// A green that holds anything of somebody else's is refused before either database is written, by
// every command that would use it, and `--restart` never drops it; a green that carries our marker
// is wiped back to exactly what it held before our first write.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../src/db/connect.ts';
import { inventory, wipeGreen, writeMarker } from '../src/db/green.ts';
import { StateError } from '../src/errors.ts';
import { createDbPair, fingerprint, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

const APP_OBJECTS = `
CREATE SCHEMA app;
CREATE SEQUENCE app.s;
CREATE FUNCTION app.keepme() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE TYPE app.mood AS ENUM ('ok', 'sad');`;

const pairs: DbPair[] = [];
afterAll(async () => {
  for (const p of pairs) await p.drop();
});

/** A seeded blue and a green holding `greenSql`, with fingerprints of both taken after. */
async function setup(prefix: string, greenSql: string): Promise<{ pair: DbPair; cfg: ReturnType<typeof writeConfig>; unchanged: () => Promise<void> }> {
  const pair = await createDbPair(prefix);
  pairs.push(pair);
  await seedBlue(pair, { rows: 200, seed: 3, dirty: [] });
  await withClient(pair.greenDsn, (c) => c.query(greenSql));
  const before = { blue: await fingerprint(pair.blueDsn), green: await fingerprint(pair.greenDsn) };
  const unchanged = async (): Promise<void> => {
    expect(await fingerprint(pair.blueDsn)).toBe(before.blue);
    expect(await fingerprint(pair.greenDsn)).toBe(before.green);
  };
  return { pair, cfg: writeConfig(pair), unchanged };
}

describe('a green holding objects migrate did not create', () => {
  let env: Awaited<ReturnType<typeof setup>>;
  beforeAll(async () => {
    env = await setup('gt_app', APP_OBJECTS);
  });

  it('is refused by apply, apply --restart and apply --dry-run with exit 3, the objects listed and the fix named, and nothing written', async () => {
    for (const flags of [[], ['--restart'], ['--dry-run']]) {
      const r = await runCli(['apply', '--config', env.cfg.file, ...flags], env.cfg.env);
      expect(r.code, `${flags.join(' ')}: ${r.stderr}`).toBe(3);
      expect(r.stderr).toContain('green is not empty and was not created by migrate');
      for (const name of ['schema (1): app', 'sequence (1): app.s', 'function (1): app.keepme()', 'type (1): app.mood']) expect(r.stderr).toContain(name);
      expect(r.stderr).toContain('new, empty database');
      await env.unchanged();
    }
    const kept = await withClient(env.pair.greenDsn, async (c) => (await c.query<{ v: number; s: string }>(`SELECT app.keepme() AS v, nextval('app.s')::text AS s`)).rows[0]);
    expect(kept).toEqual({ v: 1, s: '1' });
  });

  it('fails plan and doctor on the green-target preflight check with exit 3', async () => {
    const before = await fingerprint(env.pair.greenDsn);
    const plan = await runCli(['plan', '--config', env.cfg.file], env.cfg.env);
    expect(plan.code).toBe(3);
    expect(plan.stderr).toContain('green-target: green is not empty');
    expect(plan.stderr).toContain('app.keepme()');
    const doctor = await runCli(['doctor', '--config', env.cfg.file, '--json'], env.cfg.env);
    expect(doctor.code).toBe(3);
    const check = JSON.parse(doctor.stdout).checks.find((c: { id: string }) => c.id === 'green-target');
    expect(check).toMatchObject({ ok: false, detail: expect.stringContaining('type (1): app.mood'), hint: expect.stringContaining('new, empty database') });
    expect(await fingerprint(env.pair.greenDsn)).toBe(before);
  });
});

describe('a green with a view named like a table of blue', () => {
  it('is refused at preflight before blue or green is written, and --restart leaves the view', async () => {
    const env = await setup('gt_view', 'CREATE VIEW public.hydra_client AS SELECT 1 AS id');
    for (const flags of [[], ['--restart']]) {
      const r = await runCli(['apply', '--config', env.cfg.file, '--json', ...flags], env.cfg.env);
      expect(r.code).toBe(3);
      const doc = JSON.parse(r.stdout);
      expect(doc.error.message).toContain('view (1): public.hydra_client');
      expect(doc.error.hint).toContain('new, empty database');
      await env.unchanged();
    }
    const still = await withClient(env.pair.greenDsn, async (c) => (await c.query(`SELECT relkind::text AS k FROM pg_class WHERE oid = 'public.hydra_client'::regclass`)).rows);
    expect(still).toEqual([{ k: 'v' }]);
  });
});

describe('the marker and its baseline', () => {
  it('refuses the first write when an object appeared on green after validation, writing no marker', async () => {
    const pair = await createDbPair('gt_late');
    pairs.push(pair);
    const green = await connect('green', pair.greenDsn);
    try {
      await green.query('CREATE FUNCTION public.late() RETURNS int LANGUAGE sql AS $$SELECT 1$$');
      const err = await writeMarker(green, 'run-1', null).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StateError);
      expect((err as StateError).message).toContain('function (1): public.late()');
      expect((await green.query(`SELECT to_regnamespace('bluegreen_green') AS n`)).rows[0].n).toBeNull();
    } finally {
      await green.end();
    }
  });

  it('lets a wipe drop only what came after the marker: schemas, extensions and objects in public, keeping public itself', async () => {
    const pair = await createDbPair('gt_wipe');
    pairs.push(pair);
    const green = await connect('green', pair.greenDsn);
    try {
      const acl = async (): Promise<unknown> => (await green.query(`SELECT nspowner::regrole::text AS owner, nspacl::text AS acl FROM pg_namespace WHERE nspname = 'public'`)).rows[0];
      const publicBefore = await acl();
      const fresh = await inventory(green);
      await writeMarker(green, 'run-1', null);
      await green.query(`${APP_OBJECTS}
        CREATE EXTENSION "uuid-ossp";
        CREATE TABLE public.t (id serial PRIMARY KEY, m app.mood);
        CREATE VIEW public.v AS SELECT * FROM public.t;
        CREATE DOMAIN public.d AS int;
        CREATE SCHEMA bluegreen_quarantine; CREATE TABLE bluegreen_quarantine.x (id int);`);
      await wipeGreen(green);
      expect(await inventory(green)).toEqual(fresh);
      expect(await acl()).toEqual(publicBefore);
      const ours = await green.query(`SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bluegreen%'`);
      expect(ours.rows).toEqual([]);
    } finally {
      await green.end();
    }
  });

  it('refuses to wipe a green whose marker has no baseline (an older migrate wrote it), dropping nothing', async () => {
    const pair = await createDbPair('gt_legacy');
    pairs.push(pair);
    const green = await connect('green', pair.greenDsn);
    try {
      await writeMarker(green, 'run-1', null);
      await green.query(`DROP TABLE bluegreen_green.baseline; ${APP_OBJECTS}`);
      const before = await fingerprint(pair.greenDsn);
      const err = await wipeGreen(green).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StateError);
      expect((err as StateError).hint).toContain('new, empty database');
      expect(await fingerprint(pair.greenDsn)).toBe(before);
    } finally {
      await green.end();
    }
  });
});
