// Chaos for the whole catch-up (issue G): while blue (Hydra v1) takes writes (tokens issued, revoked
// and deleted, some with TOASTed session data; clients added and changed; login + consent flows, some
// consents revoked with their tokens; transactions and savepoints rolled back), the catch-up (support/
// stream-child.ts: stage up to blue's insert position, then map into the v2 tables as the stream
// step's `:map` action does) is SIGKILLed at random points, at least ten times: timed from the spawn,
// from the first staged batch, and from the start or the n-th committed batch of the mapping. Then it
// is resumed to completion and compared with a green that never crashed.
//
// The reference (approach 1 of the issue): blue and green are seeded from the same seed (green
// migrated to v2 in place), green is copied as a template into a second database, and two slots are
// created on blue before the first write, so both see exactly the same transactions: slot A feeds the
// killed-and-resumed runs into green, slot B one uninterrupted run (staged, then mapped) into the copy.
// Approach 2 (a fresh green copied from blue's final state and migrated) would compare the mapping
// with the migrations, which is stream-map's business, and cost another apply; here only kill -9 is
// the difference between the two greens.
//
// Asserted: green's v2 tables (every user table) and the mapping's own state (unmapped rows, v1
// staging tables) equal the reference's; both change logs are identical row for row; every committed
// insert is staged once and nothing rolled back is; the log replayed over blue's rows at the slot's
// start rebuilds blue's final rows exactly (unchanged TOAST included); every token the writer left on
// blue is on green with its state; after every kill the mapped mark has not moved back and counts
// exactly the staged changes up to it (none mapped twice, none skipped), at the end all of them.
// STREAM_CHAOS_SEED replays a run's random choices (kill points, writes); the seed is printed.

import { mulberry32 } from '../support/fixture/seed.ts';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { connect, type Db } from '../src/db/connect.ts';
import { ident, literal } from '../src/db/sql.ts';
import { HYDRA_V1_TO_V2 } from '../src/engines/hydra/index.ts';
import { applyStagedChanges } from '../src/stream/apply-changes.ts';
import { installChangeLog } from '../src/stream/changelog.ts';
import { publicationName, slotName } from '../src/stream/names.ts';
import { streamToGreen, type StreamStats } from '../src/stream/reader.ts';
import { createDbPair, kill9, ROOT, seedBlue, seedUpgradedToV2, tableChecksums, type DbPair } from './harness.ts';

const CHILD = path.join(ROOT, 'support/stream-child.ts');
/** The settings the reader's WAL sender prints values with: blue's rows are read the same way to compare. */
const OUTPUT_OPTIONS = '-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3';
const SEED = Number(process.env.STREAM_CHAOS_SEED ?? crypto.randomInt(2 ** 31));
/** Where the kills are timed from, how many of each: at least ten in all, most in the mapping. */
const KILLS = { spawn: 2, staged: 4, mapping: 8 } as const;
const STAGE_BATCH = 20;
/** Small map batches: the mapping is fast now (tens of ms per batch), and a child must still be mid-mapping when a kill comes. */
const MAP_BATCH = 10;
const REFERENCE_STAGE_BATCH = 500;
const REFERENCE_MAP_BATCH = 250;
const FIXTURE = { rows: 150, seed: 7, dirty: [] } as const;

type KillKind = keyof typeof KILLS;
type TextRow = Record<string, string | null>;
/** Per published table: its primary key column and its rows as text by key. */
type Tables = Map<string, { pk: string; rows: Map<string, TextRow> }>;

/** A small seeded PRNG in [0, 1) (mulberry32): a failing run can be replayed with its seed. */
function prng(seed: number): () => number {
  const next = mulberry32(seed);
  return () => next() / 4294967296;
}

/** What the writer committed, and what it rolled back. */
interface Tally {
  /** Committed transactions. */
  transactions: number;
  /** Transactions rolled back. */
  rolledBack: number;
  /** `relation:key` of every committed insert. */
  inserted: Set<string>;
  /** `relation:key` of every insert rolled back (whole transaction or savepoint); keys are never reused. */
  discarded: Set<string>;
}

/** The writer's own rows still on blue (copied per transaction, kept on commit). */
interface Live {
  access: string[];
  refresh: string[];
  clients: string[];
  consents: { challenge: string; client: string }[];
}

