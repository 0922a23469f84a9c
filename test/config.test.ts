import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, resolveConfig } from '../src/config/load.ts';
import { configJsonSchema } from '../src/config/schema.ts';
import { ConfigError, ExitCode } from '../src/errors.ts';
import { redact, describeDsn } from '../src/db/redact.ts';
import { V2_MIGRATIONS } from './harness.ts';

const env = { B: 'postgres://u:s3cret-pw@127.0.0.1:5432/blue', G: 'postgres://u:s3cret-pw@127.0.0.1:5433/green' };
const good = { blue: { dsn: 'env:B' }, green: { dsn: 'env:G' }, migrations: { kind: 'pop', dir: V2_MIGRATIONS } };

function issuesOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('config', () => {
  it('resolves env:NAME secrets and remembers them for redaction', () => {
    const c = resolveConfig(good, '/x/migrate.config.json', env);
    expect(c.blueDsn).toBe(env.B);
    expect(c.secrets).toContain('s3cret-pw');
    expect(c.captureTables.map((t) => t.table)).toContain('public.hydra_oauth2_access');
  });

  it('reports every problem at once, each with its path, and refuses unknown keys', () => {
    const err = issuesOf(() => resolveConfig({ blue: { dsn: 'env:B', port: 5 }, green: {}, migrations: { kind: 'flyway' }, colour: 'blue' }, '/x/c.json', env));
    const paths = err.issues.map((i) => i.path);
    expect(paths).toEqual(expect.arrayContaining(['blue', 'green.dsn', 'migrations.kind', '']));
    expect(err.message).toContain('unknown key "colour"');
    expect(err.message).toContain('unknown key "port"');
    expect(err.exitCode).toBe(ExitCode.config);
  });

  it('refuses a password written in the config and never echoes it', () => {
    const err = issuesOf(() => resolveConfig({ ...good, blue: { dsn: 'postgres://u:hunter22@db/x' } }, '/x/c.json', env));
    expect(err.message).toContain('env:NAME');
    expect(err.message).not.toContain('hunter22');
  });

  it('names a missing environment variable and a missing migrations folder together', () => {
    const err = issuesOf(() => resolveConfig({ ...good, green: { dsn: 'env:NOPE' }, migrations: { kind: 'pop', dir: '/does/not/exist' } }, '/x/c.json', env));
    expect(err.issues).toEqual([
      { path: 'green.dsn', message: 'environment variable NOPE is not set; export it before running migrate' },
      { path: 'migrations.dir', message: 'folder /does/not/exist does not exist' },
    ]);
  });

  it('refuses config SQL that is not one read-only query or expression, at its path, together with other problems', () => {
    const invariant = { name: 'sneaky', blue: 'SELECT 1', green: 'WITH d AS (DELETE FROM k RETURNING id) SELECT id FROM d', relation: 'equal', quarantine: [{ table: 'public.k', key: "row ->> 'id' -- x" }] };
    const probe = { name: 'p', kind: 'sql', database: 'green', sql: 'SELECT 1; DROP TABLE k' };
    const err = issuesOf(() => resolveConfig({ ...good, invariants: [invariant], watch: { probes: [probe] }, cleanup: { rules: [{ name: 'r', table: 'public.k', where: 't.a = 1; --', reason: 'x' }] } }, '/x/c.json', env));
    expect(err.issues.map((i) => i.path)).toEqual(['cleanup.rules.0.where', 'invariants.0.green', 'invariants.0.quarantine.0.key', 'watch.probes.0.sql']);
    expect(err.message).toContain('invariant "sneaky": the green query contains a Delete statement');
    expect(err.message).toContain('watch probe "p": sql holds 2 statements; write it as one read-only SELECT');
  });

  it('refuses green pointing at the same database as blue', () => {
    const err = issuesOf(() => resolveConfig({ ...good, green: { dsn: 'env:B' } }, '/x/c.json', env));
    expect(err.message).toContain('green must be a different database');
  });

  it('says which file is malformed JSON and that a missing file is missing', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfg-'));
    const bad = path.join(dir, 'bad.json');
    fs.writeFileSync(bad, '{ "blue": ');
    expect(issuesOf(() => loadConfig(bad)).message).toMatch(/bad\.json is invalid:\n\s+- \(root\): not valid JSON/);
    expect(issuesOf(() => loadConfig(path.join(dir, 'none.json'))).message).toContain('file not found');
  });

  it('publishes a JSON Schema that forbids unknown keys', () => {
    const schema = configJsonSchema() as { additionalProperties?: boolean; properties: Record<string, unknown> };
    expect(schema.additionalProperties).toBe(false);
    expect(Object.keys(schema.properties)).toEqual(expect.arrayContaining(['blue', 'green', 'migrations', 'cleanup']));
  });
});

describe('redaction', () => {
  it('removes passwords from URL and keyword DSNs inside any text', () => {
    expect(redact('connect postgres://app:pa%40ss@h:5432/db failed')).toBe('connect postgres://app:***@h:5432/db failed');
    expect(redact("host=h password='x y' user=u")).toBe('host=h password=*** user=u');
    expect(describeDsn('postgresql://app:secret@db.internal:6432/hydra?sslmode=require')).toBe('postgresql://app@db.internal:6432/hydra');
  });
});
