// A folder in postgres-migrations format (`<int>_name.sql`). The library itself reads and validates
// the folder and computes each file's hash; we run the files one at a time because the library's
// `migrate()` only applies everything pending at once and rethrows Postgres errors as plain Errors
// (no SQLSTATE, no position), which would lose file:line:column. Our runner writes the same
// `migrations` rows the library writes (id, name, sha1(fileName + sql) hash, executed_at default),
// creates that table as the library's own migration 0, and takes the library's advisory lock, so a
// later `migrate()` by the application accepts what we applied and continues after it.

import { loadMigrationFiles } from 'postgres-migrations';
import fs from 'node:fs/promises';
import path from 'node:path';
import { query, type Db } from '../db/connect.ts';
import { SourceError, StateError } from '../errors.ts';
import { runWithTracking, type Migration, type MigrationSource } from './types.ts';

/** The file name shape the library accepts (its README: separator `_`, `-` or none; extension in any case), for error messages. */
export const POSTGRES_MIGRATIONS_FILE_PATTERN = '<id>_<name>.sql (separator _ or - or none, .sql or .js in any case, ids 1, 2, 3, ... without gaps)';

// The library's own file-name rule (file-name-parser.js), which the application's `migrate()` applies too.
const FILE_RULE = /^\d+[-_]?.*\.(sql|js)$/i;
// What an operator meant as a migration: a leading id digit, or `.sql`/`.js` anywhere in the name
// (`1_a.sql.bak`). The library skips such a file silently or fails on the first one; we name them all.
const LOOKS_LIKE_MIGRATION = /^\d|\.(sql|js)(\.|$)/i;

/** The marker the library looks for anywhere in a file to run it outside a transaction. */
export const DISABLE_TRANSACTION = '-- postgres-migrations disable-transaction';

// The key postgres-migrations' own withAdvisoryLock uses.
const LIBRARY_LOCK = '-8525285245963000605';
const INSERT_TRACKING_ROW = 'INSERT INTO migrations ("id", "name", "hash") VALUES ($1, $2, $3)';

type LibraryMigration = Awaited<ReturnType<typeof loadMigrationFiles>>[number];

interface AppliedRow {
  id: number;
  name: string;
  hash: string;
}

