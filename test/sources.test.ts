// Migration sources against a real PostgreSQL 15: every pop naming and tracking rule, the
// postgres-migrations runner's compatibility with the library itself, the external command's
// process handling, and syntax checking before anything runs.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { migrate } from 'postgres-migrations';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect, type Db } from '../src/db/connect.ts';
import { startCluster, type LocalCluster } from '../support/embedded.ts';
import { ExitCode, OperatorError, PostgresError, SourceError, StateError } from '../src/errors.ts';
import { checkAll, checkMigrationSql } from '../src/sources/check.ts';
import { commandSource } from '../src/sources/command.ts';
import { createSource } from '../src/sources/index.ts';
import { POP_FILE_PATTERN, popSource } from '../src/sources/pop.ts';
import { DISABLE_TRANSACTION, POSTGRES_MIGRATIONS_FILE_PATTERN, postgresMigrationsSource } from '../src/sources/postgres-migrations.ts';
import type { Migration, MigrationSource } from '../src/sources/types.ts';

let cluster: LocalCluster;
const open: Db[] = [];
const temps: string[] = [];

beforeAll(async () => {
  cluster = await startCluster({ name: 'sources' });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
  for (const dir of temps) fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(async () => {
  await Promise.all(open.splice(0).map((db) => db.end().catch(() => {})));
});

/** A fresh database with a random name; returns its DSN and a connection to it. */
async function freshDb(): Promise<{ dsn: string; db: Db }> {
  const name = `t_${Math.random().toString(36).slice(2, 10)}`;
  const admin = await connect('green', cluster.dsn());
  await admin.query(`CREATE DATABASE "${name}"`);
  await admin.end();
  const dsn = cluster.dsn(name);
  const db = await connect('green', dsn);
  open.push(db);
  return { dsn, db };
}

/** A new temp folder, removed after all tests. */
function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sources-'));
  temps.push(dir);
  return dir;
}

/** Writes `files` into a new temp folder and returns its path. */
function folder(files: Record<string, string>): string {
  const dir = tempDir();
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  return dir;
}

async function applyPending(source: MigrationSource, db: Db): Promise<Migration[]> {
  const pending = await source.pending(db);
  for (const m of pending) await source.apply(db, m);
  return pending;
}

async function rows<T = Record<string, unknown>>(db: Db, sql: string): Promise<T[]> {
  return (await db.query(sql)).rows as T[];
}

async function tableExists(db: Db, name: string): Promise<boolean> {
  return (await rows<{ t: string | null }>(db, `SELECT to_regclass('${name}')::text AS t`))[0]?.t != null;
}

async function caught(p: Promise<unknown>): Promise<OperatorError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(OperatorError);
  return err as OperatorError;
}

const V1 = '20200101000000000001';
const V2 = '20200101000000000002';
const V3 = '20200101000000000003';