/** Blue's writer: stop() ends it and returns what it did; failed() is its error, if it stopped on one. */
interface Writer {
  stop: () => Promise<Tally>;
  failed: () => unknown;
}

/** Writes Hydra v1 traffic to blue until stopped: transactions of 1-3 statements, about one in seven rolled back. */
function startWriter(c: pg.Client, rand: () => number): Writer {
  const tally: Tally = { transactions: 0, rolledBack: 0, inserted: new Set(), discarded: new Set() };
  let live: Live = { access: [], refresh: [], clients: [], consents: [] };
  let n = 0;
  let stopping = false;
  const int = (k: number): number => Math.floor(rand() * k);
  const pick = <T>(list: readonly T[]): T | null => (list.length ? list[int(list.length)]! : null);
  const drop = <T>(list: T[], x: T): T[] => list.filter((y) => y !== x);

  async function client(l: Live): Promise<string> {
    const own = rand() < 0.5 ? pick(l.clients) : null;
    if (own) return own;
    return (await c.query<{ id: string }>(`SELECT id FROM hydra_client ORDER BY md5(id || $1) LIMIT 1`, [String(n)])).rows[0]!.id;
  }

  async function token(l: Live, table: 'access' | 'refresh', added: string[]): Promise<void> {
    const signature = `cx-${table[0]}-${++n}`;
    // Some session data too large to stay inline: a later revoke leaves it unchanged TOAST.
    const session = rand() < 0.15 ? JSON.stringify({ blob: crypto.randomBytes(2000 + int(3000)).toString('hex') }) : '{}';
    const consent = rand() < 0.3 ? pick(l.consents) : null;
    const res = consent
      ? await c.query(
          `INSERT INTO hydra_oauth2_${table} (signature, request_id, client_id, scope, granted_scope, form_data, session_data, subject, challenge_id)
           VALUES ($1, $2, $3, 'openid|offline', 'openid|offline', '', $4, 'cx-subject', $5)`,
          [signature, `cx-req-${n}`, consent.client, session, consent.challenge],
        )
      : await c.query(
          `INSERT INTO hydra_oauth2_${table} (signature, request_id, client_id, scope, granted_scope, form_data, session_data, subject, challenge_id)
           SELECT $1, $2, a.client_id, a.scope, a.granted_scope, '', $3, a.subject, a.challenge_id
             FROM hydra_oauth2_access a
            WHERE a.active AND EXISTS (SELECT 1 FROM hydra_client cl WHERE cl.id = a.client_id)
              AND (a.challenge_id IS NULL OR EXISTS (SELECT 1 FROM hydra_oauth2_consent_request_handled h WHERE h.challenge = a.challenge_id))
            ORDER BY md5(a.signature || $4) LIMIT 1`,
          [signature, `cx-req-${n}`, session, String(n)],
        );
    if (!res.rowCount) return;
    l[table].push(signature);
    added.push(`public.hydra_oauth2_${table}:${signature}`);
  }

  async function statement(l: Live, added: string[], discarded: string[]): Promise<void> {
    const r = rand();
    if (r < 0.3) return token(l, 'access', added);
    if (r < 0.4) return token(l, 'refresh', added);
    if (r < 0.55) {
      const table = rand() < 0.5 ? 'access' : 'refresh';
      const signature = pick(l[table]);
      if (signature) await c.query(`UPDATE hydra_oauth2_${table} SET active = false, granted_scope = granted_scope || '|revoked' WHERE signature = $1`, [signature]);
      return;
    }
    if (r < 0.63) {
      const signature = pick(l.access);
      if (!signature) return;
      l.access = drop(l.access, signature);
      await c.query('DELETE FROM hydra_oauth2_access WHERE signature = $1', [signature]);
      return;
    }
    if (r < 0.68) {
      const id = `cx-client-${++n}`;
      const { rows } = await c.query<{ pk: number }>(
        `INSERT INTO hydra_client (id, client_name, redirect_uris, grant_types, response_types, contacts, metadata)
         VALUES ($1, $2, 'https://a.test/cb|https://b.test/cb', 'authorization_code|refresh_token', 'code', 'ops@x.test', '{"tier": 2}') RETURNING pk`,
        [id, `client ${n}`],
      );
      l.clients.push(id);
      added.push(`public.hydra_client:${rows[0]!.pk}`);
      return;
    }
    if (r < 0.75) {
      await c.query(`UPDATE hydra_client SET client_name = $2, redirect_uris = $3 WHERE id = $1`, [await client(l), `renamed ${++n}`, `https://u${n}.test|https://v.test`]);
      return;
    }
    if (r < 0.88) {
      // A login + consent flow (what a user signing in does).
      const id = ++n;
      const owner = await client(l);
      await c.query(
        `WITH ar AS (INSERT INTO hydra_oauth2_authentication_request (challenge, requested_scope, verifier, csrf, subject, request_url, skip, client_id, requested_at_audience)
                     VALUES ($1, 'openid|offline', $3, 'csrf', 'cx-subject', 'https://live.test', false, $4, 'api') RETURNING challenge, client_id),
              lh AS (INSERT INTO hydra_oauth2_authentication_request_handled (challenge, subject, remember, remember_for, error, acr, was_used)
                     SELECT challenge, 'cx-subject', true, 3600, '{}', 'acr1', true FROM ar RETURNING challenge),
              cr AS (INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope, csrf, login_challenge)
                     SELECT $2, $3, ar.client_id, 'cx-subject', 'https://live.test', false, 'openid|offline', 'csrf', lh.challenge FROM ar, lh RETURNING challenge)
         INSERT INTO hydra_oauth2_consent_request_handled (challenge, granted_scope, remember, remember_for, error, was_used, granted_at_audience, session_id_token)
         SELECT challenge, 'openid|offline', true, 0, '{}', false, 'api', '{"sid": "s1"}' FROM cr`,
        [`cx-l-${id}`, `cx-c-${id}`, `cx-v-${id}`, owner],
      );
      l.consents.push({ challenge: `cx-c-${id}`, client: owner });
      for (const t of ['authentication_request', 'authentication_request_handled']) added.push(`public.hydra_oauth2_${t}:cx-l-${id}`);
      for (const t of ['consent_request', 'consent_request_handled']) added.push(`public.hydra_oauth2_${t}:cx-c-${id}`);
      return;
    }
    if (r < 0.92) {
      // A consent revoked: its tokens go with it on blue (ON DELETE CASCADE).
      const consent = pick(l.consents);
      if (consent) {
        l.consents = drop(l.consents, consent);
        await c.query('DELETE FROM hydra_oauth2_consent_request_handled WHERE challenge = $1', [consent.challenge]);
      }
      return;
    }
    // A rolled-back savepoint inside a transaction that may well commit.
    const signature = `cx-a-${++n}`;
    await c.query('SAVEPOINT sp');
    await c.query(
      `INSERT INTO hydra_oauth2_access (signature, request_id, client_id, scope, granted_scope, form_data, session_data, subject)
       SELECT $1, 'cx-sp', id, 'openid', 'openid', '', '{}', 'cx-subject' FROM hydra_client ORDER BY pk LIMIT 1`,
      [signature],
    );
    await c.query('ROLLBACK TO SAVEPOINT sp');
    discarded.push(`public.hydra_oauth2_access:${signature}`);
  }

  async function transaction(): Promise<void> {
    const l: Live = { access: [...live.access], refresh: [...live.refresh], clients: [...live.clients], consents: [...live.consents] };
    const added: string[] = [];
    const discarded: string[] = [];
    await c.query('BEGIN');
    for (let k = 1 + int(3); k > 0; k--) await statement(l, added, discarded);
    const rollback = rand() < 0.15;
    await c.query(rollback ? 'ROLLBACK' : 'COMMIT');
    for (const key of discarded) tally.discarded.add(key);
    if (rollback) {
      for (const key of added) tally.discarded.add(key);
      tally.rolledBack += 1;
      return;
    }
    live = l;
    for (const key of added) tally.inserted.add(key);
    tally.transactions += 1;
  }

  let error: unknown = null;
  const done = (async () => {
    while (!stopping) {
      await transaction();
      await sleep(5 + int(25));
    }
  })();
  done.catch((err: unknown) => (error = err)); // reported by failed() at once, thrown by stop()
  return {
    stop: async () => {
      stopping = true;
      await done;
      return tally;
    },
    failed: () => error,
  };
}

