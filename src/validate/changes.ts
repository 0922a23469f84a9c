// What the migrations changed, told apart from what they broke. Retyped columns are compared through
// their conversion (a pipe list on blue against a jsonb array on green element by element, text
// against json by parsed equality), and the engine's row-level changes (rows a merge leaves behind,
// states it rewrites) are counted with sample keys. These are "changed by the migration": they are
// listed, not failed; a change that removes access fails through the semantic invariants instead.

import { isDeepStrictEqual } from 'node:util';
import type { ResolvedConfig } from '../config/load.ts';
import { query, toPostgresError, withTransaction, type Db } from '../db/connect.ts';
import { QUARANTINE_SCHEMA, quarantineTable } from '../db/quarantine.ts';
import { ident, qualified } from '../db/sql.ts';
import type { Conversion, ConversionKind, MigrationChange } from '../engines/types.ts';
import { existedAtSnapshot } from './as-of-snapshot.ts';
import { SAMPLE_SIZE } from './invariants.ts';

/** One key whose value changed (or vanished). */
export interface ChangedKey {
  /** The row's key. */
  key: string;
  /** What blue held (as text). */
  blue: string | null;
  /** What green holds (as text); absent for a dropped row. */
  green?: string | null;
}

/** One conversion's comparison. */
export interface ConversionResult {
  /** `schema.table.column` on blue -> on green. */
  name: string;
  /** The conversion compared through. */
  kind: ConversionKind;
  /** Keys present on both sides and compared. */
  compared: number;
  /** Values the conversion changed. */
  changed: number;
  /** Up to SAMPLE_SIZE of them. */
  sample: ChangedKey[];
  /**
   * Values that differ because cleanup rewrote them (recorded in bluegreen_quarantine._rewrites, with
   * the old value held for restore): counted by rule here, not as `changed`.
   */
  rewrittenByCleanup?: Record<string, number>;
  /** Why it was not compared, when it was not. */
  skipped?: string;
}

/** One row-level change's count. */
export interface ChangeResult {
  /** Change name. */
  name: string;
  /** What it is. */
  description: string;
  /** dropped or rewritten. */
  report: MigrationChange['report'];
  /** Blue keys looked at. */
  compared: number;
  /** Rows dropped or rewritten by the migrations. */
  count: number;
  /** Up to SAMPLE_SIZE of them. */
  sample: ChangedKey[];
  /** Why it was not evaluated, when it was not. */
  skipped?: string;
}

/** The engine's conversions and row-level changes in force for a config (declared in src/engines/<engine>/). */
export function changesOf(config: ResolvedConfig): { conversions: readonly Conversion[]; changes: readonly MigrationChange[] } {
  return { conversions: config.engine.conversions, changes: config.engine.changes };
}

/** (key, value) rows of a query; it only reads, so it runs READ ONLY on either side. */
async function readRows(db: Db, sql: string, params: unknown[]): Promise<[string, unknown][]> {
  return withTransaction(db, async () => {
    const res = await db.query<unknown[]>({ text: sql, values: params, rowMode: 'array' }).catch((err: unknown) => Promise.reject(toPostgresError(err, { sql })));
    return res.rows.map((r): [string, unknown] => [String(r[0]), r[1]]);
  }, { begin: 'READ ONLY', end: 'rollback' });
}

async function columnType(db: Db, table: string, column: string): Promise<string | null> {
  const { rows } = await query<{ t: string | null }>(
    db,
    `SELECT format_type(a.atttypid, a.atttypmod) AS t FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped`,
    [table, column],
  );
  return rows[0]?.t ?? null;
}

function splitTable(table: string): { schema: string; name: string } {
  const [schema = 'public', name = ''] = table.split('.');
  return { schema, name };
}

const show = (v: unknown): string | null => (v === null || v === undefined ? null : typeof v === 'string' ? v : JSON.stringify(v));

