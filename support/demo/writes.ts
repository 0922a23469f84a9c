// Did every write of the window reach green? For each row the window traffic wrote on blue (table and
// key, from the engine's write log), blue's row as it is now is read and compared, field by field,
// with the row green holds for it in the new schema: through the engine's declared conversions
// (src/engines/hydra/conversions.ts: pipe lists against jsonb arrays, JSON text against jsonb, metadata
// against hydra_client_settings), the flow merge's renamed columns and the flow state for login and
// consent rows, nid and columns v2 added ignored. A row gone from blue must be gone from green (a login
// or consent part of a flow: the flow no longer holds it); a deactivated row must be inactive on green,
// which the field comparison covers. A row-level check through the mapping, not a count.

import { isDeepStrictEqual } from 'node:util';
import type { Db } from '../../src/db/connect.ts';
import { ident, qualified } from '../../src/db/sql.ts';
import { HYDRA_CONVERSIONS } from '../../src/engines/hydra/conversions.ts';
import type { Conversion } from '../../src/engines/types.ts';

/** One row the window wrote on blue. */
export interface RecordedWrite {
  /** What kind of request wrote it. */
  kind: string;
  /** `schema.table` on blue. */
  table: string;
  /** Its primary key (one column), column -> value as text. */
  key: Record<string, string>;
}

/** Figures of one kind of write (or of all). */
export interface WriteFigures {
  /** Writes made on blue. */
  made: number;
  /** Of those, found on green in their new form. */
  present: number;
  /** Of those, missing or different on green. */
  lost: number;
}

/** A write green does not have, and why. */
export interface LostWrite {
  /** Kind of request. */
  kind: string;
  /** Blue table. */
  table: string;
  /** Blue key. */
  key: Record<string, string>;
  /** What differs. */
  reason: string;
  /** What bluegreen_green.unmapped recorded for a row with this key, if anything. */
  unmapped: { relation: string; reason: string }[];
}

/** The check's result. */
export interface WritesReport extends WriteFigures {
  /** Per kind of request. */
  byKind: Record<string, WriteFigures>;
  /** The first lost writes (up to 10). */
  missing: LostWrite[];
}

/** How many lost writes are listed. */
const MISSING_SAMPLE = 10;

type Row = Record<string, unknown>;

const FLOW = 'public.hydra_oauth2_flow';
const LOGIN = 'public.hydra_oauth2_authentication_request';
const LOGIN_HANDLED = 'public.hydra_oauth2_authentication_request_handled';
const CONSENT = 'public.hydra_oauth2_consent_request';
const CONSENT_HANDLED = 'public.hydra_oauth2_consent_request_handled';

/** Where a v1 table's rows live on green when not in the same table under the same key. */
interface Place {
  /** Green table. */
  table: string;
  /** The green column holding the write's key. */
  key: string;
  /** v1 column -> green column, compared as is (conversions come on top). */
  columns: Readonly<Record<string, string>>;
  /** With the v1 row gone, a green row that may stay (the flow of a login whose other parts remain). */
  mayStay?: (green: Row) => boolean;
}

// The flow merge (sql/fixtures/hydra-v2-migrations/20211011000007000000_flow_fill): one flow row per login
// request, the columns each v1 table contributes; the lists and JSON columns are in HYDRA_CONVERSIONS.
const FLOW_PLACES: Readonly<Record<string, Place>> = {
  [LOGIN]: {
    table: FLOW,
    key: 'login_challenge',
    columns: { challenge: 'login_challenge', verifier: 'login_verifier', csrf: 'login_csrf', subject: 'subject', request_url: 'request_url', skip: 'login_skip', client_id: 'client_id', requested_at: 'requested_at', oidc_context: 'oidc_context', login_session_id: 'login_session_id' },
  },
  [LOGIN_HANDLED]: {
    table: FLOW,
    key: 'login_challenge',
    columns: { remember: 'login_remember', remember_for: 'login_remember_for', error: 'login_error', acr: 'acr', authenticated_at: 'login_authenticated_at', was_used: 'login_was_used', forced_subject_identifier: 'forced_subject_identifier', context: 'context' },
    mayStay: (g) => g.state === 1,
  },
  [CONSENT]: {
    table: FLOW,
    key: 'consent_challenge_id',
    columns: { challenge: 'consent_challenge_id', verifier: 'consent_verifier', csrf: 'consent_csrf', skip: 'consent_skip', login_challenge: 'login_challenge', client_id: 'client_id' },
  },
  [CONSENT_HANDLED]: {
    table: FLOW,
    key: 'consent_challenge_id',
    columns: { remember: 'consent_remember', remember_for: 'consent_remember_for', was_used: 'consent_was_used', handled_at: 'consent_handled_at' },
    mayStay: (g) => g.state === 4,
  },
};