/** A running child catch-up. */
interface Child {
  proc: ChildProcess;
  /** Resolves true once stderr matches `re` at least `times` times, false if the child exits first. */
  until: (re: RegExp, times: number) => Promise<boolean>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout: () => string;
  stderr: () => string;
}

let pair: DbPair | undefined;
let refName: string | undefined;
let blue: pg.Client | undefined;
const greens: Db[] = [];
const children = new Set<ChildProcess>();
let writer: Writer | undefined;
const slots: string[] = [];
let publication: string | undefined;

function withDatabase(adminDsn: string, database: string): string {
  const u = new URL(adminDsn);
  u.pathname = `/${database}`;
  return u.toString();
}

async function greenAdmin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: inject('greenAdminDsn') });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

function spawnChild(slot: string, uptoLsn?: string): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', CHILD, slot, publication!, String(STAGE_BATCH), ...(uptoLsn ? [uptoLsn] : [])], {
    env: { ...process.env, CI: 'true', STREAM_BLUE_DSN: pair!.blueDsn, STREAM_GREEN_DSN: pair!.greenDsn, STREAM_MAP_BATCH: String(MAP_BATCH), STREAM_READ_UPTO: '1' },
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(proc);
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => {
    err += b.toString();
    for (const w of waiters) w();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('exit', (code, signal) => {
      children.delete(proc);
      resolve({ code, signal });
    }),
  );
  const until = (re: RegExp, times: number): Promise<boolean> =>
    new Promise((resolve) => {
      const check = (): void => {
        if ((err.match(new RegExp(re.source, 'gm')) ?? []).length >= times) {
          waiters.delete(check);
          resolve(true);
        }
      };
      waiters.add(check);
      check();
      void exited.then(() => {
        waiters.delete(check);
        resolve(false);
      });
    });
  return { proc, until, exited, stdout: () => out, stderr: () => err };
}