function parseJson(text: unknown): { ok: true; value: unknown } | { ok: false } {
  if (typeof text !== 'string') return { ok: true, value: text ?? null };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

/** Compares one retyped column through its conversion. */
export async function compareConversion(blue: Db, green: Db, c: Conversion, txSnapshot: string | null): Promise<ConversionResult> {
  const name = `${c.blue.table}.${c.blue.column} -> ${c.green.table}.${c.green.column}`;
  const result: ConversionResult = { name, kind: c.kind, compared: 0, changed: 0, sample: [] };
  const [bt, gt] = [await columnType(blue, c.blue.table, c.blue.column), await columnType(green, c.green.table, c.green.column)];
  if (!bt || !gt) return { ...result, skipped: `${!bt ? `blue has no ${c.blue.table}.${c.blue.column}` : `green has no ${c.green.table}.${c.green.column}`}` };
  if (!/^json/.test(gt)) return { ...result, skipped: `green's column is ${gt}, not json: the migrations did not convert it` };
  const b = splitTable(c.blue.table);
  const g = splitTable(c.green.table);
  const [bc, bk, gc, gk] = [ident(c.blue.column), ident(c.blue.key), ident(c.green.column), ident(c.green.key)];
  const blueValue = c.kind === 'pipe-list-to-json-array' ? `CASE WHEN t.${bc} = '' THEN ARRAY[]::text[] ELSE string_to_array(t.${bc}, '|') END` : `t.${bc}`;
  const greenValue =
    c.kind === 'pipe-list-to-json-array'
      ? `CASE WHEN jsonb_typeof(t.${gc}::jsonb) = 'array' THEN ARRAY(SELECT e FROM jsonb_array_elements_text(t.${gc}::jsonb) WITH ORDINALITY a(e, o) ORDER BY o) END`
      : `t.${gc}::text`;
  const blueRows = await readRows(blue, `SELECT t.${bk}::text, ${blueValue} FROM ${qualified(b.schema, b.name)} t WHERE ${existedAtSnapshot('t', '$1')}`, [txSnapshot]);
  const greenRows = new Map(await readRows(green, `SELECT t.${gk}::text, ${greenValue} FROM ${qualified(g.schema, g.name)} t WHERE t.${gk} IS NOT NULL`, []));
  const rewrittenBy = await cleanupRewrites(green, c);
  for (const [key, bv] of blueRows) {
    if (!greenRows.has(key)) continue;
    result.compared++;
    const gv = greenRows.get(key);
    const same = c.kind === 'pipe-list-to-json-array' ? isDeepStrictEqual(bv, gv) : sameJson(bv, gv);
    if (same) continue;
    const rule = rewrittenBy.get(key);
    if (rule !== undefined) {
      result.rewrittenByCleanup = { ...result.rewrittenByCleanup, [rule]: (result.rewrittenByCleanup?.[rule] ?? 0) + 1 };
      continue;
    }
    result.changed++;
    if (result.sample.length < SAMPLE_SIZE) result.sample.push({ key, blue: show(bv), green: show(gv) });
  }
  return result;
}

/** Keys (the conversion's blue key, when part of the recorded row) whose blue value cleanup rewrote on green, with the rule. */
async function cleanupRewrites(green: Db, c: Conversion): Promise<Map<string, string>> {
  const { rows } = await query<{ ok: boolean }>(green, 'SELECT to_regclass($1) IS NOT NULL AS ok', [`${QUARANTINE_SCHEMA}._rewrites`]);
  if (!rows[0]?.ok) return new Map();
  const recorded = await readRows(
    green,
    `SELECT r.row ->> $3, r.rule FROM ${qualified(QUARANTINE_SCHEMA, '_rewrites')} r WHERE r.source_table = $1 AND r.column_name = $2 AND r.row ? $3`,
    [c.blue.table, c.blue.column, c.blue.key],
  );
  return new Map(recorded.map(([k, rule]) => [k, String(rule)]));
}

function sameJson(blueText: unknown, greenText: unknown): boolean {
  const b = parseJson(blueText);
  const g = parseJson(greenText);
  return b.ok && g.ok && isDeepStrictEqual(b.value, g.value);
}

async function tablesExist(db: Db, tables: readonly string[]): Promise<string | null> {
  for (const t of tables) {
    const { rows } = await query<{ ok: boolean }>(db, 'SELECT to_regclass($1) IS NOT NULL AS ok', [t]);
    if (!rows[0]?.ok) return t;
  }
  return null;
}

async function quarantinedKeys(green: Db, change: MigrationChange): Promise<Set<string>> {
  const out = new Set<string>();
  for (const q of change.quarantine) {
    const qt = quarantineTable(splitTable(q.table));
    const { rows } = await query<{ ok: boolean }>(green, 'SELECT to_regclass($1) IS NOT NULL AS ok', [`${QUARANTINE_SCHEMA}.${ident(qt)}`]);
    if (!rows[0]?.ok) continue;
    for (const [k] of await readRows(green, `SELECT (${q.key})::text, NULL FROM ${qualified(QUARANTINE_SCHEMA, qt)}`, [])) out.add(k);
  }
  return out;
}

/** Counts one row-level change of the migrations. */
export async function countChange(blue: Db, green: Db, change: MigrationChange, txSnapshot: string | null): Promise<ChangeResult> {
  const result: ChangeResult = { name: change.name, description: change.description, report: change.report, compared: 0, count: 0, sample: [] };
  const missingBlue = await tablesExist(blue, change.requires.blue);
  const missingGreen = await tablesExist(green, change.requires.green);
  if (missingBlue || missingGreen) return { ...result, skipped: missingBlue ? `blue has no ${missingBlue}` : `green has no ${missingGreen}` };
  const blueRows = await readRows(blue, change.blue, [txSnapshot]);
  const greenRows = new Map(await readRows(green, change.green, []));
  const quarantined = await quarantinedKeys(green, change);
  for (const [key, bv] of blueRows) {
    const present = greenRows.has(key);
    if (change.report === 'dropped') {
      result.compared++;
      if (present || quarantined.has(key)) continue;
    } else {
      if (!present) continue;
      result.compared++;
      if (show(greenRows.get(key)) === show(bv)) continue;
    }
    result.count++;
    if (result.sample.length < SAMPLE_SIZE) result.sample.push({ key, blue: show(bv), ...(change.report === 'rewritten' ? { green: show(greenRows.get(key)) } : {}) });
  }
  return result;
}

/** Evaluates every conversion and row-level change in force; never throws on a difference. */
export async function checkChanges(blue: Db, green: Db, config: ResolvedConfig, txSnapshot: string | null): Promise<{ conversions: ConversionResult[]; changes: ChangeResult[] }> {
  const { conversions, changes } = changesOf(config);
  const out = { conversions: [] as ConversionResult[], changes: [] as ChangeResult[] };
  for (const c of conversions) out.conversions.push(await compareConversion(blue, green, c, txSnapshot));
  for (const c of changes) out.changes.push(await countChange(blue, green, c, txSnapshot));
  return out;
}
