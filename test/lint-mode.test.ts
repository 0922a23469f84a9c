// Lint that fits the mode: a blue-green green serves no traffic while it migrates, so `plan` counts
// its lock findings in one line (listed with --lint-details; --json carries them all), while
// `plan --in-place` and `migrate lint` list them in full. Messages name the lock Postgres really
// takes (row locks for DML, the documented level for DDL), rewrites use the configured batch size,
// and the DROP INDEX ... CASCADE note knows which dependent tables the migrations drop anyway.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lintCommand } from '../src/commands/lint.ts';
import { lintMigrations } from '../src/lint/index.ts';
import { LINT_RULES, type Finding } from '../src/lint/rules.ts';
import type { Migration } from '../src/sources/types.ts';
import { createDbPair, runCli, seedBlue, V2_MIGRATIONS, withClient, writeConfig, type DbPair } from './harness.ts';

const BATCH = 777;

/** One inline migration file that runs in a transaction, as postgres-migrations runs a plain file. */
function inline(sql: string, transaction: Migration['transaction'] = 'default'): Migration {
  return { id: '1', name: 'inline', file: '1_inline.sql', sql, transaction };
}

async function findings(sql: string, transaction: Migration['transaction'] = 'default'): Promise<Finding[]> {
  return (await lintMigrations([inline(sql, transaction)])).findings;
}

const timeoutWhy = async (sql: string, transaction: Migration['transaction'] = 'default'): Promise<string> => (await findings(sql, transaction)).find((f) => f.rule === 'missing-lock-timeout')?.why ?? '';

/** Lock-finding counts by rule, from a JSON finding list. */
function lockCountsOf(list: { rule: string }[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const f of list) if (LINT_RULES[f.rule as keyof typeof LINT_RULES].lock) out[f.rule] = (out[f.rule] ?? 0) + 1;
  return out;
}

/** The `[rule]` finding lines of a text report, counted by rule. */
function listedCounts(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^\s*\S+:\d+ \[([a-z-]+)\] /gm)) out[m[1]!] = (out[m[1]!] ?? 0) + 1;
  return out;
}

describe('lint messages name the lock Postgres takes', () => {
  it('reports DML without lock_timeout as ROW EXCLUSIVE plus row locks, never as a DDL or ACCESS EXCLUSIVE lock', async () => {
    for (const sql of ["UPDATE tokens SET tenant = 'x' WHERE id < 10;", 'DELETE FROM tokens WHERE id = 1;']) {
      const why = await timeoutWhy(sql);
      expect(why).toContain('ROW EXCLUSIVE on public.tokens plus row locks');
      expect(why).not.toMatch(/DDL|ACCESS EXCLUSIVE/);
    }
    for (const f of await findings("SET lock_timeout = '2s'; UPDATE tokens SET tenant = 'x'; DELETE FROM tokens;")) {
      expect(f.why).toContain('ROW EXCLUSIVE');
      expect(f.why).toContain('row lock');
      expect(f.why).not.toMatch(/DDL|ACCESS EXCLUSIVE/);
    }
  });

  it('puts the missing lock_timeout on the first schema change of a file, not on a DML statement before it', async () => {
    const fs1 = await findings("UPDATE tokens SET tenant = 'x' WHERE id < 10;\nALTER TABLE tokens ALTER COLUMN tenant SET NOT NULL;");
    const timeout = fs1.filter((f) => f.rule === 'missing-lock-timeout');
    expect(timeout).toHaveLength(1);
    expect(timeout[0]).toMatchObject({ line: 2 });
    expect(timeout[0]!.why).toContain('ACCESS EXCLUSIVE lock on public.tokens');
    expect(fs1.map((f) => f.rule)).toEqual(['missing-lock-timeout', 'set-not-null']);
  });

  it.each([
    ['CREATE INDEX tokens_subject_idx ON tokens (subject);', 'default', "SHARE lock on public.tokens", 'every write queued after it waits too (reads go on)'],
    ['CREATE INDEX CONCURRENTLY tokens_subject_idx ON tokens (subject);', 'none', 'SHARE UPDATE EXCLUSIVE lock on public.tokens', 'reads and writes go on'],
    ['ALTER TABLE tokens ADD CONSTRAINT tokens_client_fk FOREIGN KEY (client_id) REFERENCES clients (id);', 'default', 'SHARE ROW EXCLUSIVE lock on public.tokens and public.clients', 'every write queued'],
    ['ALTER TABLE tokens VALIDATE CONSTRAINT tokens_client_fk;', 'default', 'SHARE UPDATE EXCLUSIVE lock on public.tokens', 'reads and writes go on'],
    ['ALTER TABLE tokens ALTER COLUMN tenant SET NOT NULL;', 'default', 'ACCESS EXCLUSIVE lock on public.tokens', 'reads included'],
    ['ALTER TABLE tokens ALTER COLUMN scope TYPE jsonb USING scope::jsonb;', 'default', 'ACCESS EXCLUSIVE lock on public.tokens', 'reads included'],
    ['ALTER TABLE tokens ADD COLUMN public_id uuid DEFAULT gen_random_uuid();', 'default', 'ACCESS EXCLUSIVE lock on public.tokens', 'reads included'],
    ['DROP INDEX tokens_subject_idx;', 'default', "ACCESS EXCLUSIVE lock on the index's table", 'reads included'],
  ] as const)('names the documented lock level for %s', async (sql, transaction, lock, effect) => {
    const why = await timeoutWhy(sql, transaction);
    expect(why).toContain(lock);
    expect(why).toContain(effect);
    expect(why).not.toContain('DDL lock');
  });

  it('says CREATE INDEX takes a SHARE lock and ADD FOREIGN KEY a SHARE ROW EXCLUSIVE lock on both tables', () => {
    expect(LINT_RULES['create-index-not-concurrent'].why).toContain('SHARE lock');
    expect(LINT_RULES['fk-without-not-valid'].why).toContain('SHARE ROW EXCLUSIVE lock on both tables');
    expect(LINT_RULES['whole-table-update'].why).not.toContain('ACCESS EXCLUSIVE');
  });
});

