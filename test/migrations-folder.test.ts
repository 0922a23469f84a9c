// A migrations folder that would migrate nothing, or holds a file meant as a migration that no rule
// of its source runs, is reported by `plan` and refused by `apply` (exit 6) before either database
// is written; `--allow-no-migrations` turns an empty folder into a deliberate pure copy.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POP_FILE_PATTERN } from '../src/sources/pop.ts';
import { POSTGRES_MIGRATIONS_FILE_PATTERN } from '../src/sources/postgres-migrations.ts';
import { guardedPair, runCli, V2_MIGRATIONS, withClient, writeConfig, type DbPair } from './harness.ts';

describe('the migrations folder is checked before anything is written', () => {
  let pair: DbPair;
  let expectUnchanged: () => Promise<void>;

  beforeAll(async () => {
    ({ pair, expectUnchanged } = await guardedPair('mfold', { rows: 200, seed: 5, dirty: [] }));
  });
  afterAll(async () => pair?.drop());

  /** A config whose migrations folder (of `kind`) holds `files`, after the v2 fixture set when `copyV2`. */
  function configWith(files: Record<string, string>, opts: { profile?: string; kind?: string; copyV2?: boolean } = {}): ReturnType<typeof writeConfig> & { migrations: string } {
    const migrations = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-migrations-'));
    if (opts.copyV2) fs.cpSync(V2_MIGRATIONS, migrations, { recursive: true });
    for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(migrations, name), text);
    const cfg = writeConfig(pair, { migrations: { kind: opts.kind ?? 'pop', dir: migrations }, ...(opts.profile ? { profile: opts.profile } : {}) });
    return { ...cfg, migrations };
  }

  for (const profile of ['hydra', 'none']) {
    it(`refuses an empty folder with profile ${profile}: plan and apply exit 6, the fix named, nothing written`, async () => {
      const cfg = configWith({}, { profile });
      for (const command of ['plan', 'apply']) {
        const r = await runCli([command, '--config', cfg.file], cfg.env);
        expect(r.code, `${command}: ${r.stderr}`).toBe(6);
        expect(r.stderr).toContain('no pending migration: no migration file found');
        expect(r.stderr).toContain('--allow-no-migrations');
        await expectUnchanged();
      }
    });
  }

  it('refuses a folder whose every migration blue already has, naming the count', async () => {
    const cfg = configWith({ '20150101000000000000_old.up.sql': 'SELECT 1;' });
    await withClient(pair.blueDsn, (c) => c.query(`INSERT INTO schema_migration (version) VALUES ('20150101000000000000')`));
    try {
      const r = await runCli(['apply', '--config', cfg.file], cfg.env);
      expect(r.code).toBe(6);
      expect(r.stderr).toContain('no pending migration: the one migration is already recorded on blue');
    } finally {
      await withClient(pair.blueDsn, (c) => c.query(`DELETE FROM schema_migration WHERE version = '20150101000000000000'`));
    }
    await expectUnchanged();
  });

  it('refuses misnamed pop files in plan and apply with exit 6, naming each file and the pattern', async () => {
    const bad = ['20211011000013000000_x.postgress.up.sql', '20211011000014000000_x.postgres.up.SQL', '20211011000015000000_x.up.sql.bak'];
    const cfg = configWith(Object.fromEntries(bad.map((f) => [f, 'CREATE TABLE never_ran (id int);'])), { copyV2: true });
    for (const command of ['plan', 'apply']) {
      const r = await runCli([command, '--config', cfg.file, '--json'], cfg.env);
      expect(r.code).toBe(6);
      const doc = JSON.parse(r.stdout);
      expect(doc.error.files).toEqual(['20211011000013000000_x.postgress.up.sql (unknown dialect "postgress")', bad[1], bad[2]]);
      expect(doc.error.message).toContain(POP_FILE_PATTERN);
      expect(doc.error.hint).toContain(`move it out of ${cfg.migrations}`);
      await expectUnchanged();
    }
  });

  it('refuses misnamed postgres-migrations files in plan and apply with exit 6, naming each file and the pattern', async () => {
    const files = { '1_a.sql': 'CREATE TABLE a (id int);', 'name.sql': 'SELECT 1;', '2_b.sql.bak': 'SELECT 1;', '2_b.psql': 'SELECT 1;', 'README.md': '# notes' };
    const cfg = configWith(files, { kind: 'postgres-migrations' });
    for (const command of ['plan', 'apply']) {
      const r = await runCli([command, '--config', cfg.file], cfg.env);
      expect(r.code).toBe(6);
      expect(r.stderr).toContain(`3 files in ${cfg.migrations} look like a migration`);
      expect(r.stderr).toContain('2_b.psql, 2_b.sql.bak, name.sql');
      expect(r.stderr).toContain(POSTGRES_MIGRATIONS_FILE_PATTERN);
      await expectUnchanged();
    }
  });

  it('accepts a folder with down files in any case and a README, listing only the up files', async () => {
    const cfg = configWith({ '20211011000013000000_x.down.sql': 'DROP TABLE x;', '20211011000013000000_x.postgres.DOWN.SQL': 'DROP TABLE x;', 'NOTES.md': 'x' }, { copyV2: true });
    const r = await runCli(['plan', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stderr).toBe(0);
    const migrate = JSON.parse(r.stdout).steps.find((s: { step: string }) => s.step === 'migrate');
    expect(migrate.actions.map((a: { id: string }) => a.id)).toContain('migration:20211011000012000000');
    expect(migrate.actions.map((a: { id: string }) => a.id)).not.toContain('migration:20211011000013000000');
    await expectUnchanged();
  });

  // Last: it fills green.
  it('copies blue to green and exits 0 with --allow-no-migrations on an empty folder (profile none), and plan says so first', async () => {
    const cfg = configWith({}, { profile: 'none' });
    const plan = await runCli(['plan', '--config', cfg.file, '--allow-no-migrations'], cfg.env);
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stdout.split('\n')[0]).toMatch(/^no pending migration .*--allow-no-migrations, so apply copies blue to green and migrates nothing$/);
    const r = await runCli(['apply', '--config', cfg.file, '--allow-no-migrations', '--json'], cfg.env);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.validation.passed).toBe(true);
    const counts = async (dsn: string): Promise<unknown> => withClient(dsn, async (c) => (await c.query(`SELECT (SELECT count(*) FROM public.hydra_client)::int AS clients, (SELECT count(*) FROM public.hydra_oauth2_access)::int AS access`)).rows[0]);
    expect(await counts(pair.greenDsn)).toEqual(await counts(pair.blueDsn));
  });
});
