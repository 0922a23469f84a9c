// Reads a Hydra/pop migration folder and applies it the way pop (gobuffalo/pop, ory/x popx) does:
// one `.up.sql` per version, the `.postgres.` variant winning over the generic file, tracking in
// `schema_migration`. Unlike a "newest applied" cursor, every version missing from that table is
// pending: Hydra v2 ships a `networks` migration whose version sorts below ones already applied.

import fs from 'node:fs/promises';
import path from 'node:path';
import { query, type Db } from '../db/connect.ts';
import { SourceError, StateError } from '../errors.ts';
import { runWithTracking, type Migration, type MigrationSource } from './types.ts';

/** The file name shape pop accepts, for error messages. */
export const POP_FILE_PATTERN = '<20-digit version>_<name>[.<dialect>][.autocommit].up.sql';

// The dialect group must not swallow `.autocommit` when no dialect is given.
const UP_FILE = /^(\d{20})_([^.]+)(?:\.(?!autocommit\.)([a-z0-9]+))?(\.autocommit)?\.up\.sql$/;
const POSTGRES_DIALECTS = new Set(['postgres', 'postgresql', 'pg']);
// pop's other dialect names and aliases: those files are meant for other databases and skipped.
// Any other word in the dialect slot is a typo (`postgress`) that would silently never run.
const OTHER_DIALECTS = new Set(['cockroach', 'cockroachdb', 'crdb', 'mysql', 'mariadb', 'sqlite', 'sqlite3', 'mssql', 'sqlserver']);
// Down migrations never run in an upgrade, whatever their dialect or case.
const DOWN_FILE = /\.down\.(sql|fizz)$/i;
// What an operator meant as a migration: a leading version digit, or `.sql`/`.fizz`/`.up.` anywhere
// in the name in any case (`.up.SQL`, `.up.sql.bak`). READMEs and dotfiles are left alone.
const LOOKS_LIKE_MIGRATION = /^\d|\.(sql|fizz)(\.|$)|\.up\./i;

// Same shape as popx creates it; the unique index is what makes a double apply fail instead of repeat.
const CREATE_TRACKING_TABLE = `
CREATE TABLE IF NOT EXISTS schema_migration (version varchar(48) NOT NULL, version_self int NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS schema_migration_version_idx ON schema_migration (version);`;
const INSERT_TRACKING_ROW = 'INSERT INTO schema_migration (version, version_self) VALUES ($1, 0)';

interface Candidate {
  version: string;
  name: string;
  fileName: string;
  postgres: boolean;
  autocommit: boolean;
}

/** Lists the folder and picks one file per version; every naming problem is reported at once. */
async function chooseFiles(dir: string): Promise<Candidate[]> {
  let entries: string[];
  try {
    entries = (await fs.readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
  } catch (err) {
    throw new SourceError(`cannot read the pop migrations folder ${dir} (${(err as NodeJS.ErrnoException).code ?? String(err)})`, 'check migrations.dir in the config');
  }
  const bad: string[] = [];
  const byVersion = new Map<string, { postgres: Candidate[]; generic: Candidate[] }>();
  for (const fileName of entries.sort()) {
    if (!LOOKS_LIKE_MIGRATION.test(fileName) || DOWN_FILE.test(fileName)) continue;
    const m = UP_FILE.exec(fileName);
    if (!m) {
      bad.push(fileName);
      continue;
    }
    const [, version = '', name = '', dialect, autocommit] = m;
    if (dialect !== undefined && !POSTGRES_DIALECTS.has(dialect)) {
      if (!OTHER_DIALECTS.has(dialect)) bad.push(`${fileName} (unknown dialect "${dialect}")`);
      continue;
    }
    const c: Candidate = { version, name, fileName, postgres: dialect !== undefined, autocommit: autocommit !== undefined };
    const slot = byVersion.get(version) ?? { postgres: [], generic: [] };
    (c.postgres ? slot.postgres : slot.generic).push(c);
    byVersion.set(version, slot);
  }
  if (bad.length > 0) {
    throw new SourceError(
      `${bad.length === 1 ? 'a file' : `${bad.length} files`} in ${dir} ${bad.length === 1 ? 'looks' : 'look'} like a migration but ${bad.length === 1 ? 'does' : 'do'} not match the pop pattern ${POP_FILE_PATTERN}, so ${bad.length === 1 ? 'it' : 'they'} would never run: ${bad.join(', ')}`,
      `rename each to ${POP_FILE_PATTERN} (lower case; dialect postgres, or another database's: ${[...OTHER_DIALECTS].join(', ')}), or move it out of ${dir}; down files (.down.sql) are ignored`,
      { dir, files: bad, expected: POP_FILE_PATTERN },
    );
  }
  const chosen: Candidate[] = [];
  const ambiguous: string[] = [];
  for (const [version, slot] of byVersion) {
    const pick = slot.postgres.length > 0 ? slot.postgres : slot.generic;
    if (pick.length > 1) ambiguous.push(`${version} (${pick.map((c) => c.fileName).join(', ')})`);
    else if (pick[0]) chosen.push(pick[0]);
  }
  if (ambiguous.length > 0) {
    throw new SourceError(`more than one up file for the same version in ${dir}: ${ambiguous.join('; ')}`, 'keep one up file per version and dialect', { dir, versions: ambiguous });
  }
  // 20-digit versions: string order is numeric order.
  return chosen.sort((a, b) => (a.version < b.version ? -1 : a.version > b.version ? 1 : 0));
}

async function appliedVersions(db: Db): Promise<Set<string> | null> {
  const exists = await query<{ t: string | null }>(db, `SELECT to_regclass('schema_migration')::text AS t`, [], { side: 'green' });
  if (!exists.rows[0]?.t) return null;
  const { rows } = await query<{ version: string }>(db, 'SELECT version FROM schema_migration', [], { side: 'green' });
  return new Set(rows.map((r) => r.version));
}

/** A Hydra/pop migration folder as a MigrationSource. */
export function popSource(dir: string): MigrationSource {
  const root = path.resolve(dir);
  const all = async (): Promise<Migration[]> =>
    Promise.all(
      (await chooseFiles(root)).map(async (c) => {
        const file = path.join(root, c.fileName);
        return { id: c.version, name: c.name, file, sql: await fs.readFile(file, 'utf8'), transaction: c.autocommit ? 'none' : 'serializable' } satisfies Migration;
      }),
    );
  return {
    kind: 'pop',
    describe: () => `Hydra/pop migrations from ${root}, tracked per version in schema_migration`,
    all,
    async pending(db) {
      const ms = await all();
      const applied = await appliedVersions(db);
      return applied === null ? ms : ms.filter((m) => !applied.has(m.id));
    },
    async apply(db, m, opts) {
      if ((await appliedVersions(db)) === null) await query(db, CREATE_TRACKING_TABLE, [], { side: 'green' });
      const done = await query(db, 'SELECT 1 FROM schema_migration WHERE version = $1', [m.id], { side: 'green' });
      if (done.rowCount) {
        throw new StateError(`pop migration ${m.id} (${m.name}) is already recorded in schema_migration`, 'list what is still pending with `migrate plan` and apply only that');
      }
      await runWithTracking(db, opts?.recordOnly ? { ...m, sql: '' } : m, { text: INSERT_TRACKING_ROW, values: [m.id] });
    },
  };
}
