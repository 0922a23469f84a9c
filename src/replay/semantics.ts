// Replay semantics: what a revocation event does to the live side's schema, declared as data per
// profile by the engine (src/engines/hydra/replay.ts), and the one function that applies a batch of
// events in one set-based transaction. Shared by the consumer Worker (workerd, through Hyperdrive) and `migrate drain` (Node), so it imports
// nothing Node-only. Every effect removes access (delete a row or turn `active` off), and removals
// commute, so applying a time-ordered batch set-based gives the same result as one event at a time.

import type { RevocationBody } from '../queue-consumer/message.ts';
import { ident } from '../db/sql.ts';
import { HYDRA_REPLAY } from '../engines/hydra/replay.ts';
import { RetriesExhausted, withRetry, type RetryPolicy } from '../retry.ts';
import type { ProfileSemantics, RemoveAction, ReplayProfile, TokenKindSemantics, TokenTableSemantics } from '../engines/types.ts';

/** Which schema shape the target has (`<engine>-<version>`), and the semantics types, as the engines declare them. */
export type { ProfileSemantics, RemoveAction, ReplayProfile, TokenKindSemantics, TokenTableSemantics };

/** The replay profiles, for config and argument checking. */
export const REPLAY_PROFILES: readonly ReplayProfile[] = ['hydra-v1', 'hydra-v2'];

/** The part of a pg client replay needs (pg.Client and pg.PoolClient both fit). */
export interface SqlClient {
  /** Runs one statement with bind parameters. */
  query(sql: string, params?: unknown[]): Promise<{ rows: any[]; rowCount: number | null }>;
}

/** Kinds replay understands: the queue's three, plus `access-remove` for an outbox row deleting one access token. */
export type ReplayKind = RevocationBody['kind'] | 'access-remove';

/** One event to replay. A queue message body fits as is; `challenge` is set by outbox consent rows. */
export interface ReplayEvent {
  /** Event id; replay deduplicates on it. */
  id: string;
  /** What happened. */
  kind: ReplayKind;
  /** When it happened (ISO 8601); batches are applied in this order. */
  at: string;
  /** Token signature as stored. */
  signature?: string;
  /** Request id shared by a grant's tokens. */
  requestId?: string;
  /** Consent subject. */
  subject?: string;
  /** Consent client (absent: every client of the subject). */
  client?: string;
  /** One consent's challenge (outbox rows know the exact consent, not just the subject). */
  challenge?: string;
}

/** Per profile, what each kind of event does (declared by the engine: src/engines/hydra/replay.ts). */
export const PROFILE_SEMANTICS: Readonly<Record<ReplayProfile, ProfileSemantics>> = HYDRA_REPLAY;

/** Where the live side remembers which event ids it already applied. */
export const REPLAYED_TABLE = 'bluegreen_green.replayed';

