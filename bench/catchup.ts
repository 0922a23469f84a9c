// Catch-up benchmark (issue G): one recorded change set applied by ours and by the anchors, in the
// same run, on embedded PostgreSQL.
//   1. Blue (its own cluster) is seeded with the Hydra-shaped v1 fixture; `migrate apply` with
//      stream.enabled copies it into green (a second cluster) from its slot's snapshot and migrates
//      green to v2 (the real steps). Then, blue idle, the anchors get their start at the same point:
//      a pgoutput slot + publication over the same tables for native logical replication, whose
//      exported snapshot a same-schema (v1) copy is dumped from into database `native` on the green
//      cluster, with a disabled subscription (copy_data = false, create_slot = false) on that slot;
//      and, when pgcopydb is installed, its slot (wal2json) and a v1 copy in database `pgcopydb`.
//   2. The write burst: at least --changes row changes of mixed kinds on blue, one transaction per
//      engine request (bench/catchup/burst.ts), and a last marker transaction. "Recorded" = the WAL
//      every slot retains: each consumer then applies the identical backlog.
//   3. Timed, one at a time, each from a checkpoint: ours = stage (streamToGreen up to blue's end
//      position) + map (applyStagedChanges through the Hydra mapping) until green's mapped mark holds
//      the marker; native = from ALTER SUBSCRIPTION ENABLE until the marker is on `native`; pgcopydb =
//      `pgcopydb follow` up to the end position.
//   4. Every target is checked against blue (bench/catchup/verify.ts).
//   5. Lag: blue takes --rate requests/s (default 200; the demo sends unpaced bursts, so it has no rate
//      of its own to copy) for --lag-seconds while ours follows continuously (stage + map in a loop);
//      each blue transaction's lag is the time from its commit on blue to the end of the green
//      transaction that mapped it.
// Usage: npm run bench:catchup -- [--changes N] [--batch N] [--rate R] [--lag-seconds S] [--profile] [--json]
// (--profile: the mapping's time per statement, with a clock mark after each; slightly slower.)
// Progress goes to stderr; one JSON line (--json) or a short summary goes to stdout.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { connect, type Db } from '../src/db/connect.ts';
import { pgEnv } from '../src/db/binaries.ts';
import { ident, literal } from '../src/db/sql.ts';
import { CAPTURE_TRIGGERS } from '../src/steps/capture.ts';
import { hydraMapping } from './catchup/mapping.ts';
import { applyStagedChanges } from '../src/stream/apply-changes.ts';
import { publicationName, slotName } from '../src/stream/names.ts';
import { streamToGreen } from '../src/stream/reader.ts';
import { startCluster, type LocalCluster } from '../support/embedded.ts';
import { loadHydraV1Schema, seedHydraV1 } from '../support/fixture/seed.ts';
import { BURST_PROCEDURE, CHANGES_PER_CYCLE, GRANTS_PER_CYCLE, janitorRows, POOL_SIZES_SQL, POOLS_SQL, TXNS_PER_CYCLE } from './catchup/burst.ts';
import { pgcopydbAvailable, PGCOPYDB_LIBRARY_PATH } from './catchup/pgcopydb.ts';
import { followLag } from './catchup/lag.ts';
import { profiledMapping, statementProfile } from './catchup/profile.ts';
import { publishedTables, verifyCopy, verifyMapped } from './catchup/verify.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const { values } = parseArgs({
  options: {
    changes: { type: 'string', default: '200000' },
    batch: { type: 'string', default: '5000' },
    rate: { type: 'string', default: '200' },
    'lag-seconds': { type: 'string', default: '20' },
    profile: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
const wanted = Number(values.changes);
const batch = Number(values.batch);
const rate = Number(values.rate);
const lagSeconds = Number(values['lag-seconds']);
const mapping = hydraMapping();
for (const [name, v] of [['--changes', wanted], ['--batch', batch], ['--rate', rate], ['--lag-seconds', lagSeconds]] as const) {
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} must be a positive number`);
}
const log = (s: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);
const started = performance.now();

/** Burst cycles for the wanted changes, and the lag phase's (one cycle every 1000 * TXNS_PER_CYCLE / rate ms). */
const burstCycles = Math.ceil(wanted / CHANGES_PER_CYCLE) + 10;
const lagCycles = Math.ceil((lagSeconds * rate) / TXNS_PER_CYCLE) + 50;
// Grants: 70% of the seed's refresh tokens are active; the janitor takes rotated-out (30%) ones.
const seedRows = Math.max(20_000, Math.ceil(((burstCycles + lagCycles) * GRANTS_PER_CYCLE) / 0.65), Math.ceil(janitorRows(burstCycles + lagCycles) / 0.25));

/** Runs a binary (argv, no shell); resolves with stdout, rejects with the tail of stderr. */
function run(cmd: string, argv: string[], env: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) return resolve(out);
      reject(Object.assign(new Error(`${cmd} ${argv[0] ?? ''} exited ${code}: ${err.split('\n').slice(-20).join('\n')}`), { stdout: out }));
    });
  });
}

async function client(dsn: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: dsn });
  // A failed run stops the clusters under open clients: their FATAL must not hide the real error.
  c.on('error', () => {});
  await c.connect();
  return c;
}

async function one<T extends pg.QueryResultRow>(c: pg.Client, sql: string, params: unknown[] = []): Promise<T> {
  return (await c.query<T>(sql, params)).rows[0]!;
}

/** Polls `probe` every 5 ms until it is true; returns the seconds since `t0`. */
async function until(probe: () => Promise<boolean>, t0: number, timeoutS: number, what: string): Promise<number> {
  for (;;) {
    if (await probe()) return (performance.now() - t0) / 1000;
    if (performance.now() - t0 > timeoutS * 1000) throw new Error(`${what}: not caught up after ${timeoutS} s`);
    await sleep(5);
  }
}

const pgcopydb = await pgcopydbAvailable();
const blueCluster = await startCluster({ name: 'bench-catchup-blue', settings: typeof pgcopydb === 'string' ? {} : { dynamic_library_path: PGCOPYDB_LIBRARY_PATH } });
// Autovacuum off on the targets: a background vacuum of the tables being applied into would land in one consumer's timing.
let greenCluster: LocalCluster | null = null;
let workDir: string | null = null;
try {
  greenCluster = await startCluster({ name: 'bench-catchup-green', settings: { autovacuum: 'off' } });
  const blueDsn = blueCluster.dsn('hydra');
  const greenDsn = greenCluster.dsn('hydra');
  const nativeDsn = greenCluster.dsn('native');
  for (const [c, dbs] of [[blueCluster, ['hydra']], [greenCluster, ['hydra', 'native', 'pgcopydb']]] as const) {
    const admin = await client(c.dsn());
    for (const d of dbs) await admin.query(`CREATE DATABASE ${ident(d)}`);
    await admin.end();
  }

  // 1. Seed, then the real apply with the stream enabled.
  log(`seeding blue: ${seedRows} tokens (Hydra v1 fixture)`);
  const blue = await client(blueDsn);
  await loadHydraV1Schema(blue);
  await seedHydraV1(blue, { rows: seedRows, seed: 7, dirty: [] });
  await blue.query('VACUUM ANALYZE');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-catchup-'));
  workDir = dir;
  const cfgFile = path.join(dir, 'migrate.config.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ blue: { dsn: 'env:BENCH_BLUE_DSN' }, green: { dsn: 'env:BENCH_GREEN_DSN' }, profile: 'hydra', migrations: { kind: 'pop', dir: path.join(ROOT, 'sql/fixtures/hydra-v2-migrations') }, snapshot: { jobs: 2 }, stream: { enabled: true, batchChanges: batch } }, null, 2));
  log('migrate apply (stream.enabled): copy from the slot\'s snapshot, cleanup, migrate to v2, validate, stream');
  const applyT0 = performance.now();
  await run(process.execPath, [path.join(ROOT, 'bin/migrate.js'), 'apply', '--config', cfgFile, '--json'], { BENCH_BLUE_DSN: blueDsn, BENCH_GREEN_DSN: greenDsn, CI: 'true' }).catch((err: unknown) => {
    const report = String((err as { stdout?: string }).stdout ?? '');
    let why = report.slice(0, 2000);
    try {
      why = JSON.stringify((JSON.parse(report) as { error?: unknown }).error ?? why);
    } catch {
      // not JSON: the start of what it printed
    }
    throw new Error(`migrate apply failed: ${why}\n${String(err)}`);
  });
  log(`apply done in ${((performance.now() - applyT0) / 1000).toFixed(1)} s`);
  const slot = slotName('hydra');
  const publication = publicationName('hydra');
  const tables = await publishedTables(blue, publication);

  // The anchors' start, blue idle: the same tables, a slot of their own, a v1 copy from its snapshot.
  // Capture's outbox triggers go: the burst then writes the published tables only, so every consumer
  // applies the same rows (pgcopydb 0.10's follow replays every table in the WAL, filters or not).
  const triggers = await blue.query<{ t: string; name: string }>(`SELECT tgrelid::regclass::text AS t, tgname AS name FROM pg_trigger WHERE tgname = ANY ($1::text[])`, [Object.values(CAPTURE_TRIGGERS)]);
  for (const tr of triggers.rows) await blue.query(`DROP TRIGGER ${ident(tr.name)} ON ${tr.t}`);
  await blue.query(POOLS_SQL);
  const pools = await one<{ grants: number; janitor: number }>(blue, POOL_SIZES_SQL);
  await blue.query(BURST_PROCEDURE);
  log(`pools: ${pools.grants} grants, ${pools.janitor} rotated-out refresh tokens`);
  await blue.query(`CREATE PUBLICATION bench_native_pub FOR TABLE ${tables.map((t) => `public.${ident(t)}`).join(', ')}`);
  const exporter = await connect('blue', blueDsn, 'bench-native-slot', { holdsSnapshot: true, replication: true });
  const dumpFile = path.join(dir, 'v1.dump');
  try {
    const { rows } = await exporter.query<{ snapshot_name: string; consistent_point: string }>('CREATE_REPLICATION_SLOT bench_native LOGICAL pgoutput EXPORT_SNAPSHOT');
    log(`native slot at ${rows[0]!.consistent_point}; dumping blue's v1 tables from its snapshot`);
    await run('pg_dump', ['-Fc', '-n', 'public', '--no-owner', '--no-privileges', `--snapshot=${rows[0]!.snapshot_name}`, '-f', dumpFile], pgEnv(blueDsn));
  } finally {
    await exporter.end();
  }
  for (const db of ['native', 'pgcopydb']) {
    // The dump creates schema public itself.
    const c = await client(greenCluster.dsn(db));
    await c.query('DROP SCHEMA public CASCADE');
    await c.end();
  }
  for (const db of ['native', 'pgcopydb']) await run('pg_restore', ['-j2', '--no-owner', '--no-privileges', '-d', db, dumpFile], pgEnv(greenCluster.dsn(db)));
  const native = await client(nativeDsn);
  await native.query(`CREATE SUBSCRIPTION bench_native CONNECTION ${literal(`host=127.0.0.1 port=${blueCluster.port} dbname=hydra user=postgres password=${blueCluster.password}`)}
    PUBLICATION bench_native_pub WITH (copy_data = false, create_slot = false, slot_name = 'bench_native', enabled = false)`);
  if (typeof pgcopydb !== 'string') await pgcopydb.prepare({ blueDsn, targetDsn: greenCluster.dsn('pgcopydb'), dir, log });

  // 2. The burst.
  log(`burst: ${burstCycles} cycles (about ${Math.round(burstCycles * CHANGES_PER_CYCLE)} row changes in ${Math.round(burstCycles * TXNS_PER_CYCLE)} transactions)`);
  const burstT0 = performance.now();
  let changes = 0;
  let txns = 0;
  let cycle = 1;
  const CHUNK = 1000;
  while (changes < wanted) {
    const n = Math.min(CHUNK, burstCycles - cycle + 1);
    if (n <= 0) throw new Error(`the burst made only ${changes} changes in ${burstCycles} cycles`);
    const r = await one<{ changes: string; txns: string }>(blue, `CALL bench.burst(${cycle}, ${n})`);
    changes += Number(r.changes);
    txns += Number(r.txns);
    cycle += n;
    log(`burst: ${changes} changes in ${txns} transactions`);
  }
  const marker = `bench-end-${Date.now()}`;
  await blue.query(`UPDATE public.hydra_client SET client_name = $1 WHERE pk = 1`, [marker]);
  changes += 1;
  txns += 1;
  const endLsn = (await one<{ lsn: string }>(blue, 'SELECT pg_current_wal_insert_lsn()::text AS lsn')).lsn;
  const walBytes = Number((await one<{ b: string }>(blue, `SELECT pg_wal_lsn_diff($1, confirmed_flush_lsn)::bigint::text AS b FROM pg_replication_slots WHERE slot_name = 'bench_native'`, [endLsn])).b);
  log(`burst done in ${((performance.now() - burstT0) / 1000).toFixed(1)} s: ${changes} changes, ${txns} transactions, ${(walBytes / 2 ** 20).toFixed(0)} MiB of WAL retained, end ${endLsn}`);
  const hasMarker = (c: pg.Client) => async (): Promise<boolean> => (await one<{ n: string }>(c, 'SELECT client_name AS n FROM public.hydra_client WHERE pk = 1')).n === marker;
  const settle = async (): Promise<void> => {
    await blue.query('CHECKPOINT');
    const g = await client(greenCluster!.dsn());
    await g.query('CHECKPOINT');
    await g.end();
    await run('sync', []);
  };

  // 3a. Ours: stage, then map, as the stream step does.
  await settle();
  const green: Db = await connect('green', greenDsn, 'bench-catchup');
  green.on('error', () => {});
  const oursT0 = performance.now();
  const staged = await streamToGreen({ blueDsn, green, slot, publication, uptoLsn: endLsn, batchChanges: batch, progress: (l) => log(l) });
  const stageS = (performance.now() - oursT0) / 1000;
  const mapT0 = performance.now();
  const mapped = await applyStagedChanges(green, { mapping: values.profile ? profiledMapping(mapping) : mapping, batch, slot });
  const mapS = (performance.now() - mapT0) / 1000;
  const oursS = (performance.now() - oursT0) / 1000;
  if (!(await hasMarker(green)())) throw new Error('ours: the marker is not on green after the catch-up');
  log(`ours: ${staged.changes} changes staged in ${stageS.toFixed(2)} s (${staged.batches} batches), ${mapped.changes} mapped in ${mapS.toFixed(2)} s (${mapped.batches} batches): ${oursS.toFixed(2)} s`);
  const profile = values.profile ? await statementProfile(green) : null;

  // 3b. Native logical replication.
  await settle();
  const nativeT0 = performance.now();
  await native.query('ALTER SUBSCRIPTION bench_native ENABLE');
  const nativeS = await until(hasMarker(native), nativeT0, 1800, 'native');
  await native.query('ALTER SUBSCRIPTION bench_native DISABLE');
  log(`native: ${nativeS.toFixed(2)} s`);

  // 3c. pgcopydb follow.
  let pgcopydbS: number | null = null;
  let pgcopydbFailure: string | null = null;
  if (typeof pgcopydb !== 'string') {
    await settle();
    const t0 = performance.now();
    try {
      await pgcopydb.follow(endLsn);
      pgcopydbS = (performance.now() - t0) / 1000;
      log(`pgcopydb follow: ${pgcopydbS.toFixed(2)} s`);
    } catch (err) {
      pgcopydbFailure = `failed: ${String((err as Error).message).slice(0, 600)}`;
      log(`pgcopydb ${pgcopydbFailure}`);
    }
  }

  // 4. Each target against blue.
  const problems: string[] = [];
  const check = async (label: string, diffs: Promise<string[]>): Promise<void> => {
    const d = await diffs;
    problems.push(...d.map((x) => `${label}: ${x}`));
    log(`${label}: ${d.length ? `NOT verified: ${d.join('; ')}` : 'verified'}`);
  };
  await check('ours', verifyMapped(blueDsn, greenDsn));
  await check('native', verifyCopy(blueDsn, nativeDsn, tables));
  if (typeof pgcopydb !== 'string' && pgcopydbFailure === null) await check('pgcopydb', verifyCopy(blueDsn, greenCluster.dsn('pgcopydb'), tables));

  // 5. Lag while blue takes `rate` requests/s and ours follows continuously.
  log(`lag: blue at ${rate} requests/s for ${lagSeconds} s, ours following (stage + map in a loop)`);
  const lag = await followLag({ blueDsn, green, slot, publication, mapping, firstCycle: cycle, rate, seconds: lagSeconds, batch });
  log(`lag: ${lag.samples} transactions, p50 ${lag.p50.toFixed(0)} ms, p99 ${lag.p99.toFixed(0)} ms, max ${lag.max.toFixed(0)} ms; ${lag.loops} follower loops`);
  await check('ours after the lag run', verifyMapped(blueDsn, greenDsn));

  await Promise.all([blue.end(), green.end(), native.end()]);
  const r3 = (x: number): number => Number(x.toFixed(3));
  const out = {
    changes,
    transactions: txns,
    ours_per_s: Math.round(changes / oursS),
    native_per_s: Math.round(changes / nativeS),
    ratio_vs_native: r3(nativeS / oursS),
    pgcopydb_per_s: pgcopydbS === null ? null : Math.round(changes / pgcopydbS),
    ...(typeof pgcopydb === 'string' ? { pgcopydb } : pgcopydbFailure ? { pgcopydb: pgcopydbFailure } : {}),
    verified: problems.length === 0,
    lag_p50_ms: Math.round(lag.p50),
    lag_p99_ms: Math.round(lag.p99),
    lag_max_ms: Math.round(lag.max),
    write_rate_per_s: Math.round(lag.txnsPerS),
    write_changes_per_s: Math.round(lag.changesPerS),
    ours_s: r3(oursS),
    ours_stage_s: r3(stageS),
    ours_map_s: r3(mapS),
    native_s: r3(nativeS),
    pgcopydb_s: pgcopydbS === null ? null : r3(pgcopydbS),
    batch_changes: batch,
    ours_batches: { staged: staged.batches, mapped: mapped.batches },
    ...(profile ? { ours_map_profile_ms: profile } : {}),
    wal_mib: Math.round(walBytes / 2 ** 20),
    seed_tokens: seedRows,
    run_s: Math.round((performance.now() - started) / 1000),
    ...(problems.length ? { problems: problems.slice(0, 10) } : {}),
  };
  if (values.json) process.stdout.write(`${JSON.stringify(out)}\n`);
  else {
    process.stdout.write(
      `${changes} changes in ${txns} transactions: ours ${out.ours_per_s}/s (stage ${out.ours_stage_s} s + map ${out.ours_map_s} s), native ${out.native_per_s}/s, ` +
        `ratio ${out.ratio_vs_native}, pgcopydb ${out.pgcopydb_per_s ?? out.pgcopydb ?? 'n/a'}; verified ${out.verified}; lag p50 ${out.lag_p50_ms} ms, p99 ${out.lag_p99_ms} ms at ${out.write_rate_per_s} requests/s\n`,
    );
  }
  if (problems.length) process.exitCode = 1;
} finally {
  if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
  await greenCluster?.stop();
  await blueCluster.stop();
}