/** Where green's staging and mapping stand, and how many staged changes lie at or below the mapped mark. */
async function marks(green: Db, slot: string): Promise<{ staged: string | null; mapped: { lsn: string; seq: number; changes: number } | null; upToMapped: number }> {
  const staged = (await green.query<{ lsn: string }>('SELECT applied_lsn::text AS lsn FROM bluegreen_green.stream_mark WHERE slot = $1', [slot])).rows[0]?.lsn ?? null;
  const exists = (await green.query<{ ok: boolean }>(`SELECT to_regclass('bluegreen_green.mapped_mark') IS NOT NULL AS ok`)).rows[0]!.ok;
  const mapped = exists
    ? ((await green.query<{ lsn: string; seq: number; changes: number }>('SELECT applied_lsn::text AS lsn, applied_seq AS seq, changes::int AS changes FROM bluegreen_green.mapped_mark WHERE slot = $1', [slot])).rows[0] ?? null)
    : null;
  const upToMapped = mapped
    ? (await green.query<{ n: number }>('SELECT count(*)::int AS n FROM bluegreen_green.change_log WHERE (lsn, seq) <= ($1::pg_lsn, $2::int)', [mapped.lsn, mapped.seq])).rows[0]!.n
    : 0;
  return { staged, mapped, upToMapped };
}

/** Waits until the child's mapping has committed `n` more batches (the mapped mark moved n times), or it exited. */
async function mappedBatches(green: Db, slot: string, child: Child, n: number): Promise<void> {
  let last = (await marks(green, slot)).mapped?.changes ?? 0;
  for (let moved = 0; moved < n && child.proc.exitCode === null && child.proc.signalCode === null; await sleep(10)) {
    const now = (await marks(green, slot)).mapped?.changes ?? 0;
    if (now !== last) {
      moved += 1;
      last = now;
    }
  }
}

/** (lsn, seq) order of two mapped marks: negative when a is before b. */
async function compareMarks(green: Db, a: { lsn: string; seq: number }, b: { lsn: string; seq: number }): Promise<number> {
  const { rows } = await green.query<{ c: number }>('SELECT CASE WHEN ($1::pg_lsn, $2::int) < ($3::pg_lsn, $4::int) THEN -1 WHEN ($1::pg_lsn, $2::int) = ($3::pg_lsn, $4::int) THEN 0 ELSE 1 END AS c', [a.lsn, a.seq, b.lsn, b.seq]);
  return rows[0]!.c;
}

