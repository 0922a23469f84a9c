// The lock-hazard lint on its fixtures: one file per rule that must fire, safe files that must not,
// the fixture's own v2 migrations, the SELECT * check, and the CLI's exit codes for CI.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { lintCommand } from '../src/commands/lint.ts';
import { lintMigrations, migrationFromFile } from '../src/lint/index.ts';
import { parseMigration } from '../src/lint/parse.ts';
import { planMigration } from '../src/lint/rewrite.ts';
import { LINT_RULES } from '../src/lint/rules.ts';
import { popSource } from '../src/sources/pop.ts';
import { ROOT, runCli, V2_MIGRATIONS } from './harness.ts';

const DIR = path.join(ROOT, 'test/fixtures/lint');
const files = fs.readdirSync(DIR).filter((f) => f.endsWith('.sql'));
const ruleFiles = files.filter((f) => !f.startsWith('safe-'));
const safeFiles = files.filter((f) => f.startsWith('safe-'));

async function rulesIn(file: string): Promise<string[]> {
  const { findings } = await lintMigrations([migrationFromFile(path.join(DIR, file))]);
  return findings.map((f) => f.rule);
}

describe('lint fixtures', () => {
  it('has one fixture for every rule except the SELECT * check', () => {
    expect(ruleFiles.map((f) => f.replace(/\.sql$/, '')).sort()).toEqual(Object.keys(LINT_RULES).filter((r) => r !== 'select-star').sort());
  });

  it.each(ruleFiles)('fires exactly the rule %s names, and nothing else', async (file) => {
    expect(await rulesIn(file)).toEqual([file.replace(/\.sql$/, '')]);
  });

  it.each(safeFiles)('finds nothing in the safe file %s', async (file) => {
    expect(await rulesIn(file)).toEqual([]);
  });

  it('reports file, line, a one-line why and the SQL in-place mode runs instead', async () => {
    const { findings } = await lintMigrations([migrationFromFile(path.join(DIR, 'fk-without-not-valid.sql'))]);
    expect(findings[0]).toMatchObject({ rule: 'fk-without-not-valid', file: path.join(DIR, 'fk-without-not-valid.sql'), line: 2 });
    expect(findings[0]!.why).not.toContain('\n');
    expect(findings[0]!.rewrite).toContain('REFERENCES clients (id) NOT VALID');
    expect(findings[0]!.rewrite).toContain('VALIDATE CONSTRAINT "tokens_client_fk"');
  });
});

describe('lint on the Hydra v2 migration set', () => {
  it('flags the hazards the fixture carries and not its CREATE TABLE or its .autocommit index', async () => {
    const { findings } = await lintMigrations(await popSource(V2_MIGRATIONS).all());
    const at = (rule: string): string[] => findings.filter((f) => f.rule === rule).map((f) => `${path.basename(f.file).slice(0, 20)}:${f.line}`);
    expect(at('fk-without-not-valid')).toContain('20211011000005000000:5');
    expect(at('set-not-null')).toHaveLength(12); // 7 tables in 20211011000003000000, 5 more in 20211011000003000001
    // One per table of the nid backfill (the fixture may carry more whole-table UPDATEs elsewhere).
    expect(at('whole-table-update').filter((l) => l.startsWith('20211011000002000000:'))).toHaveLength(7);
    expect(at('drop-index-cascade')).toEqual(['20211011000004000000:5']);
    expect(at('create-index-not-concurrent')).toContain('20211011000004000000:9');
    expect(at('column-type-change').length).toBeGreaterThan(0);
    const rulesOf = (name: string): string[] => findings.filter((f) => path.basename(f.file) === name).map((f) => f.rule);
    expect(rulesOf('20211011000006000000_flow_create.postgres.up.sql')).toEqual([]);
    expect(rulesOf('20150101000001000000_networks.postgres.up.sql')).toEqual([]);
    // CONCURRENTLY in an .autocommit file is the safe form; only the missing lock_timeout remains.
    expect(rulesOf('20211011000012000000_access_requested_at_idx.postgres.autocommit.up.sql')).toEqual(['missing-lock-timeout']);
  });
});

describe('SELECT * check', () => {
  it('flags SELECT * and t.* on tables the migrations change, and leaves other queries alone', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lint-q-'));
    const queries = path.join(dir, 'queries.sql');
    fs.writeFileSync(queries, [
      'SELECT * FROM hydra_oauth2_access WHERE signature = $1;',
      'SELECT c.* FROM hydra_client c JOIN hydra_jwk j ON j.sid = c.id;',
      'SELECT signature, active FROM hydra_oauth2_refresh WHERE signature = $1;',
      'SELECT * FROM schema_migration;',
    ].join('\n'));
    const { findings } = await lintMigrations(await popSource(V2_MIGRATIONS).all(), { queriesFile: queries, ignore: Object.keys(LINT_RULES).filter((r) => r !== 'select-star') });
    expect(findings.map((f) => `${f.rule}:${f.line}`)).toEqual(['select-star:1', 'select-star:2']);
    expect(findings[0]!.why).toContain('adds nid');
    expect(findings[1]!.why).toContain('public.hydra_client');
  });
});

describe('migrate lint for CI', () => {
  it('exits 5 with findings and 0 on clean files, through the command function', async () => {
    expect((await lintCommand([path.join(DIR, 'set-not-null.sql')], {})).exitCode).toBe(5);
    expect((await lintCommand(safeFiles.map((f) => path.join(DIR, f)), {})).exitCode).toBe(0);
  });

  it('exits 5 and prints JSON findings through the real CLI', async () => {
    const r = await runCli(['lint', path.join(DIR, 'whole-table-update.sql'), '--json']);
    expect(r.code, r.stderr).toBe(5);
    expect(JSON.parse(r.stdout).findings[0]).toMatchObject({ rule: 'whole-table-update', line: 2 });
    const clean = await runCli(['lint', path.join(DIR, 'safe-not-valid.sql')]);
    expect(clean.code, clean.stderr).toBe(0);
  });
});

describe('lock-safe rewrite of whole-table UPDATEs', () => {
  const migration = (sql: string) => ({ id: '1', name: 'backfill', file: null, sql, transaction: 'default' as const });

  it('batches a whole-table UPDATE by primary key', async () => {
    const plan = planMigration(await parseMigration(migration('UPDATE clients SET nid = 1;')), true);
    expect(plan.units.some((u) => u.mode === 'batched')).toBe(true);
  });

  it('leaves an UPDATE ... RETURNING as written (its RETURNING list would land in the batches)', async () => {
    const plan = planMigration(await parseMigration(migration('UPDATE clients SET nid = 1 RETURNING id;')), true);
    expect(plan.units.some((u) => u.mode === 'batched')).toBe(false);
  });
});