/** '{}', '' or nothing: Hydra 1.x's "no error" (as the engine's repair reads it). */
const noError = (v: unknown): boolean => v === null || v === undefined || ['', '{}', 'null'].includes(String(v).trim());

/**
 * The flow state the v1 rows of one login stand for (as validation's flow-state-rewrites reads them,
 * src/engines/hydra/conversions.ts): 1 login requested, 2 handled, 3 used, 4 consent requested,
 * 5 granted, 6 used, 128 login rejected, 129 consent rejected.
 */
export function v1FlowState(lh: Row | null, cr: Row | null, ch: Row | null): number {
  if (ch) return noError(ch.error) ? (ch.was_used ? 6 : 5) : 129;
  if (cr) return 4;
  if (lh) return noError(lh.error) ? (lh.was_used ? 3 : 2) : 128;
  return 1;
}

/** `schema.table` quoted. */
function q(table: string): string {
  const [schema = 'public', name = table] = table.split('.');
  return qualified(schema, name);
}

/** Rows of `table` whose `column` (as text) is one of `values`, by that value. */
async function rowsBy(db: Db, table: string, column: string, values: readonly string[]): Promise<Map<string, Row>> {
  if (!values.length) return new Map();
  const exists = (await db.query<{ ok: boolean }>('SELECT to_regclass($1) IS NOT NULL AS ok', [table])).rows[0]?.ok;
  if (!exists) return new Map();
  const { rows } = await db.query<{ k: string; r: Row }>(`SELECT t.${ident(column)}::text AS k, to_jsonb(t) AS r FROM ${q(table)} t WHERE t.${ident(column)}::text = ANY ($1::text[])`, [[...new Set(values)]]);
  return new Map(rows.map((x) => [x.k, x.r]));
}

/** Lazily batched lookups: ask for keys first, then load each (table, column) once. */
class Lookups {
  private wanted = new Map<string, Set<string>>();
  private loaded = new Map<string, Map<string, Row>>();
  constructor(private readonly db: Db) {}
  want(table: string, column: string, value: unknown): void {
    if (value === null || value === undefined) return;
    const k = `${table}\u0000${column}`;
    this.wanted.set(k, (this.wanted.get(k) ?? new Set()).add(String(value)));
  }
  async load(): Promise<void> {
    for (const [k, values] of this.wanted) {
      const [table, column] = k.split('\u0000') as [string, string];
      const have = this.loaded.get(k) ?? new Map<string, Row>();
      const missing = [...values].filter((v) => !have.has(v));
      for (const [key, row] of await rowsBy(this.db, table, column, missing)) have.set(key, row);
      this.loaded.set(k, have);
    }
    this.wanted.clear();
  }
  get(table: string, column: string, value: unknown): Row | null {
    if (value === null || value === undefined) return null;
    return this.loaded.get(`${table}\u0000${column}`)?.get(String(value)) ?? null;
  }
}

function parseJson(v: unknown): { ok: boolean; value?: unknown } {
  if (typeof v !== 'string') return { ok: true, value: v ?? null };
  try {
    return { ok: true, value: JSON.parse(v) };
  } catch {
    return { ok: false };
  }
}

/** Blue's value against green's through a conversion; a green column the fixture did not convert (still text) compares as is. */
function sameConverted(kind: Conversion['kind'], blue: unknown, green: unknown): boolean {
  if (typeof green === 'string' || green === null) return isDeepStrictEqual(blue ?? null, green);
  if (kind === 'pipe-list-to-json-array') return isDeepStrictEqual(blue === null || blue === '' ? [] : String(blue).split('|'), green);
  const b = parseJson(blue);
  return b.ok && isDeepStrictEqual(b.value, green);
}

const show = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v) ?? 'undefined');