/** Per row of the change log, in (lsn, seq) order: its key and an md5 of every column. */
async function logDigest(green: Db): Promise<string[]> {
  const { rows } = await green.query<{ d: string }>(
    `SELECT lsn::text || '#' || seq || ' ' || md5(row(lsn, seq, xid, committed_at, relation, op, key, "row", toast_unchanged)::text) AS d
       FROM bluegreen_green.change_log ORDER BY lsn, seq`,
  );
  return rows.map((r) => r.d);
}

async function logRow(green: Db, lsnSeq: string | undefined): Promise<unknown> {
  if (!lsnSeq) return null;
  const [lsn, seq] = lsnSeq.split(' ')[0]!.split('#');
  const { rows } = await green.query('SELECT * FROM bluegreen_green.change_log WHERE lsn = $1::pg_lsn AND seq = $2::int', [lsn, seq]);
  return rows[0] ?? null;
}

/** The mapping's own state on green: the unmapped rows (without their timestamp) and the v1 staging tables. */
async function mappingState(green: Db): Promise<Record<string, string>> {
  const { rows: tables } = await green.query<{ t: string }>(`SELECT format('%I.%I', schemaname, tablename) AS t FROM pg_tables WHERE schemaname = 'bluegreen_green' AND tablename LIKE 'v1\\_%' ORDER BY 1`);
  const out: Record<string, string> = {};
  for (const { t } of [...tables, { t: 'bluegreen_green.unmapped' }]) {
    const expr = t === 'bluegreen_green.unmapped' ? `row(x.lsn, x.seq, x.relation, x.key, x.reason, x.row)::text` : 'x::text';
    out[t] = (await green.query<{ h: string }>(`SELECT md5(coalesce(string_agg(${expr}, E'\\n' ORDER BY ${expr}), '')) AS h FROM ${t} x`)).rows[0]!.h;
  }
  return out;
}

/** Every row of the published tables on blue, as the reader's WAL sender prints them (output functions: `t`, not `true`), by primary key. */
async function blueTables(tables: readonly string[]): Promise<Tables> {
  const out: Tables = new Map();
  for (const table of tables) {
    const { rows: meta } = await blue!.query<{ list: string; pk: string }>(
      `SELECT (SELECT string_agg(format('CASE WHEN %I IS NULL THEN NULL ELSE format(''%%s'', %I) END AS %I', attname, attname, attname), ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped) AS list,
              (SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = $1::regclass AND i.indisprimary) AS pk`,
      [table],
    );
    const { list, pk } = meta[0]!;
    const { rows } = await blue!.query<TextRow>(`SELECT ${list} FROM ${table}`);
    out.set(table, { pk, rows: new Map(rows.map((r) => [r[pk]!, r])) });
  }
  return out;
}

/** Applies the change log in order to blue's rows at the slot's start; refuses an insert of a present key or a change of a missing one. */
async function replay(green: Db, start: Tables): Promise<Tables> {
  const tables: Tables = new Map([...start].map(([t, v]) => [t, { pk: v.pk, rows: new Map(v.rows) }]));
  const { rows } = await green.query<{ at: string; relation: string; op: string; key: TextRow | null; row: TextRow | null; toast_unchanged: string[] | null }>(
    `SELECT lsn::text || '#' || seq AS at, relation, op, key, "row", toast_unchanged FROM bluegreen_green.change_log ORDER BY lsn, seq`,
  );
  for (const c of rows) {
    const table = tables.get(c.relation);
    if (!table) throw new Error(`${c.at}: change of an unknown relation ${c.relation}`);
    if (c.op === 'I') {
      const id = c.row![table.pk]!;
      if (table.rows.has(id)) throw new Error(`${c.at}: insert of ${c.relation} ${id}, already present (applied twice?)`);
      table.rows.set(id, c.row!);
    } else if (c.op === 'U' || c.op === 'D') {
      const id = c.key![table.pk]!;
      const old = table.rows.get(id);
      if (!old) throw new Error(`${c.at}: ${c.op} of ${c.relation} ${id}, not present (a write lost?)`);
      table.rows.delete(id);
      if (c.op === 'U') {
        const row = { ...c.row! };
        for (const col of c.toast_unchanged ?? []) row[col] = old[col] ?? null;
        table.rows.set(row[table.pk]!, row);
      }
    } else {
      throw new Error(`${c.at}: unexpected op ${c.op}`);
    }
  }
  return tables;
}