describe('batch sizes in lint messages follow inPlace.backfillBatchRows', () => {
  it('shows the configured batch size in the backfill rewrite, through `migrate lint --config`', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lint-batch-'));
    const file = path.join(dir, 'migrate.config.json');
    fs.writeFileSync(file, JSON.stringify({ blue: { dsn: 'postgres://localhost/blue' }, green: { dsn: 'postgres://localhost/green' }, migrations: { kind: 'pop', dir: V2_MIGRATIONS }, inPlace: { backfillBatchRows: BATCH } }));
    const r = await lintCommand([], { config: file });
    const updates = (r.json.findings as Finding[]).filter((f) => f.rule === 'whole-table-update');
    expect(updates.length).toBeGreaterThan(0);
    for (const f of updates) {
      expect(f.rewrite).toContain(`batches of ${BATCH} rows`);
      expect(f.rewrite).toContain(`next ${BATCH} keys`);
      expect(f.rewrite).not.toContain('5000');
    }
  });
});

describe('plan shows lint by mode, and the CASCADE note knows later drops', () => {
  const pairs: DbPair[] = [];
  let cfg: ReturnType<typeof writeConfig>;
  let text: string;
  let details: string;
  let inPlace: string;
  let json: { safety: { lint: Finding[]; lockCounts: Record<string, number>; cascades: { index: string; dropped: { name: string; table: string; droppedBy: string | null }[] }[] } };

  beforeAll(async () => {
    const pair = await createDbPair('lintmode');
    pairs.push(pair);
    await seedBlue(pair, { rows: 300, seed: 7, dirty: [] });
    cfg = writeConfig(pair, { inPlace: { lockTimeoutMs: 500, retries: 10, backfillBatchRows: BATCH } });
    const runs = await Promise.all([
      runCli(['plan', '--config', cfg.file], cfg.env),
      runCli(['plan', '--config', cfg.file, '--lint-details'], cfg.env),
      runCli(['plan', '--in-place', '--config', cfg.file], cfg.env),
      runCli(['plan', '--config', cfg.file, '--json'], cfg.env),
    ]);
    for (const r of runs) expect(r.code, r.stdout + r.stderr).toBe(0);
    [text, details, inPlace] = runs.slice(0, 3).map((r) => r.stdout) as [string, string, string];
    json = JSON.parse(runs[3]!.stdout);
  });
  afterAll(async () => {
    for (const p of pairs) await p.drop();
  });

  it('prints the lock findings on green as one summary line whose counts match the JSON list', () => {
    const summary = text.split('\n').filter((l) => l.startsWith('lint: lock findings on green (serves no traffic while it migrates): '));
    expect(summary).toHaveLength(1);
    expect(summary[0]).toContain('run with --lint-details to list them');
    const counted = Object.fromEntries([...summary[0]!.matchAll(/(\d+) ([a-z-]+)/g)].map((m) => [m[2]!, Number(m[1])]));
    expect(counted).toEqual(lockCountsOf(json.safety.lint));
    expect(json.safety.lockCounts).toEqual(counted);
    expect(counted['set-not-null']).toBeGreaterThan(0);
    // No lock finding is listed one by one; the CASCADE finding (constraints vanish) still is.
    expect(Object.keys(listedCounts(text))).toEqual(['drop-index-cascade']);
  });

  it('lists every finding in full with --lint-details and with --in-place, as many as --json carries', () => {
    const all: Record<string, number> = {};
    for (const f of json.safety.lint) all[f.rule] = (all[f.rule] ?? 0) + 1;
    expect(listedCounts(details)).toEqual(all);
    expect(listedCounts(inPlace)).toEqual(all);
    expect(details).not.toContain('lock findings on green');
    expect(inPlace).not.toContain('lock findings on green');
  });

  it('lists every finding in full in `migrate lint`', async () => {
    const r = await runCli(['lint', '--config', cfg.file], cfg.env);
    expect(r.code, r.stderr).toBe(5);
    const j = await runCli(['lint', '--config', cfg.file, '--json'], cfg.env);
    const all: Record<string, number> = {};
    for (const f of JSON.parse(j.stdout).findings as Finding[]) all[f.rule] = (all[f.rule] ?? 0) + 1;
    // A run with findings exits 5 and prints its report on stderr.
    expect(listedCounts(r.stdout + r.stderr)).toEqual(all);
  });

  it('shows the configured batch size in the plan JSON rewrites', () => {
    const rewrites = json.safety.lint.filter((f) => f.rule === 'whole-table-update').map((f) => f.rewrite);
    expect(rewrites.length).toBeGreaterThan(0);
    for (const r of rewrites) expect(r).toContain(`next ${BATCH} keys`);
  });

  it('still warns about the fixture CASCADE, naming only the token foreign keys whose tables survive', () => {
    const c = json.safety.cascades.find((x) => x.index === 'public.hydra_client_idx_id_uq')!;
    const fate = Object.fromEntries(c.dropped.map((d) => [d.table, d.droppedBy ? path.basename(d.droppedBy) : null]));
    expect(fate).toEqual({
      'public.hydra_oauth2_access': null,
      'public.hydra_oauth2_refresh': null,
      'public.hydra_oauth2_code': null,
      'public.hydra_oauth2_oidc': null,
      'public.hydra_oauth2_pkce': null,
      'public.hydra_oauth2_logout_request': null,
      'public.hydra_oauth2_obfuscated_authentication_session': null,
      'public.hydra_oauth2_authentication_request': '20211011000009000000_flow_drop_old_tables.postgres.up.sql:4',
      'public.hydra_oauth2_consent_request': '20211011000009000000_flow_drop_old_tables.postgres.up.sql:4',
    });
    const lines = text.split('\n');
    const at = lines.findIndex((l) => l.includes('DROP INDEX public.hydra_client_idx_id_uq CASCADE'));
    expect(lines[at]).toMatch(/20211011000004000000_client_id_unique_per_network\.postgres\.up\.sql:5 silently drops 7 foreign key\(s\) of tables that survive the migrations:$/);
    const survivors = ['access', 'code', 'logout_request', 'obfuscated_authentication_session', 'oidc', 'pkce', 'refresh'];
    survivors.forEach((t, i) => expect(lines[at + 1 + i]).toContain(`on public.hydra_oauth2_${t}(client_id): re-added later as hydra_oauth2_${t}_client_id_fk`));
    expect(lines[at + 8]).toMatch(/^\s+\(also 2 on tables the pending migrations drop anyway: .*public\.hydra_oauth2_authentication_request .*public\.hydra_oauth2_consent_request /);
  });

  it('does not warn about a CASCADE whose dependent table a later migration drops', async () => {
    const pair = await createDbPair('lintmode_c');
    pairs.push(pair);
    await withClient(pair.blueDsn, (c) =>
      c.query(`CREATE TABLE parents (id int NOT NULL);
        CREATE UNIQUE INDEX parents_id_uq ON parents (id);
        CREATE TABLE children (id int PRIMARY KEY, parent_id int REFERENCES parents (id));
        INSERT INTO parents VALUES (1); INSERT INTO children VALUES (1, 1);`),
    );
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lint-cascade-'));
    fs.writeFileSync(path.join(dir, '1_parents_uq_drop.sql'), "SET lock_timeout = '2s';\nDROP INDEX parents_id_uq CASCADE;\n");
    fs.writeFileSync(path.join(dir, '2_children_drop.sql'), "SET lock_timeout = '2s';\nDROP TABLE children;\n");
    const own = writeConfig(pair, { profile: 'none', migrations: { kind: 'postgres-migrations', dir } });
    const [t, j] = await Promise.all([runCli(['plan', '--config', own.file], own.env), runCli(['plan', '--config', own.file, '--json'], own.env)]);
    expect(t.code, t.stdout + t.stderr).toBe(0);
    expect(j.code, j.stderr).toBe(0);
    const note = t.stdout.split('\n').filter((l) => l.includes('DROP INDEX public.parents_id_uq CASCADE'));
    expect(note).toHaveLength(1);
    expect(note[0]).toMatch(/1_parents_uq_drop\.sql:2: its 1 dependent foreign key\(s\) belong to tables the pending migrations drop anyway: children_parent_id_fkey on public\.children \(table dropped at .*2_children_drop\.sql:2\)$/);
    expect(t.stdout).not.toContain('silently drop');
    const safety = JSON.parse(j.stdout).safety;
    expect(safety.cascades[0].dropped[0].droppedBy).toMatch(/2_children_drop\.sql:2$/);
    expect(safety.lint.map((f: Finding) => f.rule)).toEqual(['drop-index-not-concurrent']);
  });
});