describe('pop source', () => {
  it('applies every version in order, each with a tracking row, creating schema_migration like pop', async () => {
    const { db } = await freshDb();
    const dir = folder({
      [`${V2}_add_col.up.sql`]: 'ALTER TABLE a ADD COLUMN b int;',
      [`${V1}_create_a.up.sql`]: 'CREATE TABLE a (id int);',
      [`${V1}_create_a.down.sql`]: 'DROP TABLE a;',
      'README.md': 'not a migration',
    });
    const source = popSource(dir);
    expect(source.kind).toBe('pop');
    const applied = await applyPending(source, db);
    expect(applied.map((m) => [m.id, m.name])).toEqual([
      [V1, 'create_a'],
      [V2, 'add_col'],
    ]);
    expect(applied[0]?.file).toBe(path.join(dir, `${V1}_create_a.up.sql`));
    expect(await rows(db, 'SELECT version, version_self FROM schema_migration ORDER BY version')).toEqual([
      { version: V1, version_self: 0 },
      { version: V2, version_self: 0 },
    ]);
    const unique = await rows(db, `SELECT indexdef FROM pg_indexes WHERE tablename = 'schema_migration'`);
    expect(JSON.stringify(unique)).toMatch(/UNIQUE INDEX .* \(version\)/);
    expect(await source.pending(db)).toEqual([]);
  });

  it('uses the .postgres. file of a version over the generic one and ignores other dialects and down files', async () => {
    const { db } = await freshDb();
    const dir = folder({
      [`${V1}_t.up.sql`]: 'CREATE TABLE generic_won (id int);',
      [`${V1}_t.postgres.up.sql`]: 'CREATE TABLE postgres_won (id int);',
      [`${V1}_t.mysql.up.sql`]: 'this is mysql and would not parse;',
      [`${V2}_only_others.sqlite3.up.sql`]: 'sqlite;',
      [`${V2}_only_others.cockroach.up.sql`]: 'cockroach;',
      [`${V3}_generic.up.sql`]: 'CREATE TABLE third (id int);',
      [`${V3}_generic.postgres.down.sql`]: 'DROP TABLE third;',
    });
    const all = await popSource(dir).all();
    expect(all.map((m) => path.basename(m.file ?? ''))).toEqual([`${V1}_t.postgres.up.sql`, `${V3}_generic.up.sql`]);
    await applyPending(popSource(dir), db);
    expect(await tableExists(db, 'postgres_won')).toBe(true);
    expect(await tableExists(db, 'generic_won')).toBe(false);
  });

  it('rejects a .sql file whose name does not follow the pop pattern, naming the file and the pattern', async () => {
    const dir = folder({
      [`${V1}_ok.up.sql`]: 'SELECT 1;',
      '2020_short_version.up.sql': 'SELECT 1;',
      [`${V2}_no_direction.sql`]: 'SELECT 1;',
    });
    const err = await caught(popSource(dir).all());
    expect(err).toBeInstanceOf(SourceError);
    expect(err.exitCode).toBe(ExitCode.source);
    expect(err.message).toContain('2020_short_version.up.sql');
    expect(err.message).toContain(`${V2}_no_direction.sql`);
    expect(err.message).toContain(POP_FILE_PATTERN);
  });

  it('rejects files meant as migrations that no pop rule runs (dialect typo, upper-case extension, backup, fizz), naming each', async () => {
    const dir = folder({
      [`${V1}_ok.up.sql`]: 'SELECT 1;',
      [`${V2}_x.postgress.up.sql`]: 'SELECT 1;',
      [`${V2}_y.postgres.up.SQL`]: 'SELECT 1;',
      [`${V3}_z.up.sql.bak`]: 'SELECT 1;',
      [`${V3}_w.up.fizz`]: 'create_table("w")',
    });
    const err = await caught(popSource(dir).all());
    expect(err).toBeInstanceOf(SourceError);
    expect(err.detail.files).toEqual([`${V2}_x.postgress.up.sql (unknown dialect "postgress")`, `${V2}_y.postgres.up.SQL`, `${V3}_w.up.fizz`, `${V3}_z.up.sql.bak`]);
    expect(err.message).toContain(POP_FILE_PATTERN);
  });

  it('leaves down files of any case and dialect, READMEs and dotfiles alone', async () => {
    const dir = folder({
      [`${V1}_ok.up.sql`]: 'SELECT 1;',
      [`${V1}_ok.down.sql`]: 'SELECT 1;',
      [`${V1}_ok.postgress.DOWN.SQL`]: 'SELECT 1;',
      [`${V1}_ok.down.fizz`]: 'drop_table("ok")',
      'README.md': '# migrations',
      '.gitkeep': '',
    });
    expect((await popSource(dir).all()).map((m) => m.id)).toEqual([V1]);
  });

  it('treats a version missing from schema_migration as pending even when it sorts below the newest applied', async () => {
    const { db } = await freshDb();
    const dir = folder({
      [`${V1}_networks.up.sql`]: 'CREATE TABLE networks (id int);',
      [`${V2}_b.up.sql`]: 'CREATE TABLE b (id int);',
      [`${V3}_c.up.sql`]: 'CREATE TABLE c (id int);',
    });
    await db.query(`CREATE TABLE schema_migration (version varchar(48) NOT NULL, version_self int NOT NULL DEFAULT 0)`);
    await db.query(`INSERT INTO schema_migration (version) VALUES ($1)`, [V2]);
    const source = popSource(dir);
    expect((await source.pending(db)).map((m) => m.id)).toEqual([V1, V3]);
  });

  it('never writes when asked what is pending, not even the tracking table', async () => {
    const { db } = await freshDb();
    const dir = folder({ [`${V1}_a.up.sql`]: 'CREATE TABLE a (id int);' });
    expect((await popSource(dir).pending(db)).map((m) => m.id)).toEqual([V1]);
    expect(await tableExists(db, 'schema_migration')).toBe(false);
  });

  it('runs each file in its own SERIALIZABLE transaction', async () => {
    const { db } = await freshDb();
    const dir = folder({ [`${V1}_iso.up.sql`]: `CREATE TABLE iso AS SELECT current_setting('transaction_isolation') AS level;` });
    const [m] = await popSource(dir).all();
    expect(m?.transaction).toBe('serializable');
    await applyPending(popSource(dir), db);
    expect(await rows(db, 'SELECT level FROM iso')).toEqual([{ level: 'serializable' }]);
  });

  it('runs an .autocommit file outside a transaction, statement by statement, then records it', async () => {
    const { db } = await freshDb();
    const dir = folder({
      [`${V1}_table.up.sql`]: 'CREATE TABLE a (x int, y int);',
      [`${V2}_indexes.postgres.autocommit.up.sql`]: '-- two concurrent builds in one file\nCREATE INDEX CONCURRENTLY a_x ON a (x);\nCREATE INDEX CONCURRENTLY a_y ON a (y);\n',
    });
    const all = await popSource(dir).all();
    expect(all.map((m) => [m.name, m.transaction])).toEqual([
      ['table', 'serializable'],
      ['indexes', 'none'],
    ]);
    await applyPending(popSource(dir), db);
    expect((await rows(db, `SELECT indexname FROM pg_indexes WHERE tablename = 'a' ORDER BY 1`)).map((r) => r.indexname)).toEqual(['a_x', 'a_y']);
    expect((await rows(db, 'SELECT version FROM schema_migration ORDER BY 1')).map((r) => r.version)).toEqual([V1, V2]);
  });

  it('records empty and comment-only files', async () => {
    const { db } = await freshDb();
    const dir = folder({
      [`${V1}_empty.up.sql`]: '',
      [`${V2}_comment.up.sql`]: '-- nothing to do on postgres\n',
      [`${V3}_comment.autocommit.up.sql`]: '/* nothing either */\n',
    });
    await applyPending(popSource(dir), db);
    expect((await rows(db, 'SELECT version FROM schema_migration ORDER BY 1')).map((r) => r.version)).toEqual([V1, V2, V3]);
  });

  it('leaves no partial change and no tracking row when a file fails, and says where', async () => {
    const { db } = await freshDb();
    const dir = folder({ [`${V1}_broken.up.sql`]: 'CREATE TABLE half (id int);\nINSERT INTO half VALUES (1);\nSELECT no_such_column FROM half;\n' });
    const source = popSource(dir);
    const [m] = await source.pending(db);
    const err = await caught(source.apply(db, m as Migration));
    expect(err).toBeInstanceOf(PostgresError);
    expect(err.exitCode).toBe(ExitCode.postgres);
    expect(err.message).toContain('SQLSTATE 42703');
    expect(err.message).toContain(`${m?.file}:3:8`);
    expect(await tableExists(db, 'half')).toBe(false);
    expect(await rows(db, 'SELECT version FROM schema_migration')).toEqual([]);
    expect((await source.pending(db)).map((p) => p.id)).toEqual([V1]);
  });

  it('reports the line and column of the failing statement of an autocommit file and records nothing', async () => {
    const { db } = await freshDb();
    const dir = folder({
      [`${V1}_ix.autocommit.up.sql`]: 'CREATE TABLE t (a int);\n\nCREATE INDEX CONCURRENTLY t_a ON t (a);\nUPDATE t SET a = nope;\nCREATE INDEX CONCURRENTLY t_b ON t (b);\n',
    });
    const source = popSource(dir);
    const [m] = await source.pending(db);
    const err = await caught(source.apply(db, m as Migration));
    expect(err.message).toContain('SQLSTATE 42703');
    expect(err.message).toContain(`${m?.file}:4:18`);
    // Outside a transaction the statements before the failing one stay; the version stays pending.
    expect(await tableExists(db, 't_a')).toBe(true);
    expect(await rows(db, 'SELECT version FROM schema_migration')).toEqual([]);
  });

  it('points at the start of the failing statement of an autocommit file when Postgres gives no position', async () => {
    const { db } = await freshDb();
    const dir = folder({ [`${V1}_ix.autocommit.up.sql`]: 'CREATE TABLE t (a int);\n\n  CREATE INDEX CONCURRENTLY t_b ON t (b);\n' });
    const source = popSource(dir);
    const [m] = await source.pending(db);
    const err = await caught(source.apply(db, m as Migration));
    expect(err.message).toContain('SQLSTATE 42703');
    expect(err.message).toContain(`${m?.file}:3:3`);
  });

  it('refuses to apply a version that is already recorded', async () => {
    const { db } = await freshDb();
    const dir = folder({ [`${V1}_a.up.sql`]: 'CREATE TABLE a (id int);' });
    const source = popSource(dir);
    const [m] = await source.all();
    await source.apply(db, m as Migration);
    expect(await caught(source.apply(db, m as Migration))).toBeInstanceOf(StateError);
  });
});

