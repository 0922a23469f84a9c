// Green carries a marker of its own (schema `bluegreen_green`) so the tool never overwrites a
// database it did not create. Green is usable only when it holds nothing at all besides a fresh
// database's defaults (schema `public`, extension plpgsql), or carries our marker: a database with
// only a schema, a view or a function in it is somebody's, and the copy would collide with it or a
// later `--restart` would drop it. The marker records what green held before our first write (the
// baseline), and `--restart` drops only what is not in it.

import { StateError } from '../errors.ts';
import { query, withTransaction, type Db } from './connect.ts';
import { ident } from './sql.ts';

/** Schemas the tool owns on green; never compared, never part of the copy. */
export const OWN_SCHEMAS = ['bluegreen', 'bluegreen_green', 'bluegreen_quarantine'] as const;

const SYSTEM_SCHEMA_FILTER = `n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'`;

/** SQL predicate on `n.nspname` selecting user schemas that are not ours. */
export const USER_SCHEMA_FILTER = `${SYSTEM_SCHEMA_FILTER} AND n.nspname NOT IN (${OWN_SCHEMAS.map((s) => `'${s}'`).join(', ')})`;

/** What `CREATE DATABASE` from an untouched template1 holds; anything more on green is somebody's. */
export const FRESH_DATABASE: readonly GreenObject[] = [
  { kind: 'schema', name: 'public' },
  { kind: 'extension', name: 'plpgsql' },
];

/** One object on green outside the system and our own schemas: `kind` as Postgres names it (table, view, function, type, ...). */
export interface GreenObject {
  /** `schema`, `extension`, or the object type from pg_identify_object. */
  kind: string;
  /** The name (schemas, extensions) or Postgres' quoted identity (`public.f(integer)`). */
  name: string;
}

// Every object that lives in a schema has a namespace dependency in pg_depend, so this one query
// finds relations of every kind, functions, aggregates, types, domains, operators, collations, ...
// Extension members go with their extension, and internal parts (a range type's constructors, a
// composite type's relation) with their owner, so neither is listed on its own.
const OBJECTS_IN_SCHEMAS = `
SELECT o.type AS kind, o.identity AS name
  FROM pg_depend d
  JOIN pg_namespace n ON n.oid = d.refobjid
 CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) o
 WHERE d.refclassid = 'pg_namespace'::regclass AND d.deptype = 'n' AND d.classid <> 'pg_extension'::regclass
   AND ${USER_SCHEMA_FILTER}
   AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classid AND e.objid = d.objid AND e.deptype IN ('e', 'i'))
 ORDER BY 1, 2`;

/** Everything green holds outside the system schemas and ours: schemas, extensions, and the objects in those schemas. */
export async function inventory(db: Db): Promise<GreenObject[]> {
  const schemas = await query<{ name: string }>(db, `SELECT n.nspname AS name FROM pg_namespace n WHERE ${USER_SCHEMA_FILTER} ORDER BY 1`, [], { side: 'green' });
  const extensions = await query<{ name: string }>(db, 'SELECT extname AS name FROM pg_extension ORDER BY 1', [], { side: 'green' });
  const objects = await query<GreenObject>(db, OBJECTS_IN_SCHEMAS, [], { side: 'green' });
  return [...schemas.rows.map((r) => ({ kind: 'schema', name: r.name })), ...extensions.rows.map((r) => ({ kind: 'extension', name: r.name })), ...objects.rows];
}

const keyOf = (o: GreenObject): string => `${o.kind}\0${o.name}`;

/** The objects of `found` that are not in `baseline`. */
export function beyond(found: readonly GreenObject[], baseline: readonly GreenObject[]): GreenObject[] {
  const keep = new Set(baseline.map(keyOf));
  return found.filter((o) => !keep.has(keyOf(o)));
}

const NAMES_PER_KIND = 5;

/** `schema (1): app; function (2): app.f(), app.g()`: a few names per kind, with counts. */
export function describeObjects(objects: readonly GreenObject[]): string {
  const byKind = new Map<string, string[]>();
  for (const o of objects) byKind.set(o.kind, [...(byKind.get(o.kind) ?? []), o.name]);
  return [...byKind]
    .map(([kind, names]) => `${kind} (${names.length}): ${names.slice(0, NAMES_PER_KIND).join(', ')}${names.length > NAMES_PER_KIND ? `, ... ${names.length - NAMES_PER_KIND} more` : ''}`)
    .join('; ');
}

const NEW_DATABASE_HINT = 'point green.dsn at a new, empty database (CREATE DATABASE ...); migrate never writes to a database it did not create';

/** Throws when green holds anything beyond a fresh database's defaults. */
function assertFresh(found: readonly GreenObject[]): void {
  const foreign = beyond(found, FRESH_DATABASE);
  if (!foreign.length) return;
  throw new StateError(`green is not empty and was not created by migrate: it holds ${describeObjects(foreign)}`, NEW_DATABASE_HINT, { found: foreign });
}

/** The marker row on green, when green was created by a run. */
export interface GreenMarker {
  run_id: string;
  snapshot_id: string | null;
  loaded_at: Date | null;
}

async function markerExists(green: Db): Promise<boolean> {
  const { rows } = await query<{ ok: boolean }>(green, `SELECT to_regclass('bluegreen_green.copy') IS NOT NULL AS ok`);
  return rows[0]?.ok ?? false;
}

