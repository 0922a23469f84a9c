// Semantic validation: configured invariants, each a query on blue, a query on green and the
// relation their keys must satisfy. Counts and checksums cannot see a migration that rewrites a
// consent's state on a merged table; an invariant over what users depend on can. Quarantine is never
// credited: a blue key missing on green is a loss either way, reported as "expected" (quarantined by
// rule R, counted per rule, with sample keys) or "unexpected" (a failure). Every failure names the
// invariant, the counts and a few sample keys.

import type pg from 'pg';
import type { ResolvedConfig } from '../config/load.ts';
import type { InvariantSpec } from '../cutover/schema.ts';
import { query, toPostgresError, withTransaction, type Db } from '../db/connect.ts';
import { QUARANTINE_SCHEMA, quarantineTable } from '../db/quarantine.ts';
import { ident, qualified } from '../db/sql.ts';
import { snapshotOfGreen } from './as-of-snapshot.ts';

/** How many offending keys a report shows. */
export const SAMPLE_SIZE = 5;

/** Blue keys missing on green that one cleanup rule quarantined: expected, always listed. */
export interface ExpectedLoss {
  /** The rule that moved them. */
  rule: string;
  /** How many blue keys. */
  count: number;
  /** Up to SAMPLE_SIZE of them. */
  sample: string[];
}

/** One invariant's verdict. */
export interface InvariantResult {
  /** Invariant name. */
  name: string;
  /** The relation checked. */
  relation: InvariantSpec['relation'];
  /** Whether it holds. */
  passed: boolean;
  /** Keys returned by the blue query. */
  blueCount: number;
  /** Keys returned by the green query. */
  greenCount: number;
  /** Blue keys missing on green that green's quarantine holds (expected losses, never credited as present). */
  quarantinedCount: number;
  /** The expected losses by rule. */
  expected: ExpectedLoss[];
  /** Unexpected offending keys: blue keys missing on green and not quarantined, green keys that should not be there. */
  offending: number;
  /** Up to SAMPLE_SIZE unexpected offending keys. */
  sample: string[];
  /** One sentence for humans. */
  message: string;
}

/** Inputs the invariant queries may use. */
export interface InvariantParams {
  /** Capture start on blue (ISO); blue queries see it as $1. */
  captureStart: string;
  /** Whether the drain has run; blue queries see it as $2. */
  drained: boolean;
  /** The copy's snapshot (txid_snapshot text) or null; blue queries see it as $3 (src/validate/as-of-snapshot.ts). */
  txSnapshot?: string | null;
}

/** The invariants in force: the profile's, then the configured ones (a configured name replaces the profile's). */
export function invariantsOf(config: ResolvedConfig): InvariantSpec[] {
  const configured = config.raw.invariants;
  const names = new Set(configured.map((i) => i.name));
  // The engine the config names declares its invariants (src/engines; Hydra's live in ./hydra-invariants.ts).
  const profile = config.engine.invariants.filter((i) => !names.has(i.name));
  return [...profile, ...configured];
}

/** Capture start on blue, or now when capture never ran. */
export async function captureStart(blue: Db): Promise<string> {
  const { rows } = await query<{ at: string }>(
    blue,
    `SELECT CASE WHEN to_regclass('bluegreen.capture') IS NULL THEN NULL ELSE (SELECT started_at FROM bluegreen.capture) END::text AS at`,
  );
  return rows[0]?.at ?? new Date().toISOString();
}

function highestParam(sql: string): number {
  return Math.max(0, ...[...sql.matchAll(/\$(\d+)/g)].map((m) => Number(m[1])));
}

async function keys(db: Db, sql: string, params: unknown[]): Promise<string[]> {
  // Extended protocol even without parameters: a second statement is refused by the server itself.
  const config: pg.QueryConfig & { queryMode: 'extended'; rowMode: 'array' } = { text: sql, values: params.slice(0, highestParam(sql)), rowMode: 'array', queryMode: 'extended' };
  try {
    const res = await db.query<unknown[]>(config);
    return res.rows.map((r) => String(r[0]));
  } catch (err) {
    throw toPostgresError(err, { sql });
  }
}

/**
 * Invariant SQL comes from the config (checked as one SELECT at load); it only reads, so it runs in
 * a READ ONLY transaction on either side and whatever a function in it tries to write is refused.
 */
function readOnly<T>(db: Db, fn: () => Promise<T>): Promise<T> {
  return withTransaction(db, fn, { begin: 'READ ONLY', end: 'rollback' });
}

/** Quarantined keys of the invariant's tables, each with the rule that moved its row. */
async function quarantinedKeys(green: Db, spec: InvariantSpec): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const q of spec.quarantine) {
    const [schema = 'public', name = ''] = q.table.split('.');
    const qt = quarantineTable({ schema, name });
    const exists = await query<{ ok: boolean }>(green, 'SELECT to_regclass($1) IS NOT NULL AS ok', [`${QUARANTINE_SCHEMA}.${ident(qt)}`]);
    if (!exists.rows[0]?.ok) continue;
    const rows = await query<{ k: string; rule: string }>(green, `SELECT (${q.key})::text AS k, rule FROM ${qualified(QUARANTINE_SCHEMA, qt)}`, [], { sql: q.key });
    for (const r of rows.rows) if (!out.has(r.k)) out.set(r.k, r.rule);
  }
  // Once green serves, its own clients revoke too: green's capture (installed by the cutover) lists what they removed.
  const removedOnGreen = spec.removedOnGreen ?? [];
  if (removedOnGreen.length && (await query<{ ok: boolean }>(green, "SELECT to_regclass('bluegreen.outbox') IS NOT NULL AS ok")).rows[0]?.ok) {
    for (const q of removedOnGreen) {
      const rows = await query<{ k: string }>(green, `SELECT (${q.key})::text AS k FROM bluegreen.outbox WHERE table_name = $1`, [q.table], { sql: q.key });
      for (const r of rows.rows) if (!out.has(r.k)) out.set(r.k, REMOVED_ON_GREEN);
    }
  }
  return out;
}