describe('postgres-migrations source', () => {
  it('lists every file as pending on a fresh database and applies them with rows the library itself accepts', async () => {
    const { db } = await freshDb();
    const dir = folder({
      '1_create.sql': 'CREATE TABLE pm (id int);',
      '2_fill.sql': 'INSERT INTO pm VALUES (1);',
    });
    const source = postgresMigrationsSource(dir);
    expect((await source.pending(db)).map((m) => [m.id, m.name, m.transaction])).toEqual([
      ['1', 'create', 'default'],
      ['2', 'fill', 'default'],
    ]);
    expect(await tableExists(db, 'migrations')).toBe(false);
    await applyPending(source, db);
    expect(await rows(db, 'SELECT id, name FROM migrations ORDER BY id')).toEqual([
      { id: 0, name: 'create-migrations-table' },
      { id: 1, name: 'create' },
      { id: 2, name: 'fill' },
    ]);
    // The library checks every hash and finds nothing to do, then applies a file added later.
    expect(await migrate({ client: db }, dir)).toEqual([]);
    fs.writeFileSync(path.join(dir, '3_more.sql'), 'INSERT INTO pm VALUES (3);');
    expect((await migrate({ client: db }, dir)).map((m) => m.id)).toEqual([3]);
    expect(await source.pending(db)).toEqual([]);
    expect(await rows(db, 'SELECT id FROM pm ORDER BY id')).toEqual([{ id: 1 }, { id: 3 }]);
  });

  it('lists only ids above the newest one the library already applied', async () => {
    const { db } = await freshDb();
    const dir = folder({ '1_a.sql': 'CREATE TABLE a (id int);' });
    await migrate({ client: db }, dir);
    fs.writeFileSync(path.join(dir, '2_b.sql'), 'CREATE TABLE b (id int);');
    fs.writeFileSync(path.join(dir, '3_c.sql'), 'CREATE TABLE c (id int);');
    const source = postgresMigrationsSource(dir);
    expect((await source.pending(db)).map((m) => m.id)).toEqual(['2', '3']);
    await applyPending(source, db);
    expect(await tableExists(db, 'c')).toBe(true);
    expect(await source.pending(db)).toEqual([]);
  });

  it('runs a disable-transaction file outside a transaction', async () => {
    const { db } = await freshDb();
    const dir = folder({
      '1_table.sql': 'CREATE TABLE a (x int);',
      '2_index.sql': `${DISABLE_TRANSACTION}\nCREATE INDEX CONCURRENTLY a_x ON a (x);\n`,
    });
    const source = postgresMigrationsSource(dir);
    expect((await source.all()).map((m) => m.transaction)).toEqual(['default', 'none']);
    await applyPending(source, db);
    expect(await rows(db, `SELECT indexname FROM pg_indexes WHERE tablename = 'a'`)).toEqual([{ indexname: 'a_x' }]);
    expect(await migrate({ client: db }, dir)).toEqual([]);
  });

  it('refuses a file that changed after it was applied, as the library would', async () => {
    const { db } = await freshDb();
    const dir = folder({ '1_a.sql': 'CREATE TABLE a (id int);' });
    const source = postgresMigrationsSource(dir);
    await applyPending(source, db);
    fs.writeFileSync(path.join(dir, '1_a.sql'), 'CREATE TABLE a (id bigint);');
    const err = await caught(source.pending(db));
    expect(err).toBeInstanceOf(SourceError);
    expect(err.message).toContain('1_a.sql');
  });

  it('refuses to apply a migration out of id order', async () => {
    const { db } = await freshDb();
    const dir = folder({ '1_a.sql': 'CREATE TABLE a (id int);', '2_b.sql': 'CREATE TABLE b (id int);' });
    const source = postgresMigrationsSource(dir);
    const [, second] = await source.pending(db);
    const err = await caught(source.apply(db, second as Migration));
    expect(err).toBeInstanceOf(StateError);
    expect(await tableExists(db, 'b')).toBe(false);
  });

  it('accepts every name the library documents (separator - or none, leading zeros, upper-case extension)', async () => {
    const dir = folder({ '1-a.sql': 'SELECT 1;', '02_b.SQL': 'SELECT 2;', '3c.sql': 'SELECT 3;', 'README.md': '# notes' });
    expect((await postgresMigrationsSource(dir).all()).map((m) => [m.id, path.basename(m.file ?? '')])).toEqual([
      ['1', '1-a.sql'],
      ['2', '02_b.SQL'],
      ['3', '3c.sql'],
    ]);
  });

  it('rejects every file meant as a migration that the library would skip or fail on, naming each and the pattern', async () => {
    const dir = folder({ '1_a.sql': 'SELECT 1;', 'name.sql': 'SELECT 1;', '2_b.sql.bak': 'SELECT 1;', '2_b.psql': 'SELECT 1;', 'README.md': '# notes' });
    const err = await caught(postgresMigrationsSource(dir).all());
    expect(err).toBeInstanceOf(SourceError);
    expect(err.detail.files).toEqual(['2_b.psql', '2_b.sql.bak', 'name.sql']);
    expect(err.message).toContain(POSTGRES_MIGRATIONS_FILE_PATTERN);
  });

  it('rejects a folder with a gap in its ids', async () => {
    const dir = folder({ '1_a.sql': 'SELECT 1;', '3_c.sql': 'SELECT 1;' });
    const err = await caught(postgresMigrationsSource(dir).all());
    expect(err).toBeInstanceOf(SourceError);
    expect(err.message).toContain('3_c.sql');
  });

  it('leaves no partial change and no tracking row when a file fails, and says where', async () => {
    const { db } = await freshDb();
    const dir = folder({ '1_broken.sql': 'CREATE TABLE half (id int);\nINSERT INTO half VALUES (1);\nINSERT INTO half VALUES (1, 2);\n' });
    const source = postgresMigrationsSource(dir);
    const [m] = await source.pending(db);
    const err = await caught(source.apply(db, m as Migration));
    expect(err).toBeInstanceOf(PostgresError);
    expect(err.message).toContain('SQLSTATE 42601');
    expect(err.message).toContain(`${m?.file}:3:`);
    expect(await tableExists(db, 'half')).toBe(false);
    expect(await rows(db, 'SELECT id FROM migrations WHERE id > 0')).toEqual([]);
    expect((await source.pending(db)).map((p) => p.id)).toEqual(['1']);
  });
});