/** Reads green's marker; null when green has none. */
export async function readMarker(green: Db): Promise<GreenMarker | null> {
  if (!(await markerExists(green))) return null;
  const { rows } = await query<GreenMarker>(green, 'SELECT run_id, snapshot_id, loaded_at FROM bluegreen_green.copy ORDER BY started_at DESC LIMIT 1');
  return rows[0] ?? null;
}

/** Number of user tables on green outside our schemas. */
export async function userTableCount(db: Db): Promise<number> {
  const { rows } = await query<{ n: string }>(
    db,
    `SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') AND ${USER_SCHEMA_FILTER}`,
  );
  return Number(rows[0]?.n ?? 0);
}

/** Refuses a green that holds anything but a fresh database's defaults, unless it carries our marker; returns the marker. */
export async function assertGreenUsable(green: Db): Promise<GreenMarker | null> {
  const marker = await readMarker(green);
  if (!marker) assertFresh(await inventory(green));
  return marker;
}

/** What green held before the first write of a run (recorded with the marker); null for a marker without one. */
export async function readBaseline(green: Db): Promise<GreenObject[] | null> {
  const { rows: exists } = await query<{ ok: boolean }>(green, `SELECT to_regclass('bluegreen_green.baseline') IS NOT NULL AS ok`);
  if (!exists[0]?.ok) return null;
  return (await query<GreenObject>(green, 'SELECT kind, name FROM bluegreen_green.baseline ORDER BY 1, 2')).rows;
}

/** The DROP statement for an object pg_identify_object described. */
function dropStatement(o: GreenObject): string {
  if (o.kind === 'schema') return `DROP SCHEMA IF EXISTS ${ident(o.name)} CASCADE`;
  if (o.kind === 'extension') return `DROP EXTENSION IF EXISTS ${ident(o.name)} CASCADE`;
  // The type names pg_identify_object returns are the DROP keywords, but for statistics objects;
  // its identity is quoted by Postgres itself (quote_identifier) and carries argument types.
  const keyword = o.kind === 'statistics object' ? 'STATISTICS' : o.kind.toUpperCase();
  return `DROP ${keyword} IF EXISTS ${o.name} CASCADE`;
}

/**
 * Drops what our runs created on green and nothing else: every extension, schema and object that
 * is not in the baseline recorded with the marker (only after assertGreenUsable found the marker).
 * A marker without a baseline (written by an older migrate) cannot tell ours from somebody's: refused.
 */
export async function wipeGreen(green: Db): Promise<void> {
  const baseline = await readBaseline(green);
  if (!baseline) {
    throw new StateError('green carries a marker of migrate but no record of what it held before the copy, so a wipe could drop objects migrate did not create', NEW_DATABASE_HINT);
  }
  await withTransaction(green, async () => {
    // Extensions first (their members go with them), then whole schemas, then what is left in the
    // baseline's own schemas; CASCADE and IF EXISTS because earlier drops take dependents along.
    const ours = OWN_SCHEMAS.filter((s) => s !== 'bluegreen').map((name) => ({ kind: 'schema', name }));
    const found = beyond(await inventory(green), baseline);
    const order = (o: GreenObject): number => (o.kind === 'extension' ? 0 : o.kind === 'schema' ? 1 : 2);
    for (const o of [...ours, ...found].sort((a, b) => order(a) - order(b))) await query(green, dropStatement(o), [], { side: 'green' });
    const left = beyond(await inventory(green), baseline);
    if (left.length) throw new StateError(`green still holds ${describeObjects(left)} after the wipe; nothing was dropped`, NEW_DATABASE_HINT, { left });
  });
}

/**
 * Creates the marker and records the run that is loading green. The first write of a run to a
 * green without a marker checks again, in the same transaction, that green is still fresh (time
 * passed since validate), and records what it holds as the baseline `--restart` keeps.
 */
export async function writeMarker(green: Db, runId: string, snapshotId: string | null): Promise<void> {
  await withTransaction(green, async () => {
    if (!(await markerExists(green))) {
      const found = await inventory(green);
      assertFresh(found);
      await query(green, 'CREATE SCHEMA IF NOT EXISTS bluegreen_green', [], { side: 'green' });
      await query(
        green,
        `CREATE TABLE bluegreen_green.copy (run_id text PRIMARY KEY, snapshot_id text, started_at timestamptz NOT NULL DEFAULT clock_timestamp(), loaded_at timestamptz)`,
        [],
        { side: 'green' },
      );
      await query(green, 'CREATE TABLE IF NOT EXISTS bluegreen_green.baseline (kind text NOT NULL, name text NOT NULL, PRIMARY KEY (kind, name))', [], { side: 'green' });
      await query(green, 'INSERT INTO bluegreen_green.baseline (kind, name) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING', [found.map((o) => o.kind), found.map((o) => o.name)], { side: 'green' });
    }
    await query(green, `INSERT INTO bluegreen_green.copy (run_id, snapshot_id) VALUES ($1, $2) ON CONFLICT (run_id) DO UPDATE SET snapshot_id = EXCLUDED.snapshot_id`, [runId, snapshotId], { side: 'green' });
  });
}

/** Marks green's copy as fully loaded. */
export async function markLoaded(green: Db, runId: string): Promise<void> {
  await query(green, 'UPDATE bluegreen_green.copy SET loaded_at = clock_timestamp() WHERE run_id = $1', [runId]);
}
