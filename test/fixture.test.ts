// The Hydra-shaped fixture is what every other test stands on, so it gets proved first: the seed is
// deterministic, clean data takes the whole v2 migration set, each dirty class breaks exactly the
// migration it is meant to break, and removing what the cleanup rules (or the catalog's foreign
// keys) find, with the rows that depend on it, is enough to make the set apply.

import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HYDRA_CLEANUP_RULES } from '../src/engines/hydra/cleanup.ts';
import { startCluster, type LocalCluster } from '../support/embedded.ts';
import { ident } from '../src/db/sql.ts';
import { HYDRA_REPAIRS } from '../src/engines/hydra/repairs.ts';
import { runRepair } from '../src/engines/repair.ts';
import { installQuarantine } from '../src/db/quarantine.ts';
import {
  DIRTY_CLASSES,
  HYDRA_V2_MIGRATIONS_DIR,
  loadHydraV1Schema,
  seedHydraV1,
  type DirtyClass,
  type DirtyRow,
  type SeedOptions,
  type SeedResult,
} from '../support/fixture/seed.ts';

const ROWS = 2000;

/** Which migration each dirty class breaks, and with which SQLSTATE. */
const BREAKS: Record<DirtyClass, { migration: string; sqlstate: string }> = {
  'orphan-client': { migration: '20211011000005000000_token_client_fk_composite', sqlstate: '23503' },
  'orphan-challenge': { migration: '20211011000008000000_flow_token_fks', sqlstate: '23503' },
  'duplicate-consent': { migration: '20211011000007000000_flow_fill', sqlstate: '23505' },
  'unhandled-login': { migration: '20211011000007000000_flow_fill', sqlstate: '23502' },
  'invalid-json': { migration: '20211011000007000000_flow_fill', sqlstate: '22P02' },
  'pipe-quote': { migration: '20211011000011000000_client_lists_jsonb', sqlstate: '22P02' },
};

let cluster: LocalCluster;
const open: pg.Client[] = [];
let databases = 0;

beforeAll(async () => {
  cluster = await startCluster({ name: 'fixture' });
}, 120_000);

afterAll(async () => {
  await Promise.all(open.map((c) => c.end().catch(() => {})));
  await cluster?.stop();
});