/** Checks every recorded write on green; see the header for what "present" means. */
export async function checkWrites(blue: Db, green: Db, writes: readonly RecordedWrite[]): Promise<WritesReport> {
  const conversions = (table: string): Conversion[] => HYDRA_CONVERSIONS.filter((c) => c.blue.table === table);
  const keyColumn = (w: RecordedWrite): string => Object.keys(w.key)[0]!;
  const keyValue = (w: RecordedWrite): string => Object.values(w.key)[0]!;
  const placeOf = (w: RecordedWrite): Place => FLOW_PLACES[w.table] ?? { table: w.table, key: keyColumn(w), columns: {} };

  // Blue's rows as they are now, and the v1 rows of each login they belong to (for the flow state).
  const blueRows = new Lookups(blue);
  for (const w of writes) blueRows.want(w.table, keyColumn(w), keyValue(w));
  await blueRows.load();
  const flowTables = new Set(Object.keys(FLOW_PLACES));
  const loginOf = (w: RecordedWrite, row: Row): unknown => (w.table === LOGIN || w.table === LOGIN_HANDLED ? row.challenge : w.table === CONSENT ? row.login_challenge : blueRows.get(CONSENT, 'challenge', row.challenge)?.login_challenge);
  for (const w of writes) if (w.table === CONSENT_HANDLED) blueRows.want(CONSENT, 'challenge', keyValue(w));
  await blueRows.load();
  for (const w of writes) {
    const row = flowTables.has(w.table) ? blueRows.get(w.table, keyColumn(w), keyValue(w)) : null;
    const login = row ? loginOf(w, row) : null;
    blueRows.want(LOGIN_HANDLED, 'challenge', login);
    blueRows.want(CONSENT, 'login_challenge', login);
  }
  await blueRows.load();
  for (const w of writes) {
    const row = flowTables.has(w.table) ? blueRows.get(w.table, keyColumn(w), keyValue(w)) : null;
    blueRows.want(CONSENT_HANDLED, 'challenge', row ? blueRows.get(CONSENT, 'login_challenge', loginOf(w, row))?.challenge : null);
  }
  await blueRows.load();

  // Green's rows: where each write lives now, and every row a conversion reads.
  const greenRows = new Lookups(green);
  for (const w of writes) {
    const place = placeOf(w);
    greenRows.want(place.table, place.key, keyValue(w));
    const row = blueRows.get(w.table, keyColumn(w), keyValue(w));
    if (row) for (const c of conversions(w.table)) greenRows.want(c.green.table, c.green.key, row[c.blue.key]);
  }
  await greenRows.load();

  /** Why green does not hold the write, or null when it does. */
  const problem = (w: RecordedWrite): string | null => {
    const place = placeOf(w);
    const b = blueRows.get(w.table, keyColumn(w), keyValue(w));
    const g = greenRows.get(place.table, place.key, keyValue(w));
    if (!b) return !g || place.mayStay?.(g) ? null : `deleted on blue, still on green (${place.table})`;
    if (!g) return `absent on green (${place.table} ${place.key} = ${keyValue(w)})`;
    const converted = conversions(w.table);
    const convertedHere = new Set(converted.filter((c) => c.green.table === place.table).map((c) => c.green.column));
    const columns = flowTables.has(w.table) ? Object.entries(place.columns) : Object.keys(b).filter((c) => c in g).map((c) => [c, c] as const);
    for (const [from, to] of columns) {
      if (convertedHere.has(to)) continue;
      if (!isDeepStrictEqual(b[from] ?? null, g[to] ?? null)) return `${from} differs: blue ${show(b[from])}, green ${place.table}.${to} ${show(g[to])}`;
    }
    for (const c of converted) {
      if (!(c.blue.column in b)) continue;
      const gc = greenRows.get(c.green.table, c.green.key, b[c.blue.key]);
      if (!gc) return `absent on green (${c.green.table} ${c.green.key} = ${show(b[c.blue.key])})`;
      if (!(c.green.column in gc)) continue;
      if (!sameConverted(c.kind, b[c.blue.column], gc[c.green.column])) return `${c.blue.column} differs through ${c.kind}: blue ${show(b[c.blue.column])}, green ${c.green.table}.${c.green.column} ${show(gc[c.green.column])}`;
    }
    if (place.table === FLOW) {
      const login = loginOf(w, b);
      const lh = blueRows.get(LOGIN_HANDLED, 'challenge', login);
      const cr = blueRows.get(CONSENT, 'login_challenge', login);
      const ch = cr ? blueRows.get(CONSENT_HANDLED, 'challenge', cr.challenge) : null;
      const expected = v1FlowState(lh, cr, ch);
      if (g.state !== expected) return `flow state ${show(g.state)} on green, the v1 rows say ${expected}`;
    }
    return null;
  };

  const report: WritesReport = { made: 0, present: 0, lost: 0, byKind: {}, missing: [] };
  for (const w of writes) {
    const reason = problem(w);
    const figures = [report, (report.byKind[w.kind] ??= { made: 0, present: 0, lost: 0 })];
    for (const f of figures) {
      f.made++;
      if (reason === null) f.present++;
      else f.lost++;
    }
    if (reason === null) continue;
    if (report.missing.length < MISSING_SAMPLE) report.missing.push({ kind: w.kind, table: w.table, key: w.key, reason, unmapped: await unmappedFor(green, keyValue(w)) });
  }
  return report;
}

/** What the stream's mapping recorded as unmapped for a row with this key value (any table). */
async function unmappedFor(green: Db, key: string): Promise<{ relation: string; reason: string }[]> {
  const exists = (await green.query<{ ok: boolean }>("SELECT to_regclass('bluegreen_green.unmapped') IS NOT NULL AS ok")).rows[0]?.ok;
  if (!exists) return [];
  const { rows } = await green.query<{ relation: string; reason: string }>(
    `SELECT DISTINCT relation, reason FROM bluegreen_green.unmapped WHERE strpos(key, $1) > 0 OR strpos(row::text, $1) > 0 ORDER BY 1, 2 LIMIT 5`,
    [key],
  );
  return rows;
}