/** The "rule" under which keys green's own clients removed after the flip are listed. */
export const REMOVED_ON_GREEN = 'removed on green after the flip';

/** Groups quarantined missing keys by rule, largest first. */
function byRule(missing: readonly string[], quarantined: ReadonlyMap<string, string>): ExpectedLoss[] {
  const groups = new Map<string, string[]>();
  for (const k of missing) {
    const rule = quarantined.get(k)!;
    groups.set(rule, [...(groups.get(rule) ?? []), k]);
  }
  return [...groups].map(([rule, keys]) => ({ rule, count: keys.length, sample: keys.slice(0, SAMPLE_SIZE) })).sort((a, b) => b.count - a.count || a.rule.localeCompare(b.rule));
}

function expectedText(expected: readonly ExpectedLoss[]): string {
  if (!expected.length) return '';
  return `; expected: ${expected.reduce((s, e) => s + e.count, 0)} quarantined (${expected.map((e) => `${e.rule} ${e.count}`).join(', ')})`;
}

/** Evaluates one invariant. */
export async function checkInvariant(blue: Db, green: Db, spec: InvariantSpec, params: InvariantParams): Promise<InvariantResult> {
  const blueSql = spec.blue;
  const blueKeys = blueSql ? await readOnly(blue, () => keys(blue, blueSql, [params.captureStart, params.drained, params.txSnapshot ?? null])) : [];
  const { greenKeys, quarantined } = await readOnly(green, async () => ({
    greenKeys: await keys(green, spec.green, spec.relation === 'green-empty' && spec.blue ? [blueKeys] : []),
    quarantined: await quarantinedKeys(green, spec),
  }));
  const greenSet = new Set(greenKeys);
  const missing = blueKeys.filter((k) => !greenSet.has(k));
  const expectedKeys = spec.relation === 'green-empty' ? [] : missing.filter((k) => quarantined.has(k));
  const expected = byRule(expectedKeys, quarantined);
  let offendingKeys: string[] = [];
  let message: string;
  switch (spec.relation) {
    case 'blue-subset-of-green':
      offendingKeys = missing.filter((k) => !quarantined.has(k));
      message = `${offendingKeys.length} of ${blueKeys.length} blue keys are missing on green${expectedText(expected)}`;
      break;
    case 'equal': {
      const blueSet = new Set(blueKeys);
      const lost = missing.filter((k) => !quarantined.has(k));
      const extra = greenKeys.filter((k) => !blueSet.has(k));
      offendingKeys = [...lost, ...extra];
      message = `${lost.length} blue keys missing on green, ${extra.length} green keys not on blue${expectedText(expected)}`;
      break;
    }
    case 'equal-counts': {
      const diff = blueKeys.length - greenKeys.length - expectedKeys.length;
      message = `blue ${blueKeys.length} rows, green ${greenKeys.length}${expectedText(expected)}`;
      if (diff !== 0) offendingKeys = [`count difference ${diff}`];
      break;
    }
    case 'green-empty':
      offendingKeys = greenKeys;
      message = `${greenKeys.length} green rows that must not exist`;
      break;
  }
  return {
    name: spec.name,
    relation: spec.relation,
    passed: offendingKeys.length === 0,
    blueCount: blueKeys.length,
    greenCount: greenKeys.length,
    quarantinedCount: expectedKeys.length,
    expected,
    offending: offendingKeys.length,
    sample: offendingKeys.slice(0, SAMPLE_SIZE),
    message: `${spec.name}: ${message}`,
  };
}

/** Evaluates every invariant in force; never throws on a failed invariant, returns it. */
export async function checkInvariants(blue: Db, green: Db, specs: readonly InvariantSpec[], opts: { drained: boolean; txSnapshot?: string | null }): Promise<InvariantResult[]> {
  if (!specs.length) return [];
  const txSnapshot = opts.txSnapshot !== undefined ? opts.txSnapshot : await snapshotOfGreen(blue, green);
  const params: InvariantParams = { captureStart: await captureStart(blue), drained: opts.drained, txSnapshot };
  const out: InvariantResult[] = [];
  for (const spec of specs) out.push(await checkInvariant(blue, green, spec, params));
  return out;
}

/** The failure lines of failed invariants, with counts and sample keys. */
export function invariantFailures(results: readonly InvariantResult[]): string[] {
  return results
    .filter((r) => !r.passed)
    .map((r) => `invariant ${r.message} (blue ${r.blueCount}, green ${r.greenCount}, unexpected ${r.offending}); sample keys: ${r.sample.join(', ')}`);
}