async function freshDatabase(label: string): Promise<pg.Client> {
  const name = `fx_${label.replace(/[^a-z0-9]/g, '_')}_${++databases}`;
  const admin = new pg.Client({ connectionString: cluster.dsn() });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${ident(name)}`);
  await admin.end();
  const db = new pg.Client({ connectionString: cluster.dsn(name) });
  db.on('error', () => {});
  await db.connect();
  open.push(db);
  return db;
}

async function seeded(label: string, opts: Partial<SeedOptions>): Promise<{ db: pg.Client; result: SeedResult }> {
  const db = await freshDatabase(label);
  await loadHydraV1Schema(db);
  const result = await seedHydraV1(db, { rows: ROWS, seed: 1, dirty: [], ...opts });
  return { db, result };
}

// --- a tiny pop-style runner, enough to prove the migration set -----------------------------------

interface Migration {
  version: string;
  /** `<version>_<name>`, the id used in assertions. */
  id: string;
  file: string;
  autocommit: boolean;
}

/** Pending-able migrations in version order; for each version the `.postgres.` file wins over the generic one. */
function migrations(): Migration[] {
  const byVersion = new Map<string, { m: Migration; postgres: boolean }>();
  for (const file of fs.readdirSync(HYDRA_V2_MIGRATIONS_DIR)) {
    const m = /^(\d{20})_([a-z0-9_]+)(\.postgres)?(\.autocommit)?\.up\.sql$/.exec(file);
    if (!m) continue;
    const [, version = '', name = '', postgres, autocommit] = m;
    const seen = byVersion.get(version);
    if (seen && (seen.postgres || !postgres)) continue;
    byVersion.set(version, {
      m: { version, id: `${version}_${name}`, file: path.join(HYDRA_V2_MIGRATIONS_DIR, file), autocommit: autocommit !== undefined },
      postgres: postgres !== undefined,
    });
  }
  return [...byVersion.values()].map((v) => v.m).sort((a, b) => a.version.localeCompare(b.version));
}

interface RunResult {
  applied: string[];
  failed?: { migration: string; sqlstate: string; message: string };
}

/** Applies every migration not in schema_migration, in version order; each in a transaction unless .autocommit. */
async function applyV2(db: pg.Client): Promise<RunResult> {
  const done = new Set((await db.query<{ version: string }>('SELECT version FROM schema_migration')).rows.map((r) => r.version));
  const applied: string[] = [];
  for (const m of migrations()) {
    if (done.has(m.version)) continue;
    const sql = fs.readFileSync(m.file, 'utf8');
    try {
      if (m.autocommit) {
        await db.query(sql);
        await db.query('INSERT INTO schema_migration (version) VALUES ($1)', [m.version]);
      } else {
        await db.query('BEGIN');
        await db.query(sql);
        await db.query('INSERT INTO schema_migration (version) VALUES ($1)', [m.version]);
        await db.query('COMMIT');
      }
    } catch (err) {
      if (!m.autocommit) await db.query('ROLLBACK');
      const e = err as { code?: string; message?: string };
      return { applied, failed: { migration: m.id, sqlstate: e.code ?? '', message: e.message ?? '' } };
    }
    applied.push(m.id);
  }
  return { applied };
}

// --- catalog helpers -------------------------------------------------------------------------------

async function primaryKey(db: pg.Client, table: string): Promise<string[]> {
  const r = await db.query<{ col: string }>(
    `SELECT a.attname AS col FROM pg_index i
     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY k.ord`,
    [table],
  );
  return r.rows.map((x) => x.col);
}

/** md5 of every public table's rows in primary-key order (whole-row order where there is none). */
async function tableChecksums(db: pg.Client): Promise<Record<string, string>> {
  const tables = await db.query<{ t: string }>(
    `SELECT format('%I.%I', schemaname, tablename) AS t FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`,
  );
  const out: Record<string, string> = {};
  for (const { t } of tables.rows) {
    const pk = await primaryKey(db, t);
    const order = pk.length > 0 ? pk.map((c) => `r.${ident(c)}`).join(', ') : 'r::text';
    const res = await db.query<{ sum: string }>(`SELECT md5(coalesce(string_agg(r::text, E'\\n' ORDER BY ${order}), '')) AS sum FROM ${t} r`);
    out[t] = res.rows[0]?.sum ?? '';
  }
  return out;
}

interface ForeignKey {
  child: string;
  parent: string;
  childCols: string[];
  parentCols: string[];
}

async function foreignKeys(db: pg.Client): Promise<ForeignKey[]> {
  const r = await db.query<{ child: string; parent: string; child_cols: string[]; parent_cols: string[] }>(
    `SELECT format('%I.%I', cn.nspname, cc.relname) AS child, format('%I.%I', pn.nspname, pc.relname) AS parent,
       array_agg(ca.attname::text ORDER BY k.ord) AS child_cols, array_agg(pa.attname::text ORDER BY k.ord) AS parent_cols
     FROM pg_constraint c
     JOIN pg_class cc ON cc.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cc.relnamespace
     JOIN pg_class pc ON pc.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
     CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(ck, pk, ord)
     JOIN pg_attribute ca ON ca.attrelid = c.conrelid AND ca.attnum = k.ck
     JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = k.pk
     WHERE c.contype = 'f' AND cn.nspname = 'public'
     GROUP BY c.oid, cn.nspname, cc.relname, pn.nspname, pc.relname ORDER BY 1, 2`,
  );
  return r.rows.map((x) => ({ child: x.child, parent: x.parent, childCols: x.child_cols, parentCols: x.parent_cols }));
}

/** SQL predicate over alias `t` of fk.child: the row's key is set and has no parent. */
function orphanPredicate(fk: ForeignKey): string {
  const set = fk.childCols.map((c) => `t.${ident(c)} IS NOT NULL`).join(' AND ');
  const match = fk.childCols.map((c, i) => `p.${ident(fk.parentCols[i] ?? '')} = t.${ident(c)}`).join(' AND ');
  return `${set} AND NOT EXISTS (SELECT 1 FROM ${fk.parent} p WHERE ${match})`;
}

/** Primary keys (as `table key-json`) of the rows of `table` matching `where` over alias `t`. */
async function rowsMatching(db: pg.Client, table: string, where: string): Promise<string[]> {
  const pk = await primaryKey(db, table);
  const cols = pk.map((c) => `t.${ident(c)}::text AS ${ident(c)}`).join(', ');
  const r = await db.query<Record<string, string>>(`SELECT ${cols} FROM ${table} t WHERE ${where}`);
  return r.rows.map((row) => `${table} ${JSON.stringify(Object.fromEntries(pk.map((c) => [c, row[c]])))}`);
}

const label = (d: DirtyRow): string => `${d.table} ${JSON.stringify(d.key)}`;

/**
 * A rule's predicate on this database: an engine rewrite declares every column a Hydra release has,
 * and the fixture has only some (cleanup leaves the others out the same way); null when it has none.
 */
async function whereHere(db: pg.Client, rule: (typeof HYDRA_CLEANUP_RULES)[number]): Promise<string | null> {
  if (!rule.rewrite) return rule.where;
  const [schema, table] = rule.table.split('.');
  const { rows } = await db.query(`SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2`, [schema, table]);
  const have = new Set(rows.map((r) => r.column_name));
  const columns = rule.rewrite.columns.filter((c) => have.has(c.column));
  return columns.length ? columns.map((c) => `(${c.where})`).join(' OR ') : null;
}

/** Deletes the rows a class's cleanup finds; ON DELETE CASCADE takes their dependents along. */
async function cleanUp(db: pg.Client, dirtyClass: DirtyClass): Promise<number> {
  let removed = 0;
  if (dirtyClass === 'orphan-client' || dirtyClass === 'orphan-challenge') {
    for (const fk of await foreignKeys(db)) {
      removed += (await db.query(`DELETE FROM ${fk.child} t WHERE ${orphanPredicate(fk)}`)).rowCount ?? 0;
    }
  } else {
    for (const rule of HYDRA_CLEANUP_RULES.filter((r) => r.name === dirtyClass)) {
      const where = await whereHere(db, rule);
      if (where) removed += (await db.query(`DELETE FROM ${rule.table} t WHERE ${where}`)).rowCount ?? 0;
    }
  }
  return removed;
}

/** The function the invalid-json rule calls; the tool creates it on green, the test creates its own. */
async function createIsJson(db: pg.Client): Promise<void> {
  await db.query(`CREATE SCHEMA IF NOT EXISTS bluegreen_quarantine`);
  await db.query(`CREATE OR REPLACE FUNCTION bluegreen_quarantine.is_json(value text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE AS $$
    BEGIN
      PERFORM value::jsonb;
      RETURN true;
    EXCEPTION WHEN others THEN
      RETURN false;
    END $$`);
}

async function count(db: pg.Client, sql: string): Promise<number> {
  const r = await db.query<{ n: string }>(sql);
  return Number(r.rows[0]?.n ?? 0);
}

// --- the proofs ------------------------------------------------------------------------------------

describe('the Hydra-shaped fixture', () => {
  it('gives byte-identical data for the same seed and different data for another seed', async () => {
    const a = await seeded('same_a', { seed: 7, dirty: DIRTY_CLASSES });
    const b = await seeded('same_b', { seed: 7, dirty: DIRTY_CLASSES });
    const c = await seeded('other', { seed: 8, dirty: DIRTY_CLASSES });
    const [sumA, sumB, sumC] = await Promise.all([tableChecksums(a.db), tableChecksums(b.db), tableChecksums(c.db)]);

    expect(Object.keys(sumA)).toContain('public.hydra_oauth2_access');
    expect(sumB).toEqual(sumA);
    expect(b.result).toEqual(a.result);
    for (const table of ['public.hydra_client', 'public.hydra_oauth2_access', 'public.hydra_oauth2_refresh', 'public.hydra_oauth2_consent_request']) {
      expect(sumC[table], table).not.toEqual(sumA[table]);
    }
  }, 120_000);

  it('makes the requested number of tokens, clients and flows, with some tokens inactive', async () => {
    const { db, result } = await seeded('sizes', { seed: 3 });
    expect(result).toEqual({ tokens: ROWS, clients: ROWS / 100, dirty: [] });
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_refresh')).toBe(ROWS);
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_authentication_request')).toBe(ROWS / 2);
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_access WHERE NOT active')).toBeGreaterThan(0);
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_refresh WHERE NOT active')).toBeGreaterThan(0);
    expect(await count(db, "SELECT count(*) AS n FROM hydra_client WHERE redirect_uris LIKE '%|%'")).toBeGreaterThan(0);
    // The code flow's tables, logout requests and pairwise subjects: a modest share, hanging off real grants.
    for (const t of ['hydra_oauth2_code', 'hydra_oauth2_oidc', 'hydra_oauth2_pkce', 'hydra_oauth2_logout_request', 'hydra_oauth2_obfuscated_authentication_session']) {
      expect(await count(db, `SELECT count(*) AS n FROM ${t}`), t).toBeGreaterThan(0);
    }
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_code')).toBeLessThan(ROWS);
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_code WHERE NOT active')).toBeGreaterThan(0);
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_oidc o LEFT JOIN hydra_oauth2_code c USING (signature) WHERE c.signature IS NULL')).toBe(0);
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_pkce p LEFT JOIN hydra_oauth2_code c USING (signature) WHERE c.signature IS NULL')).toBe(0);
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_logout_request WHERE client_id IS NULL')).toBeGreaterThan(0);
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_logout_request WHERE client_id IS NOT NULL')).toBeGreaterThan(0);
  }, 60_000);

  it('applies the whole v2 migration set cleanly, in version order, when no dirty rows are seeded', async () => {
    const { db } = await seeded('clean', { seed: 11 });
    const before = {
      access: await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_access'),
      refresh: await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_refresh'),
      logins: await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_authentication_request'),
      applied: await count(db, 'SELECT count(*) AS n FROM schema_migration'),
    };

    // The networks migration sorts below the newest applied v1 version, yet it is pending.
    const newest = (await db.query<{ v: string }>('SELECT max(version) AS v FROM schema_migration')).rows[0]?.v ?? '';
    expect('20150101000001000000' < newest).toBe(true);
    expect(await count(db, "SELECT count(*) AS n FROM schema_migration WHERE version = '20150101000001000000'")).toBe(0);

    // The generic file of the doubled version is MySQL: running it instead of the .postgres one fails.
    const generic = fs.readFileSync(path.join(HYDRA_V2_MIGRATIONS_DIR, '20211004110002000000_client_registration_token.up.sql'), 'utf8');
    await db.query('BEGIN');
    await expect(db.query(generic)).rejects.toMatchObject({ code: '42601' });
    await db.query('ROLLBACK');

    const run = await applyV2(db);
    expect(run.failed).toBeUndefined();
    expect(run.applied).toEqual(migrations().map((m) => m.id));
    expect(run.applied[0]).toBe('20150101000001000000_networks');
    expect(run.applied).toContain('20211004110003000000_client_sqlite_rebuild'); // the empty file
    expect(await count(db, 'SELECT count(*) AS n FROM schema_migration')).toBe(before.applied + run.applied.length);

    const tables = (await db.query<{ t: string }>("SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public'")).rows.map((r) => r.t);
    expect(tables).toContain('hydra_oauth2_flow');
    expect(tables).toContain('networks');
    for (const gone of ['hydra_oauth2_authentication_request', 'hydra_oauth2_authentication_request_handled', 'hydra_oauth2_consent_request', 'hydra_oauth2_consent_request_handled']) {
      expect(tables).not.toContain(gone);
    }

    const columns = await db.query<{ table_name: string; column_name: string; data_type: string; is_nullable: string }>(
      `SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns WHERE table_schema = 'public'`,
    );
    const col = (t: string, c: string) => columns.rows.find((r) => r.table_name === t && r.column_name === c);
    const everyTable = ['hydra_client', 'hydra_jwk', 'hydra_oauth2_access', 'hydra_oauth2_refresh', 'hydra_oauth2_code', 'hydra_oauth2_oidc', 'hydra_oauth2_pkce',
      'hydra_oauth2_flow', 'hydra_oauth2_authentication_session', 'hydra_oauth2_logout_request', 'hydra_oauth2_obfuscated_authentication_session'];
    for (const t of everyTable) {
      expect(col(t, 'nid'), `${t}.nid`).toMatchObject({ data_type: 'uuid', is_nullable: 'NO' });
    }
    for (const c of ['redirect_uris', 'grant_types', 'response_types', 'audience']) {
      expect(col('hydra_client', c)?.data_type, `hydra_client.${c}`).toBe('jsonb');
    }
    for (const c of ['consent_error', 'session_access_token', 'session_id_token']) {
      expect(col('hydra_oauth2_flow', c)?.data_type, `hydra_oauth2_flow.${c}`).toBe('jsonb');
    }
    expect(col('hydra_oauth2_access', 'active')).toBeDefined(); // v2 keeps revoked rows with active = false

    const fks = await foreignKeys(db);
    for (const t of ['access', 'refresh', 'code', 'oidc', 'pkce'].map((k) => `public.hydra_oauth2_${k}`)) {
      expect(fks).toContainEqual({ child: t, parent: 'public.hydra_client', childCols: ['client_id', 'nid'], parentCols: ['id', 'nid'] });
      expect(fks).toContainEqual({ child: t, parent: 'public.hydra_oauth2_flow', childCols: ['challenge_id'], parentCols: ['consent_challenge_id'] });
    }
    for (const t of ['public.hydra_oauth2_logout_request', 'public.hydra_oauth2_obfuscated_authentication_session']) {
      expect(fks).toContainEqual({ child: t, parent: 'public.hydra_client', childCols: ['client_id', 'nid'], parentCols: ['id', 'nid'] });
    }

    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_access')).toBe(before.access);
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_refresh')).toBe(before.refresh);
    expect(await count(db, 'SELECT count(*) AS n FROM hydra_oauth2_flow')).toBe(before.logins);
    // The merge tests `error IS NOT NULL` first and v1 writes '{}' for an accepted login: every handled
    // login is 128 until the engine's post-migration repair recomputes it.
    expect((await db.query<{ s: number }>('SELECT DISTINCT state AS s FROM hydra_oauth2_flow ORDER BY 1')).rows.map((r) => r.s)).toEqual([1, 128]);
    await installQuarantine(db);
    for (const r of HYDRA_REPAIRS) await runRepair(db, 'fixture', r);
    expect(await count(db, 'SELECT count(DISTINCT state) AS n FROM hydra_oauth2_flow')).toBeGreaterThanOrEqual(6);
    expect(await count(db, "SELECT count(*) AS n FROM hydra_client WHERE jsonb_typeof(redirect_uris) = 'array' AND jsonb_array_length(redirect_uris) > 1")).toBeGreaterThan(0);
    expect(await count(db, "SELECT count(*) AS n FROM pg_index WHERE indexrelid = 'public.hydra_oauth2_access_requested_at_idx'::regclass AND indisvalid")).toBe(1);
  }, 60_000);

  for (const dirtyClass of DIRTY_CLASSES) {
    const { migration, sqlstate } = BREAKS[dirtyClass];
    it(`${dirtyClass}: stops the v2 set at ${migration} with SQLSTATE ${sqlstate}, and it applies once those rows and their dependents are gone`, async () => {
      const broken = await seeded(dirtyClass, { seed: 5, dirty: [dirtyClass] });
      expect(broken.result.dirty).toHaveLength(5);
      const first = await applyV2(broken.db);
      expect(first.failed?.migration, first.failed?.message).toBe(migration);
      expect(first.failed?.sqlstate).toBe(sqlstate);
      expect(first.failed?.sqlstate.slice(0, 2)).toBe(sqlstate.slice(0, 2));

      // The same data again, cleaned on v1 as the cleanup step does before migrating green.
      const cleaned = await seeded(`${dirtyClass}_cleaned`, { seed: 5, dirty: [dirtyClass] });
      await createIsJson(cleaned.db);
      expect(await cleanUp(cleaned.db, dirtyClass)).toBe(5);
      const second = await applyV2(cleaned.db);
      expect(second.failed, second.failed?.message).toBeUndefined();
      expect(second.applied).toEqual(migrations().map((m) => m.id));
    }, 60_000);
  }

  it('reports every dirty row where it really is, and the cleanup finds exactly those rows and nothing clean', async () => {
    const { db, result } = await seeded('all_dirty', { seed: 9, dirty: DIRTY_CLASSES, dirtyPerClass: 4 });
    await createIsJson(db);
    expect(result.dirty).toHaveLength(DIRTY_CLASSES.length * 4);
    expect(new Set(result.dirty.map((d) => d.dirtyClass))).toEqual(new Set(DIRTY_CLASSES));

    for (const d of result.dirty) {
      const where = Object.keys(d.key).map((c, i) => `${ident(c)}::text = $${i + 1}`).join(' AND ');
      const n = await db.query(`SELECT 1 FROM ${d.table} WHERE ${where}`, Object.values(d.key));
      expect(n.rowCount, label(d)).toBe(1);
    }

    for (const rule of HYDRA_CLEANUP_RULES) {
      const where = await whereHere(db, rule);
      const found = where ? await rowsMatching(db, rule.table, where) : [];
      const expected = result.dirty.filter((d) => d.dirtyClass === rule.name).map(label);
      expect(found.sort(), rule.name).toEqual(expected.sort());
    }

    const orphans: string[] = [];
    for (const fk of await foreignKeys(db)) orphans.push(...(await rowsMatching(db, fk.child, orphanPredicate(fk))));
    const expected = result.dirty.filter((d) => d.dirtyClass === 'orphan-client' || d.dirtyClass === 'orphan-challenge').map(label);
    expect(orphans.sort()).toEqual(expected.sort());
  }, 60_000);
});
