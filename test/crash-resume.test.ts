// pgcopydb-style drill: SIGKILL `migrate apply` mid-copy and mid-migration, resume, and compare the
// final green table by table with an uninterrupted run.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DIRTY_CLASSES } from '../support/fixture/seed.ts';
import { createDbPair, kill9, runCli, seedBlue, startCliUntil, tableChecksums, V2_MIGRATIONS, withClient, writeConfig, type DbPair } from './harness.ts';

const SEED = { rows: 4000, seed: 11, dirty: DIRTY_CLASSES };

describe('crash and resume', () => {
  let reference: Record<string, string>;
  const pairs: DbPair[] = [];

  beforeAll(async () => {
    const pair = await createDbPair('ref');
    pairs.push(pair);
    await seedBlue(pair, SEED);
    const cfg = writeConfig(pair);
    const r = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    reference = await tableChecksums(pair.greenDsn);
  });
  afterAll(async () => {
    for (const p of pairs) await p.drop();
  });

  it('gives the same green after a SIGKILL during the copy and a resume with a new snapshot', async () => {
    const pair = await createDbPair('crash_copy');
    pairs.push(pair);
    await seedBlue(pair, SEED);
    const cfg = writeConfig(pair, { snapshot: { jobs: 1 } });
    const { child } = await startCliUntil(['apply', '--config', cfg.file, '--drill-pause', 'after:snapshot:data:*'], cfg.env, 'fault: paused after snapshot:data:');
    await kill9(child);
    const copied = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT count(*)::int AS n FROM bluegreen.journal WHERE step = 'snapshot' AND unit LIKE 'data:%' AND status = 'done'`)).rows[0].n);
    expect(copied).toBe(1);

    const refused = await runCli(['apply', '--config', cfg.file, '--resume'], cfg.env);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain('--accept-new-snapshot');

    const resumed = await runCli(['apply', '--config', cfg.file, '--resume', '--accept-new-snapshot', '--json'], cfg.env);
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(0);
    const doc = JSON.parse(resumed.stdout);
    expect(doc.resumed).toBe(true);
    expect(doc.steps.map((s: { name: string; status: string }) => `${s.name}:${s.status}`)).toEqual(['preflight:skipped', 'capture:skipped', 'snapshot:done', 'cleanup:done', 'migrate:done', 'validate:done']);
    expect(await tableChecksums(pair.greenDsn)).toEqual(reference);
  });

  it('gives the same green after a SIGKILL inside a migration and a plain resume', async () => {
    const pair = await createDbPair('crash_migrate');
    pairs.push(pair);
    await seedBlue(pair, SEED);
    const cfg = writeConfig(pair);
    const { child } = await startCliUntil(['apply', '--config', cfg.file, '--drill-pause', 'before:migrate:migration:20211011000006000000'], cfg.env, 'fault: paused before migrate:migration:');
    await kill9(child);
    const applied = await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT count(*)::int AS n FROM schema_migration WHERE version >= '20211011000001000000'`)).rows[0].n);
    expect(applied).toBe(7); // 01..05 and the two side-table migrations (03000001, 05000001) before 06

    const resumed = await runCli(['apply', '--config', cfg.file, '--resume', '--json'], cfg.env);
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(0);
    const doc = JSON.parse(resumed.stdout);
    expect(doc.steps.map((s: { name: string; status: string }) => `${s.name}:${s.status}`)).toEqual(['preflight:skipped', 'capture:skipped', 'snapshot:skipped', 'cleanup:skipped', 'migrate:done', 'validate:done']);
    expect(await tableChecksums(pair.greenDsn)).toEqual(reference);
  });

  it('lets a second concurrent apply fail at once with the lock error and exit 3', async () => {
    const pair = await createDbPair('lock');
    pairs.push(pair);
    await seedBlue(pair, { ...SEED, rows: 200 });
    const cfg = writeConfig(pair);
    const { child } = await startCliUntil(['apply', '--config', cfg.file, '--drill-pause', 'after:capture:outbox'], cfg.env, 'fault: paused');
    try {
      const started = Date.now();
      const second = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
      expect(second.code).toBe(3);
      expect(JSON.parse(second.stdout).error).toMatchObject({ name: 'LockHeldError', exitCode: 3 });
      expect(Date.now() - started).toBeLessThan(60_000); // a waiting second apply would never return while the first is paused
    } finally {
      await kill9(child);
    }
  });
});

// Keep the fixture's migration folder honest: the crash test names a migration by version.
it('the crash test targets a migration that exists', () => {
  expect(fs.readdirSync(V2_MIGRATIONS).some((f) => f.startsWith('20211011000006000000_'))).toBe(true);
  expect(path.isAbsolute(V2_MIGRATIONS)).toBe(true);
});