beforeAll(async () => {
  pair = await createDbPair('streamchaos');
  refName = `${pair.name}_ref`;
  await seedBlue(pair, FIXTURE);
  const g = new pg.Client({ connectionString: pair.greenDsn });
  await g.connect();
  try {
    await seedUpgradedToV2(g, FIXTURE);
  } finally {
    await g.end();
  }
  // The reference green starts as an exact copy (no session may be connected to the template).
  await greenAdmin(`CREATE DATABASE ${ident(refName)} TEMPLATE ${ident(pair.name)}`);
  blue = new pg.Client({ connectionString: pair.blueDsn, options: OUTPUT_OPTIONS });
  await blue.connect();
  const { rows } = await blue.query<{ wal_level: string }>('SHOW wal_level');
  expect(rows[0]!.wal_level, 'blue must run with wal_level=logical (support/embedded.ts)').toBe('logical');
}, 120_000);

afterAll(async () => {
  try {
    await writer?.stop().catch(() => undefined);
    await Promise.all([...children].map((c) => kill9(c)));
    await Promise.all(greens.map((g) => g.end().catch(() => {})));
    if (blue && slots.length) {
      // A reader that failed may still hold its slot: end its WAL sender first (slots belong to the cluster).
      await blue.query('SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = ANY($1) AND active_pid IS NOT NULL', [slots]);
      for (let i = 0; i < 50; i++) {
        if (!(await blue.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = ANY($1) AND active', [slots])).rowCount) break;
        await sleep(100);
      }
      await blue.query('SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = ANY($1)', [slots]);
    }
    if (blue && publication) await blue.query(`DROP PUBLICATION IF EXISTS ${ident(publication)}`);
  } finally {
    await blue?.end().catch(() => {});
    try {
      await pair?.drop();
    } finally {
      if (refName) await greenAdmin(`DROP DATABASE IF EXISTS ${ident(refName)} WITH (FORCE)`);
    }
  }
});

describe('catch-up (stage + map) under kill -9', () => {
  it('a catch-up SIGKILLed at random points while blue takes writes, then resumed, gives the green of an uninterrupted run', { timeout: 240_000 }, async () => {
    const started = Date.now();
    const took: Record<string, number> = {};
    process.stderr.write(`stream chaos: seed ${SEED} (STREAM_CHAOS_SEED=${SEED} replays its choices)\n`);
    const rand = prng(SEED);
    const c = blue!;
    const id = `chaos-${crypto.randomBytes(6).toString('hex')}`;
    const pub = publicationName(id);
    publication = pub;
    const present = await c.query<{ t: string }>(`SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NOT NULL ORDER BY t`, [HYDRA_V1_TO_V2.writes]);
    const published = present.rows.map((r) => r.t);
    await c.query(`CREATE PUBLICATION ${ident(pub)} FOR TABLE ${published.join(', ')}`);
    const [slotA, slotB] = [slotName(`${id}-a`), slotName(`${id}-b`)];
    // Both slots before the first write: they hand out exactly the same transactions.
    for (const slot of [slotA, slotB]) {
      await c.query(`SELECT pg_create_logical_replication_slot(${literal(slot)}, 'pgoutput')`);
      slots.push(slot);
    }
    const atStart = await blueTables(published);

    const writerClient = new pg.Client({ connectionString: pair!.blueDsn });
    await writerClient.connect();
    let tally: Tally;
    let final: StreamStats & { mapped: number; mapMs: number };
    let reference: StreamStats;
    const kills = { total: 0, afterStaged: 0, inMapping: 0, mapMoved: 0, selfExited: 0 };
    const green = await connect('green', pair!.greenDsn, 'stream-chaos-check');
    greens.push(green);
    const refDsn = withDatabase(inject('greenAdminDsn'), refName!);
    const refGreen = await connect('green', refDsn, 'stream-chaos-reference');
    greens.push(refGreen);
    await installChangeLog(green); // the marks are read between kills, maybe before a child got that far
    try {
      writer = startWriter(writerClient, prng(SEED ^ 0x5eed));
      await sleep(500);

      took.setup = Date.now() - started;
      // The chaos: spawn, wait for the planned point, SIGKILL.
      const plan = (Object.entries(KILLS) as [KillKind, number][]).flatMap(([kind, n]) => Array<KillKind>(n).fill(kind)).sort(() => rand() - 0.5);
      let previous = await marks(green, slotA);
      for (let attempt = 0; kills.total < plan.length; attempt++) {
        expect(attempt, 'children kept exiting on their own before they could be killed').toBeLessThan(plan.length * 4);
        if (writer.failed()) throw writer.failed();
        const kind = plan[kills.total]!;
        const child = spawnChild(slotA);
        let delay = 50 + Math.floor(rand() * 700);
        if (kind === 'staged') {
          await child.until(/^stream \S+: \d+ change/, 1);
          delay = Math.floor(rand() * 400);
        } else if (kind === 'mapping') {
          // At the mapping's start or after its n-th committed batch, then within the next batch.
          const n = Math.floor(rand() * 3);
          if ((await child.until(/^stream-child: mapping$/, 1)) && n > 0) await mappedBatches(green, slotA, child, n);
          delay = Math.floor(rand() * 120);
        }
        await sleep(delay);
        const running = child.proc.exitCode === null && child.proc.signalCode === null;
        await kill9(child.proc);
        const exit = await child.exited;
        if (!running || exit.signal !== 'SIGKILL') {
          expect(exit.code, `a child exited on its own with an error:\n${child.stderr()}`).toBe(0);
          kills.selfExited += 1;
        } else {
          kills.total += 1;
          if (/^stream \S+: \d+ change/m.test(child.stderr())) kills.afterStaged += 1;
          if (/^stream-child: mapping$/m.test(child.stderr())) kills.inMapping += 1;
        }
        // Nothing moved back, and the mapped mark counts exactly the staged changes up to it: none twice, none skipped.
        const now = await marks(green, slotA);
        if (now.mapped && now.mapped.changes !== previous.mapped?.changes) kills.mapMoved += 1;
        if (previous.mapped) expect(await compareMarks(green, now.mapped!, previous.mapped), 'the mapped mark moved back').toBeGreaterThanOrEqual(0);
        if (now.mapped) expect(now.mapped.changes, `mapped mark ${now.mapped.lsn}/${now.mapped.seq}`).toBe(now.upToMapped);
        previous = now;
      }

      took.chaos = Date.now() - started - took.setup;
      tally = await writer.stop();
      writer = undefined;
      const upto = (await c.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0]!.lsn;

      // Resume the chaos run to the end, and run the reference from scratch, side by side.
      const resumed = spawnChild(slotA, upto);
      const [exit, ref] = await Promise.all([
        resumed.exited,
        (async () => {
          const stats = await streamToGreen({ blueDsn: pair!.blueDsn, green: refGreen, slot: slotB, publication: pub, uptoLsn: upto, batchChanges: REFERENCE_STAGE_BATCH });
          await applyStagedChanges(refGreen, { mapping: HYDRA_V1_TO_V2.streamMapping!, batch: REFERENCE_MAP_BATCH, slot: slotB });
          return stats;
        })(),
      ]);
      expect(exit, `the resumed run failed:\n${resumed.stderr()}`).toEqual({ code: 0, signal: null });
      final = JSON.parse(resumed.stdout().trim().split('\n').at(-1)!) as StreamStats & { mapped: number; mapMs: number };
      reference = ref;
      took.final = Date.now() - started - took.setup - took.chaos;
    } finally {
      await writer?.stop().catch(() => undefined);
      writer = undefined;
      await writerClient.end().catch(() => {});
    }

    expect(final.stopped).toBe('upto');
    expect(reference.stopped).toBe('upto');
    expect(kills.total).toBeGreaterThanOrEqual(10);
    expect(kills.afterStaged).toBeGreaterThanOrEqual(KILLS.staged);
    expect(kills.inMapping).toBeGreaterThanOrEqual(KILLS.mapping);
    expect(kills.mapMoved, 'no kill came after a committed mapped batch').toBeGreaterThanOrEqual(1);

    // The two change logs are the same, row for row, every column.
    const [chaosLog, refLog] = [await logDigest(green), await logDigest(refGreen)];
    expect(chaosLog.length).toBe(reference.changes);
    expect(refLog.length).toBe(reference.changes);
    const firstDiff = chaosLog.findIndex((d, i) => d !== refLog[i]);
    expect(firstDiff, `first differing change log row: chaos ${JSON.stringify(await logRow(green, chaosLog[firstDiff]))} vs reference ${JSON.stringify(await logRow(refGreen, refLog[firstDiff]))}`).toBe(-1);

    // Every staged change mapped exactly once, on both.
    const [end, refEnd] = [await marks(green, slotA), await marks(refGreen, slotB)];
    expect(end.mapped).toMatchObject({ changes: chaosLog.length });
    expect(end.upToMapped).toBe(chaosLog.length);
    expect(refEnd.mapped).toMatchObject({ lsn: end.mapped!.lsn, seq: end.mapped!.seq, changes: chaosLog.length });

    // Green's v2 tables and the mapping's own state equal the uninterrupted run's.
    const [chaosTables, refTables] = [await tableChecksums(pair!.greenDsn), await tableChecksums(refDsn)];
    expect(Object.keys(chaosTables).length).toBeGreaterThan(5);
    expect(chaosTables).toEqual(refTables);
    expect(await mappingState(green)).toEqual(await mappingState(refGreen));

    // No write lost or staged twice: every committed insert once, nothing rolled back ...
    const pks = new Map([...atStart].map(([t, v]) => [t, v.pk]));
    const { rows: logged } = await green.query<{ relation: string; op: string; key: TextRow | null; row: TextRow | null }>(`SELECT relation, op, key, "row" FROM bluegreen_green.change_log`);
    const keyOf = (r: { relation: string; key: TextRow | null; row: TextRow | null }): string => `${r.relation}:${(r.row ?? r.key)![pks.get(r.relation)!]}`;
    const inserts = logged.filter((r) => r.op === 'I').map(keyOf);
    expect(inserts.length, 'an insert staged twice').toBe(new Set(inserts).size);
    expect(new Set(inserts)).toEqual(tally.inserted);
    expect(logged.map(keyOf).filter((k) => tally.discarded.has(k))).toEqual([]);
    expect(tally.discarded.size).toBeGreaterThan(0);
    // ... the log replayed over blue's rows at the slot's start rebuilds blue's rows now (unchanged TOAST included) ...
    const rebuilt = await replay(green, atStart);
    const now = await blueTables(published);
    for (const table of published) expect(rebuilt.get(table)!.rows, table).toEqual(now.get(table)!.rows);
    expect(logged.length).toBeGreaterThan(200);
    const { rows: toasted } = await green.query<{ n: number }>(`SELECT count(*)::int AS n FROM bluegreen_green.change_log WHERE 'session_data' = ANY (toast_unchanged)`);
    expect(toasted[0]!.n).toBeGreaterThan(0);
    // ... and every token the writer left on blue is on green's v2 tables, in the same state.
    for (const t of ['hydra_oauth2_access', 'hydra_oauth2_refresh']) {
      const q = `SELECT signature, active FROM ${t} WHERE signature LIKE 'cx-%' ORDER BY signature`;
      expect((await green.query(q)).rows, t).toEqual((await c.query(q)).rows);
    }

    // Slot A was acknowledged past the last staged commit, and nothing holds it.
    const lastLsn = chaosLog.at(-1)!.split('#')[0]!;
    const { rows: slotRows } = await c.query<{ ok: boolean; active: boolean }>(
      'SELECT confirmed_flush_lsn > $2::pg_lsn AS ok, active FROM pg_replication_slots WHERE slot_name = $1',
      [slotA, lastLsn],
    );
    expect(slotRows[0]).toEqual({ ok: true, active: false });

    process.stderr.write(
      `stream chaos (seed ${SEED}): ${kills.total} kills (${kills.afterStaged} after a staged batch, ${kills.inMapping} during the mapping, ${kills.mapMoved} after the mapped mark moved; ${kills.selfExited} children exited on their own); ` +
        `writer committed ${tally.transactions} transactions, rolled back ${tally.rolledBack}; ${chaosLog.length} changes staged and mapped; resumed run redelivered ${final.redelivered}, staged ${final.changes} in ${(final.ms / 1000).toFixed(1)} s, mapped ${final.mapped} in ${(final.mapMs / 1000).toFixed(1)} s; ${((Date.now() - started) / 1000).toFixed(1)} s (${Object.entries(took).map(([k, ms]) => `${k} ${(ms / 1000).toFixed(1)} s`).join(', ')})\n`,
    );
  });
});