/** Refuses every file that looks like a migration but matches no rule, all named in one error. */
async function checkNames(dir: string): Promise<void> {
  let names: string[];
  try {
    names = (await fs.readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
  } catch (err) {
    throw new SourceError(`cannot read the postgres-migrations folder ${dir} (${(err as NodeJS.ErrnoException).code ?? String(err)})`, 'check migrations.dir in the config', { dir });
  }
  const bad = names.filter((n) => LOOKS_LIKE_MIGRATION.test(n) && !FILE_RULE.test(n)).sort();
  if (!bad.length) return;
  throw new SourceError(
    `${bad.length === 1 ? 'a file' : `${bad.length} files`} in ${dir} ${bad.length === 1 ? 'looks' : 'look'} like a migration but ${bad.length === 1 ? 'does' : 'do'} not match the postgres-migrations pattern ${POSTGRES_MIGRATIONS_FILE_PATTERN}, so ${bad.length === 1 ? 'it' : 'they'} would never run: ${bad.join(', ')}`,
    `rename each to ${POSTGRES_MIGRATIONS_FILE_PATTERN}, or move it out of ${dir}`,
    { dir, files: bad, expected: POSTGRES_MIGRATIONS_FILE_PATTERN },
  );
}

/** Reads the folder through the library (adds its migration 0, checks names and consecutive ids). */
async function load(dir: string): Promise<LibraryMigration[]> {
  await checkNames(dir);
  try {
    return await loadMigrationFiles(dir);
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new SourceError(`cannot load postgres-migrations folder ${dir}: ${reason}`, `check migrations.dir; files must be named <id>_<name>.sql with ids 1, 2, 3, ... without gaps`, { dir });
  }
}

function toMigration(dir: string, lm: LibraryMigration): Migration {
  // Migration 0 is the library's own table creation and lives inside the package.
  const file = lm.id === 0 ? null : path.join(dir, lm.fileName);
  return { id: String(lm.id), name: lm.name, file, sql: lm.sql, transaction: lm.sql.includes(DISABLE_TRANSACTION) ? 'none' : 'default' };
}

async function appliedRows(db: Db): Promise<AppliedRow[] | null> {
  const exists = await query<{ t: string | null }>(db, `SELECT to_regclass('migrations')::text AS t`, [], { side: 'green' });
  if (!exists.rows[0]?.t) return null;
  return (await query<AppliedRow>(db, 'SELECT id, name, hash FROM migrations ORDER BY id', [], { side: 'green' })).rows;
}

/** The library refuses to run when an applied file changed; refuse the same way, before anything runs. */
function checkHashes(dir: string, files: LibraryMigration[], applied: AppliedRow[]): void {
  const byId = new Map(applied.map((r) => [r.id, r.hash]));
  const changed = files.filter((f) => byId.has(f.id) && byId.get(f.id) !== f.hash).map((f) => f.fileName);
  if (changed.length > 0) {
    throw new SourceError(
      `${changed.join(', ')} in ${dir} changed after being applied (hash differs from the migrations table)`,
      'restore the applied files as they were and put the change in a new migration',
      { dir, files: changed },
    );
  }
}

function nextId(applied: AppliedRow[]): number {
  return applied.reduce((max, r) => Math.max(max, r.id), -1) + 1;
}

/** A postgres-migrations folder as a MigrationSource. */
export function postgresMigrationsSource(dir: string): MigrationSource {
  const root = path.resolve(dir);
  return {
    kind: 'postgres-migrations',
    describe: () => `postgres-migrations files from ${root}, tracked in the migrations table`,
    async all() {
      return (await load(root)).filter((lm) => lm.id > 0).map((lm) => toMigration(root, lm));
    },
    async pending(db) {
      const files = await load(root);
      const applied = await appliedRows(db);
      if (applied !== null) checkHashes(root, files, applied);
      const from = applied === null ? 1 : Math.max(1, nextId(applied));
      return files.filter((lm) => lm.id >= from).map((lm) => toMigration(root, lm));
    },
    async apply(db, m, opts) {
      const locked = await query<{ ok: boolean }>(db, `SELECT pg_try_advisory_lock(${LIBRARY_LOCK}) AS ok`, [], { side: 'green' });
      if (!locked.rows[0]?.ok) {
        throw new StateError('another postgres-migrations run holds its advisory lock on green', "wait for the application's own migration run to finish, then rerun with --resume");
      }
      try {
        const files = await load(root);
        const lm = files.find((f) => String(f.id) === m.id && f.id > 0);
        if (!lm || lm.sql !== m.sql) {
          throw new SourceError(`${m.file ?? m.name} changed or disappeared since it was read`, 'run `migrate plan` again and review the new SQL', { file: m.file });
        }
        let applied = await appliedRows(db);
        if (applied === null) {
          const zero = files.find((f) => f.id === 0);
          if (zero) await runWithTracking(db, toMigration(root, zero), { text: INSERT_TRACKING_ROW, values: [zero.id, zero.name, zero.hash] });
          applied = (await appliedRows(db)) ?? [];
        }
        checkHashes(root, files, applied);
        // The library treats ids as a gapless sequence; applying out of order would break its next run.
        const expected = nextId(applied);
        if (lm.id !== expected) {
          throw new StateError(`${lm.fileName} is migration ${lm.id}, but the next one the migrations table expects is ${expected}`, 'apply pending migrations in id order, as `migrate plan` lists them');
        }
        await runWithTracking(db, opts?.recordOnly ? { ...m, sql: '' } : m, { text: INSERT_TRACKING_ROW, values: [lm.id, lm.name, lm.hash] });
      } finally {
        await db.query(`SELECT pg_advisory_unlock(${LIBRARY_LOCK})`).catch(() => {});
      }
    },
  };
}
