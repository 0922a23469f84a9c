// Per-file databases on the shared blue and green clusters, config files for them, and a way to
// run the real CLI as a child process.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { expect, inject } from 'vitest';
import { loadHydraV1Schema, seedHydraV1, type SeedOptions, type SeedResult } from '../support/fixture/seed.ts';
import { popSource } from '../src/sources/pop.ts';

/** Repository root. */
export const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The v2-shaped Hydra/pop migration set. */
export const V2_MIGRATIONS = path.join(ROOT, 'sql/fixtures/hydra-v2-migrations');

/** A fresh database pair for one test. */
export interface DbPair {
  /** Blue database DSN (with password, as in production). */
  blueDsn: string;
  /** Green database DSN. */
  greenDsn: string;
  /** Database name (same on both clusters). */
  name: string;
  /** Drops both databases. */
  drop(): Promise<void>;
}

function withDatabase(adminDsn: string, database: string): string {
  const u = new URL(adminDsn);
  u.pathname = `/${database}`;
  return u.toString();
}

async function admin(dsn: string, sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

/** Creates an empty database with a random name on both clusters. */
export async function createDbPair(prefix = 't'): Promise<DbPair> {
  const name = `${prefix}_${crypto.randomBytes(5).toString('hex')}`;
  const blueAdmin = inject('blueAdminDsn');
  const greenAdmin = inject('greenAdminDsn');
  await admin(blueAdmin, `CREATE DATABASE ${name}`);
  await admin(greenAdmin, `CREATE DATABASE ${name}`);
  return {
    name,
    blueDsn: withDatabase(blueAdmin, name),
    greenDsn: withDatabase(greenAdmin, name),
    drop: async () => {
      await admin(blueAdmin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await admin(greenAdmin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

/** Runs `fn` with a connected client and closes it. */
export async function withClient<T>(dsn: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: dsn });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Loads the Hydra v1 schema on blue and seeds it. */
export async function seedBlue(pair: DbPair, opts: SeedOptions): Promise<SeedResult> {
  return withClient(pair.blueDsn, async (c) => {
    await loadHydraV1Schema(c);
    return seedHydraV1(c, opts);
  });
}

/** A seeded pair with a check that neither database changed since it was seeded: bad input must change nothing. */
export async function guardedPair(prefix: string, seed: SeedOptions): Promise<{ pair: DbPair; expectUnchanged: () => Promise<void> }> {
  const pair = await createDbPair(prefix);
  await seedBlue(pair, seed);
  const before = { blue: await fingerprint(pair.blueDsn), green: await fingerprint(pair.greenDsn) };
  return {
    pair,
    expectUnchanged: async () => {
      expect(await fingerprint(pair.blueDsn)).toBe(before.blue);
      expect(await fingerprint(pair.greenDsn)).toBe(before.green);
    },
  };
}

/** Seeds `db` exactly as {@link seedBlue} would and upgrades it to the v2 shape with the fixture's migrations: green as the window leaves it. */
export async function seedUpgradedToV2(db: pg.Client, opts: SeedOptions): Promise<void> {
  await loadHydraV1Schema(db);
  await seedHydraV1(db, opts);
  const source = popSource(V2_MIGRATIONS);
  for (const m of await source.pending(db)) await source.apply(db, m);
}

/** Writes a config file for the pair (DSNs through env vars) and returns its path and env. */
export function writeConfig(pair: DbPair, extra: Record<string, unknown> = {}): { file: string; env: Record<string, string>; dir: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-test-'));
  const file = path.join(dir, 'migrate.config.json');
  const config = { blue: { dsn: 'env:TEST_BLUE_DSN' }, green: { dsn: 'env:TEST_GREEN_DSN' }, profile: 'hydra', migrations: { kind: 'pop', dir: V2_MIGRATIONS }, snapshot: { jobs: 2 }, ...extra };
  fs.writeFileSync(file, JSON.stringify(config, null, 2));
  return { file, dir, env: { TEST_BLUE_DSN: pair.blueDsn, TEST_GREEN_DSN: pair.greenDsn } };
}

/** Result of running the CLI. */
export interface CliResult {
  /** Exit code. */
  code: number | null;
  /** Captured stdout. */
  stdout: string;
  /** Captured stderr. */
  stderr: string;
}

const CLI = path.join(ROOT, 'bin/migrate.js');

/** Runs `migrate <args>` as a child process and waits for it. */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, CI: 'true', ...env }, maxBuffer: 64 * 1024 * 1024, cwd: ROOT }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: number }).code ?? null) : 0;
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr });
    });
  });
}

/** Starts `migrate <args>` and resolves once `marker` appears on stderr (e.g. a fault pause). */
export function startCliUntil(args: string[], env: Record<string, string>, marker: string): Promise<{ child: ChildProcess; stderr: () => string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, CI: 'true', ...env }, cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stdout.resume();
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString();
      if (err.includes(marker)) resolve({ child, stderr: () => err });
    });
    child.on('exit', (code) => reject(new Error(`migrate exited with ${code} before "${marker}":\n${err}`)));
  });
}

/** SIGKILLs a child and waits until it is gone. */
export function kill9(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

/** Per-table checksum of every user table (md5 of all rows ordered by their text), for comparing runs. */
export async function tableChecksums(dsn: string): Promise<Record<string, string>> {
  return withClient(dsn, async (c) => {
    const { rows } = await c.query<{ t: string }>(
      `SELECT format('%I.%I', n.nspname, c.relname) AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog','information_schema','bluegreen_green') AND n.nspname NOT LIKE 'pg_%' ORDER BY 1`,
    );
    const out: Record<string, string> = {};
    for (const r of rows) {
      // Quarantine rows carry run ids and timestamps; compare their payload only.
      const expr = r.t.startsWith('bluegreen_quarantine.') ? `x.rule || x.source_table || x.row::text` : 'x::text';
      const res = await c.query<{ h: string }>(`SELECT md5(coalesce(string_agg(${expr}, E'\\n' ORDER BY ${expr}), '')) AS h FROM ${r.t} x`);
      out[r.t] = res.rows[0]!.h;
    }
    return out;
  });
}

/** A fingerprint of a database's schemas, relations, table row counts and triggers, to prove "no change". */
export async function fingerprint(dsn: string): Promise<string> {
  return withClient(dsn, async (c) => {
    const { rows } = await c.query<{ t: string; kind: string }>(
      `SELECT format('%I.%I', n.nspname, c.relname) AS t, c.relkind::text AS kind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_%' ORDER BY 1`,
    );
    const parts: string[] = [];
    for (const r of rows) {
      const n = r.kind === 'r' ? (await c.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${r.t}`)).rows[0]!.n : r.kind;
      parts.push(`${r.t}=${n}`);
    }
    const extra = await c.query<{ s: string }>(
      `SELECT (SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace) || ';' ||
              (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal) || ';' ||
              (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog','information_schema')) AS s`,
    );
    return `${parts.join(',')};${extra.rows[0]!.s}`;
  });
}
