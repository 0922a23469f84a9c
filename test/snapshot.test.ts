// The snapshot step on its own (preflight + capture + snapshot through the real apply path, in a
// child process): PK-range copies, SIGKILL mid-copy and resume, built-in verification, progress.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DIRTY_CLASSES } from '../support/fixture/seed.ts';
import { createDbPair, kill9, ROOT, seedBlue, tableChecksums, withClient, writeConfig, type DbPair } from './harness.ts';

const SEED = { rows: 2000, seed: 23, dirty: DIRTY_CLASSES };
const COPY_ONLY = path.join(ROOT, 'bench/copy-only.ts');
const ACCESS = 'public.hydra_oauth2_access';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function copyOnly(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', COPY_ONLY, ...args], { env: { ...process.env, CI: 'true', ...env }, cwd: ROOT, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr });
    });
  });
}

function copyOnlyUntil(args: string[], env: Record<string, string>, marker: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', COPY_ONLY, ...args], { env: { ...process.env, CI: 'true', ...env }, cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stdout.resume();
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString();
      if (err.includes(marker)) resolve(child);
    });
    child.on('exit', (code) => reject(new Error(`copy exited with ${code} before "${marker}":\n${err}`)));
  });
}

/** Blue's user data as checksums, comparable with green's (our state schema left out). */
async function blueData(dsn: string): Promise<Record<string, string>> {
  return Object.fromEntries(Object.entries(await tableChecksums(dsn)).filter(([t]) => !t.startsWith('bluegreen.')));
}

async function accessBytes(dsn: string): Promise<number> {
  return withClient(dsn, async (c) => Number((await c.query(`SELECT pg_total_relation_size('${ACCESS}') AS n`)).rows[0].n));
}

describe('snapshot copy', () => {
  const pairs: DbPair[] = [];
  let reference: Record<string, string>;
  let referenceRun: Run;
  let split: { splitTableBytes: number };

  const newPair = async (prefix: string): Promise<{ pair: DbPair; cfg: ReturnType<typeof writeConfig> }> => {
    const pair = await createDbPair(prefix);
    pairs.push(pair);
    await seedBlue(pair, SEED);
    // Three ranges: the copy measures the table again later, and autovacuum may have added its free
    // space and visibility maps by then, so aim at 2.5 splits: anything within 20% still gives three.
    split ??= { splitTableBytes: Math.floor((await accessBytes(pair.blueDsn)) / 2.5) };
    return { pair, cfg: writeConfig(pair, { snapshot: { jobs: 1, ...split } }) };
  };

  beforeAll(async () => {
    const { pair, cfg } = await newPair('snap_ref');
    referenceRun = await copyOnly([cfg.file, '--jobs', '2'], cfg.env);
    expect(referenceRun.code, referenceRun.stdout + referenceRun.stderr).toBe(0);
    reference = await tableChecksums(pair.greenDsn);
    expect(reference).toEqual(await blueData(pair.blueDsn));
  });
  afterAll(async () => {
    for (const p of pairs) await p.drop();
  });

  it('copies the largest table as three primary-key ranges and journals each of them', async () => {
    const units = await withClient(pairs[0]!.blueDsn, async (c) => (await c.query<{ unit: string }>(`SELECT unit FROM bluegreen.journal WHERE step = 'snapshot' AND unit LIKE '%${ACCESS}%' AND status = 'done' ORDER BY unit`)).rows.map((r) => r.unit));
    expect(units).toEqual(expect.arrayContaining([`ranges:${ACCESS}`, `data:${ACCESS}:1/3`, `data:${ACCESS}:2/3`, `data:${ACCESS}:3/3`, `unique-index:${ACCESS}.hydra_oauth2_access_pkey`, `constraint:${ACCESS}.hydra_oauth2_access_pkey`, `analyze:${ACCESS}`]));
  });

  it('attaches primary keys through USING INDEX so green has real constraints', async () => {
    const pk = await withClient(pairs[0]!.greenDsn, async (c) => (await c.query(`SELECT contype FROM pg_constraint WHERE conname = 'hydra_oauth2_access_pkey'`)).rows);
    expect(pk).toEqual([{ contype: 'p' }]);
  });

  it('reports rows, bytes, rate and ETA while copying', () => {
    expect(referenceRun.stderr).toMatch(/copying public\.\S+: ~[\d.]+k? of ~[\d.]+k? rows, [\d.]+ MiB, [\d.]+ MiB\/s, ETA \d+ s/);
    expect(referenceRun.stderr).toMatch(/copied public\.hydra_oauth2_access: 2\.0k rows, [\d.]+ MiB in [\d.]+ s \([\d.]+ MiB\/s\)/);
  });

  it('gives the same green after a SIGKILL in the middle of one table\'s PK ranges and a resume', async () => {
    const { pair, cfg } = await newPair('snap_kill');
    const child = await copyOnlyUntil([cfg.file, '--drill-pause', `before:snapshot:data:${ACCESS}:3/3`], cfg.env, 'fault: paused before');
    await kill9(child);
    const states = await withClient(pair.blueDsn, async (c) => (await c.query<{ unit: string; status: string }>(`SELECT unit, status FROM bluegreen.journal WHERE unit LIKE 'data:${ACCESS}:%' ORDER BY unit`)).rows);
    expect(states).toEqual([
      { unit: `data:${ACCESS}:1/3`, status: 'done' },
      { unit: `data:${ACCESS}:2/3`, status: 'done' },
      { unit: `data:${ACCESS}:3/3`, status: 'running' },
    ]);

    const refused = await copyOnly([cfg.file, '--resume'], cfg.env);
    expect(refused.code).toBe(3);
    expect(refused.stdout).toContain('--accept-new-snapshot');

    const resumed = await copyOnly([cfg.file, '--resume', '--accept-new-snapshot'], cfg.env);
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(0);
    expect(await tableChecksums(pair.greenDsn)).toEqual(reference);
  });

  it('fails with exit 5 and names the table when a copied row was changed on green before verification', async () => {
    const { cfg, pair } = await newPair('snap_tamper');
    const child = await copyOnlyUntil([cfg.file, '--drill-pause', 'before:snapshot:verify'], cfg.env, 'fault: paused before');
    await kill9(child);
    await withClient(pair.greenDsn, (c) => c.query(`UPDATE public.hydra_client SET client_name = client_name || 'x' WHERE pk = (SELECT min(pk) FROM public.hydra_client)`));
    const resumed = await copyOnly([cfg.file, '--resume', '--verify', 'full'], cfg.env);
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(5);
    const doc = JSON.parse(resumed.stdout);
    expect(doc.error.name).toBe('FindingsError');
    expect(doc.error.message).toContain('public.hydra_client: checksum of the copied rows differs');
  });

  it('refuses to resume over a copied table that lost rows behind its foreign keys, naming --restart', async () => {
    const { cfg, pair } = await newPair('snap_lost');
    const child = await copyOnlyUntil([cfg.file, '--drill-pause', 'before:snapshot:verify'], cfg.env, 'fault: paused before');
    await kill9(child);
    await withClient(pair.greenDsn, (c) => c.query(`DELETE FROM ${ACCESS} WHERE signature = (SELECT min(signature) FROM ${ACCESS})`));
    const resumed = await copyOnly([cfg.file, '--resume', '--verify', 'full'], cfg.env);
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(3);
    const doc = JSON.parse(resumed.stdout);
    expect(doc.error.message).toContain('green lost rows of a table whose foreign keys are already in place');
    expect(doc.error.message).toContain('public.hydra_oauth2_access');
    expect(doc.error.hint).toContain('--restart');
  });
});