describe('command source', () => {
  it('passes an argument with spaces verbatim and gives the child the green DSN', async () => {
    const { dsn, db } = await freshDb();
    const out = path.join(tempDir(), 'out.json');
    const script = `
      const fs = require('fs');
      const pg = require('pg');
      const c = new pg.Client({ connectionString: process.env.DATABASE_URL });
      c.connect().then(() => c.query('CREATE TABLE made_by_command (id int)')).then(() => c.end()).then(() => {
        fs.writeFileSync(process.argv[1], JSON.stringify({ args: process.argv.slice(1), dsn: process.env.DATABASE_URL }));
      });`;
    const source = commandSource({ kind: 'command', argv: [process.execPath, '-e', script, out, 'a  b "c"'] }, { greenDsn: dsn });
    const pending = await source.pending(db);
    expect(pending).toHaveLength(1);
    expect(pending[0]).toMatchObject({ id: 'command', file: null, sql: '' });
    await source.apply(db, pending[0] as Migration);
    expect(JSON.parse(fs.readFileSync(out, 'utf8'))).toEqual({ args: [out, 'a  b "c"'], dsn });
    expect(await tableExists(db, 'made_by_command')).toBe(true);
  });

  it('puts the DSN in the variable named by dsnEnv', async () => {
    const { dsn, db } = await freshDb();
    const source = commandSource(
      { kind: 'command', argv: [process.execPath, '-e', 'process.exit(process.env.GREEN_URL === process.env.EXPECTED ? 0 : 9)'], env: { EXPECTED: dsn }, dsnEnv: 'GREEN_URL' },
      { greenDsn: dsn },
    );
    expect(source.describe()).toContain('$GREEN_URL');
    const [m] = await source.pending(db);
    await expect(source.apply(db, m as Migration)).resolves.toBeUndefined();
  });

  it('turns a non-zero exit into a SourceError with the exit code and the redacted last 20 lines of stderr', async () => {
    const { dsn, db } = await freshDb();
    const script = `for (let i = 1; i <= 30; i++) console.error('line ' + i); console.error('dsn ' + process.env.DATABASE_URL); process.exit(3);`;
    const source = commandSource({ kind: 'command', argv: [process.execPath, '-e', script] }, { greenDsn: dsn });
    const [m] = await source.pending(db);
    const err = await caught(source.apply(db, m as Migration));
    expect(err).toBeInstanceOf(SourceError);
    expect(err.exitCode).toBe(ExitCode.source);
    expect(err.message).toContain('exited with code 3');
    expect(err.message).toContain('line 30');
    expect(err.message).toContain('line 12');
    expect(err.message).not.toContain('line 11\n');
    expect(err.message).not.toContain(cluster.password);
    expect(err.message).toContain('postgres://postgres:***@');
    expect(err.detail.exitCode).toBe(3);
  });

  it('kills the whole process group when the command runs past its timeout', async () => {
    const { dsn, db } = await freshDb();
    const pids = path.join(tempDir(), 'pids');
    const script = `
      const { spawn } = require('child_process');
      const g = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'inherit' });
      require('fs').writeFileSync(process.env.PIDS, process.pid + ' ' + g.pid);
      setInterval(() => {}, 1000);`;
    const source = commandSource({ kind: 'command', argv: [process.execPath, '-e', script], env: { PIDS: pids }, timeoutSeconds: 1 }, { greenDsn: dsn });
    const [m] = await source.pending(db);
    const err = await caught(source.apply(db, m as Migration));
    expect(err).toBeInstanceOf(SourceError);
    expect(err.message).toContain('timed out after 1s');
    const [child, grandchild] = fs.readFileSync(pids, 'utf8').split(' ').map(Number);
    await vi.waitFor(() => {
      expect(running(child as number)).toBe(false);
      expect(running(grandchild as number)).toBe(false);
    });
  });

  it('reports a command that cannot be started', async () => {
    const { dsn, db } = await freshDb();
    const source = commandSource({ kind: 'command', argv: ['/nonexistent/migrate-tool', 'up'] }, { greenDsn: dsn });
    const [m] = await source.pending(db);
    const err = await caught(source.apply(db, m as Migration));
    expect(err).toBeInstanceOf(SourceError);
    expect(err.message).toContain('ENOENT');
  });
});