const ENSURE_REPLAYED = [
  'CREATE SCHEMA IF NOT EXISTS bluegreen_green',
  // Byte-order collation: ids are opaque, and memcmp keeps the per-event index insert cheap.
  `CREATE TABLE IF NOT EXISTS ${REPLAYED_TABLE} (event_id text COLLATE "C" PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
];

// Claiming ids: first as a plain insert (the usual case, every id new), which costs about half of
// ON CONFLICT's speculative insertion; on a unique violation, the batch falls back to the
// conflict-aware insert, which returns the ids that were new.
const CLAIM_ALL_SQL = `INSERT INTO ${REPLAYED_TABLE} (event_id) SELECT unnest($1::text[])`;
const CLAIM_NEW_SQL = `INSERT INTO ${REPLAYED_TABLE} (event_id) SELECT unnest($1::text[]) ON CONFLICT (event_id) DO NOTHING RETURNING event_id`;

/** Token parameters per table: exact signatures, request ids, and signatures whose request id must be looked up. */
interface TokenParams {
  signatures: Set<string>;
  requestIds: Set<string>;
  resolveSignatures: Set<string>;
}

/** Which parameter lists of a token table are non-empty: the statement leaves out the rest. */
type TokenShape = readonly [signatures: boolean, requestIds: boolean, resolve: boolean];

/** The one statement that applies every token effect of a batch (one data-modifying CTE per table that has work). */
function tokenStatement(s: ProfileSemantics, shape: { access: TokenShape; refresh: TokenShape }): string {
  const access = ident(s.tokens.access.table);
  const refresh = ident(s.tokens.refresh.table);
  const ctes: string[] = [];
  const counts: string[] = [];
  (['access', 'refresh'] as const).forEach((name, i) => {
    const t = ident(s.tokens[name].table);
    const p = i * 3;
    const [bySig, byReq, resolve] = shape[name];
    // Targets: signatures straight from unnest(), request ids through LATERAL index lookups (one probe per
    // key), never `col = ANY(array)` under OR, which degrades to comparing every row with every key.
    const byRequest = (keys: string) => `SELECT x.signature FROM ${keys}, LATERAL (SELECT signature FROM ${t} WHERE request_id = k.request_id) x`;
    const parts = [
      bySig ? `SELECT unnest($${p + 1}::text[]) AS signature` : '',
      byReq ? byRequest(`unnest($${p + 2}::text[]) AS k(request_id)`) : '',
      resolve
        ? byRequest(`(SELECT request_id FROM unnest($${p + 3}::text[]) AS u(v), LATERAL (SELECT request_id FROM ${access} WHERE signature = u.v
             UNION ALL SELECT request_id FROM ${refresh} WHERE signature = u.v) r GROUP BY request_id) k`)
        : '',
    ].filter(Boolean);
    if (!parts.length) return counts.push(`0 AS ${name}`);
    const targets = `(${parts.join('\n        UNION ')}) m`;
    const body = s.tokens[name].remove === 'delete'
      ? `DELETE FROM ${t} t USING ${targets} WHERE t.signature = m.signature`
      : `UPDATE ${t} t SET active = false FROM ${targets} WHERE t.signature = m.signature AND t.active`;
    ctes.push(`t_${name} AS (${body} RETURNING 1)`);
    counts.push(`(SELECT count(*) FROM t_${name})::int AS ${name}`);
  });
  // Unused parameters still need a type: reference each one so the statement always takes six.
  const typed = [1, 2, 3, 4, 5, 6].map((n) => `cardinality($${n}::text[])`).join(' + ');
  return `WITH ${ctes.join(',\n')}\nSELECT ${counts.join(', ')}, ${typed} AS params`;
}

/**
 * The statement that deletes every consent a batch revokes: by exact challenge (an outbox row names
 * the very consent), or by subject and optional client, limited to consents requested at or before
 * the revocation (a challenge is never reused, so the exact form needs no time bound).
 */
function consentStatement(s: ProfileSemantics): string {
  const c = s.consent;
  const key = ident(c.challengeColumn);
  return `DELETE FROM ${ident(c.table)} c USING (
      SELECT x.${key} AS k FROM ${ident(c.table)} x JOIN unnest($1::text[]) AS u(v) ON x.${key} = u.v
      UNION SELECT x.${key} FROM ${ident(c.table)} x JOIN unnest($2::text[], $3::text[], $4::timestamptz[]) AS s(subject, client, revoked_at)
        ON x.${ident(c.subjectColumn)} = s.subject AND (s.client IS NULL OR x.${ident(c.clientColumn)} = s.client)
       AND x.${ident(c.requestedAtColumn)} <= (s.revoked_at AT TIME ZONE 'UTC')
      WHERE x.${key} IS NOT NULL) m
   WHERE c.${key} = m.k`;
}

const STATEMENTS = new Map<string, string>();

/** The profile's statement for a key, built once (a handful of shapes per profile). */
function statement(profile: ReplayProfile, key: string, build: (s: ProfileSemantics) => string): string {
  const cacheKey = `${profile}:${key}`;
  let sql = STATEMENTS.get(cacheKey);
  if (sql === undefined) {
    sql = build(PROFILE_SEMANTICS[profile]);
    STATEMENTS.set(cacheKey, sql);
  }
  return sql;
}

/** The form toISOString() writes: such times order correctly as text. */
const CANONICAL_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** Sorts by time, then id, and drops repeated ids (first occurrence wins). */
export function orderEvents<T extends ReplayEvent>(events: readonly T[]): T[] {
  const seen = new Set<string>();
  const unique: T[] = [];
  for (const e of events) if (!seen.has(e.id)) (seen.add(e.id), unique.push(e));
  const byId = (a: T, b: T): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  // Outbox rows and our own messages carry toISOString() times, which sort as text; anything else is parsed.
  if (unique.every((e) => CANONICAL_UTC.test(e.at))) return unique.sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : byId(a, b)));
  const time = new Map(unique.map((e) => [e, Date.parse(e.at)]));
  return unique.sort((a, b) => time.get(a)! - time.get(b)! || byId(a, b));
}

/** Collects the bind parameters of a batch from the profile's declared kinds. */
function collect(s: ProfileSemantics, events: readonly ReplayEvent[]) {
  const tokens = { access: empty(), refresh: empty() };
  const consent = { challenges: [] as string[], subjects: [] as string[], clients: [] as (string | null)[], revokedAt: [] as string[] };
  for (const e of events) {
    if (e.kind === 'consent-revoke') {
      if (e.challenge) consent.challenges.push(e.challenge);
      else if (e.subject) (consent.subjects.push(e.subject), consent.clients.push(e.client ?? null), consent.revokedAt.push(e.at));
      continue;
    }
    const k = s.kinds[e.kind];
    for (const table of k.tables) {
      const p = tokens[table];
      // A token-scoped event without a signature falls back to its whole request: revoking more, never less.
      if (k.scope === 'token' && e.signature) p.signatures.add(e.signature);
      else if (e.requestId) p.requestIds.add(e.requestId);
      else if (e.signature) p.resolveSignatures.add(e.signature);
    }
  }
  return { tokens, consent };
}

function empty(): TokenParams {
  return { signatures: new Set(), requestIds: new Set(), resolveSignatures: new Set() };
}

/** The statements (and their parameters) that apply a set of events; null where a statement has no work. */
interface Statements {
  consent: { sql: string; params: unknown[] } | null;
  tokens: { sql: string; params: unknown[] } | null;
}

function statementsFor(profile: ReplayProfile, events: readonly ReplayEvent[]): Statements {
  const { tokens, consent } = collect(PROFILE_SEMANTICS[profile], events);
  const params = [tokens.access, tokens.refresh].flatMap((p) => [[...p.signatures], [...p.requestIds], [...p.resolveSignatures]]);
  const has = params.map((a) => a.length > 0);
  const shape = { access: [has[0]!, has[1]!, has[2]!] as const, refresh: [has[3]!, has[4]!, has[5]!] as const };
  return {
    consent: consent.challenges.length || consent.subjects.length ? { sql: statement(profile, 'consent', consentStatement), params: [consent.challenges, consent.subjects, consent.clients, consent.revokedAt] } : null,
    tokens: has.some(Boolean) ? { sql: statement(profile, `tokens:${has.map(Number).join('')}`, (sem) => tokenStatement(sem, shape)), params } : null,
  };
}

/** A batch ready for the database: repeated ids dropped, time-ordered, statements built as if every id were new. */
export interface PreparedBatch {
  /** Replay semantics it was built for. */
  profile: ReplayProfile;
  /** Events in time order, one per id. */
  ordered: ReplayEvent[];
  /** Events handed in, repeats included (the difference counts as duplicates). */
  received: number;
  /** Statements for the usual case: no id was applied before. */
  statements: Statements;
}

/** Does the CPU side of a batch (ordering, parameters, statements) so it can run while the server works on another. */
export function prepareReplayBatch(profile: ReplayProfile, events: readonly ReplayEvent[]): PreparedBatch {
  if (!PROFILE_SEMANTICS[profile]) throw new Error(`unknown replay profile ${JSON.stringify(profile)}; use one of ${REPLAY_PROFILES.join(', ')}`);
  const ordered = orderEvents(events);
  return { profile, ordered, received: events.length, statements: statementsFor(profile, ordered) };
}

/** What a batch did: events applied for the first time, and events that were repeats or applied before. */
export interface ReplayResult {
  /** Events that changed the target (first time seen). */
  applied: number;
  /** Repeats within the batch plus events applied by an earlier batch. */
  duplicates: number;
}

function isMissingState(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === '42P01' || code === '3F000';
}

/** Deadlock and serialization failure: the transaction lost a race and can simply run again. */
const CONFLICT_CODES = new Set(['40P01', '40001']);
const MAX_CONFLICT_RETRIES = 5;
/** Up to five retries of a batch that lost a race, after 20, 40, 80, 160 and 320 ms. */
const CONFLICT_RETRY: RetryPolicy = { attempts: MAX_CONFLICT_RETRIES + 1, baseDelayMs: 20, maxDelayMs: 20 * 2 ** (MAX_CONFLICT_RETRIES - 1) };
/** The timer both runtimes have (workerd and Node), so replay imports nothing Node-only. */
const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Errors of a CREATE ... IF NOT EXISTS that lost a race to an identical create. */
const CREATED_CONCURRENTLY = new Set(['23505', '42710', '42P06', '42P07']);

/** Runs CREATE ... IF NOT EXISTS statements in order, tolerating a concurrent identical create by another session. */
export async function createIfMissing(db: SqlClient, statements: readonly string[]): Promise<void> {
  for (const sql of statements) {
    try {
      await db.query(sql);
    } catch (err) {
      // Another writer (the consumer, another drain connection) created it at the same moment: that
      // is what we wanted. IF NOT EXISTS does not cover a concurrent create, which fails on the
      // catalog's unique index (23505) or on the row type the table gets (42710) instead.
      if (!CREATED_CONCURRENTLY.has((err as { code?: string }).code ?? '')) throw err;
    }
  }
}

/**
 * Applies a prepared batch in one transaction: claim the event ids (dedup table on the target), then
 * the set-based statements (unnest arrays, never one statement per event). `alongside` runs once,
 * started right after the claim is sent, so a caller can read and prepare its next batch while the
 * server works on this one; it must not use `db`, and its errors are not reported here.
 */
export async function applyPreparedBatch(db: SqlClient, batch: PreparedBatch, alongside?: () => Promise<void>): Promise<ReplayResult> {
  if (!batch.ordered.length) {
    await alongside?.();
    return { applied: 0, duplicates: batch.received };
  }
  const ids = batch.ordered.map((e) => e.id);
  let sideWork: Promise<void> | undefined;
  const once = async (): Promise<ReplayResult> => {
    await db.query('BEGIN');
    try {
      await db.query('SAVEPOINT claim');
      const claimAll = db.query(CLAIM_ALL_SQL, [ids]).then(() => null, (err: unknown) => err);
      sideWork ??= alongside?.();
      const claimError = await claimAll;
      let todo = batch.ordered;
      let statements = batch.statements;
      if (claimError) {
        if ((claimError as { code?: string }).code !== '23505') throw claimError;
        await db.query('ROLLBACK TO SAVEPOINT claim');
        const fresh = new Set((await db.query(CLAIM_NEW_SQL, [ids])).rows.map((r: { event_id: string }) => r.event_id));
        todo = batch.ordered.filter((e) => fresh.has(e.id));
        statements = statementsFor(batch.profile, todo);
      }
      if (statements.consent) await db.query(statements.consent.sql, statements.consent.params);
      if (statements.tokens) {
        // Every token key is an index probe (signature and request_id are indexed in every profile); a
        // hash join would read a whole token table per batch, which the planner picks whenever a table
        // looks small next to the batch, as green does right after the copy. Only this statement: the
        // consent statement above may join on an unindexed subject column.
        await db.query("SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)");
        await db.query(statements.tokens.sql, statements.tokens.params);
      }
      await db.query('COMMIT');
      return { applied: todo.length, duplicates: batch.received - todo.length };
    } catch (err) {
      await db.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
  };
  try {
    // Another writer (the consumer Worker while `migrate drain` runs, or the live engine) locked the
    // same rows in the other order: every effect is a removal, so running the batch again is safe.
    return await withRetry(CONFLICT_RETRY, { retryable: (err) => CONFLICT_CODES.has((err as { code?: string }).code ?? ''), sleep: pause }, async (attempt) => {
      try {
        return await once();
      } catch (err) {
        // The first batch on a target without the dedup table creates it and runs again at once.
        if (attempt > 1 || !isMissingState(err)) throw err;
        await createIfMissing(db, ENSURE_REPLAYED);
        return once();
      }
    });
  } catch (err) {
    throw err instanceof RetriesExhausted ? err.last : err;
  } finally {
    await sideWork?.catch(() => undefined); // its failures are the caller's to report
  }
}

/** Applies a batch in one transaction: deduplicated on event id, ordered by time, set-based. */
export async function applyReplayBatch(db: SqlClient, profile: ReplayProfile, events: readonly ReplayEvent[]): Promise<ReplayResult> {
  return applyPreparedBatch(db, prepareReplayBatch(profile, events));
}