/** True while the process exists and is not a zombie waiting to be reaped. */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('syntax check', () => {
  const broken: Migration = {
    id: V1,
    name: 'broken',
    file: '/migrations/20200101000000000001_broken.up.sql',
    sql: 'CREATE TABLE a (id int);\n-- the typo is below\nALTER TABLE a ADD COLUMN b int DEFALT 0;\n',
    transaction: 'serializable',
  };

  it('reports file:line:column, SQLSTATE 42601 and the parser message for a syntax error on line 3', async () => {
    const err = await caught(checkMigrationSql(broken));
    expect(err).toBeInstanceOf(PostgresError);
    expect(err.message).toContain(`${broken.file}:3:32`);
    expect(err.message).toContain('SQLSTATE 42601');
    expect(err.message).toContain('syntax error at or near "DEFALT"');
    expect(err.hint).toBe(`fix the SQL in ${broken.file}; nothing has been run`);
    expect(err.detail).toMatchObject({ sqlstate: '42601', line: 3, column: 32 });
  });

  it('counts columns in characters, not bytes, after non-ASCII text', async () => {
    const err = await caught(checkMigrationSql({ ...broken, sql: `SELECT 'ünïcödé', 1 FORM a;` }));
    expect(err.message).toContain(`${broken.file}:1:26`);
  });

  it('accepts valid, empty and comment-only SQL', async () => {
    for (const sql of ['CREATE TABLE a (id int); CREATE INDEX CONCURRENTLY i ON a (id);', '', '  \n', '-- just a note\n']) {
      await expect(checkMigrationSql({ ...broken, sql })).resolves.toBeUndefined();
    }
  });

  it('collects the syntax errors of all files into one error', async () => {
    const other: Migration = { ...broken, id: V2, file: '/migrations/other.up.sql', sql: 'SELECT 1;\nSELEC 2;' };
    const fine: Migration = { ...broken, id: V3, file: '/migrations/fine.up.sql', sql: 'SELECT 1;' };
    const err = await caught(checkAll([broken, fine, other]));
    expect(err).toBeInstanceOf(PostgresError);
    expect(err.message).toContain('2 syntax errors');
    expect(err.message).toContain(`${broken.file}:3:32`);
    expect(err.message).toContain('/migrations/other.up.sql:2:1');
    expect(err.message).not.toContain('fine.up.sql');
    expect(err.hint).toContain(`${broken.file}, /migrations/other.up.sql`);
    await expect(checkAll([fine])).resolves.toBeUndefined();
  });
});

describe('createSource', () => {
  it('builds the source the config names, each describing itself in a sentence', async () => {
    const dir = folder({});
    const sources = [
      createSource({ kind: 'pop', dir }, { greenDsn: 'postgres://x@h/db' }),
      createSource({ kind: 'postgres-migrations', dir }, { greenDsn: 'postgres://x@h/db' }),
      createSource({ kind: 'command', argv: ['hydra', 'migrate', 'sql', 'up'] }, { greenDsn: 'postgres://x@h/db' }),
    ];
    expect(sources.map((s) => s.kind)).toEqual(['pop', 'postgres-migrations', 'command']);
    for (const s of sources) expect(s.describe()).toMatch(/^[a-zA-Z].+/);
    expect(sources[0]?.describe()).toContain(dir);
    expect(sources[2]?.describe()).toContain('hydra migrate sql up');
    expect(await sources[0]?.all()).toEqual([]);
    expect(await sources[1]?.all()).toEqual([]);
  });
});
