// Chaos for the stream reader (issue G): while blue takes writes (inserts, updates, deletes, multi-
// statement transactions, some rolled back, some with a rolled-back savepoint, TOASTed wide rows), the
// catch-up (support/stream-child.ts) is SIGKILLed at random moments, at least ten times, then resumed
// to completion. Two slots created before the first write see exactly the same transactions: slot A
// feeds the killed-and-resumed runs into green, slot B one uninterrupted reference run into a second
// green database. Both change logs must be identical row for row, hold exactly the changes the writer
// committed (every committed insert once, nothing rolled back), and replaying the log must rebuild
// blue's tables exactly. STREAM_CHAOS_SEED replays a run's random choices (kill delays, writes).

import { mulberry32 } from '../support/fixture/seed.ts';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { connect, type Db } from '../src/db/connect.ts';
import { ident, literal } from '../src/db/sql.ts';
import { installChangeLog } from '../src/stream/changelog.ts';
import { publicationName, slotName } from '../src/stream/names.ts';
import { streamToGreen, type StreamStats } from '../src/stream/reader.ts';
import { createDbPair, kill9, ROOT, type DbPair } from './harness.ts';

const CHILD = path.join(ROOT, 'support/stream-child.ts');
/** The settings the reader's WAL sender prints values with: blue's rows are read the same way to compare. */
const OUTPUT_OPTIONS = '-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3';
const SEED = Number(process.env.STREAM_CHAOS_SEED ?? crypto.randomInt(2 ** 31));
/** Kills timed from the child's first progress line (a batch is committed by then). */
const KILLS_AFTER_PROGRESS = 10;
/** Kills timed from the spawn (startup, install, slot check, first batch: wherever it is). */
const KILLS_FROM_SPAWN = 3;
const CHAOS_BATCH = 20;
const REFERENCE_BATCH = 500;
const TABLES = ['public.accounts', 'public.events', 'public.wide'] as const;
const WIDE_COLUMNS = Array.from({ length: 30 }, (_, i) => `c${String(i + 1).padStart(2, '0')}`);

type Table = (typeof TABLES)[number];
type TextRow = Record<string, string | null>;

/** A small seeded PRNG in [0, 1) (mulberry32): a failing run can be replayed with its seed. */
function prng(seed: number): () => number {
  const next = mulberry32(seed);
  return () => next() / 4294967296;
}

/** What the writer committed, and what it rolled back. */
interface Tally {
  /** Committed transactions. */
  transactions: number;
  /** Committed transactions that changed at least one row (one commit LSN each in the change log). */
  withChanges: number;
  /** Transactions rolled back. */
  rolledBack: number;
  /** Rows changed by committed transactions (one change log row each). */
  changes: number;
  /** `relation:id` of every committed insert. */
  inserted: Set<string>;
  /** `relation:id` of every insert rolled back (whole transaction or savepoint); ids are never reused. */
  discarded: Set<string>;
}

/** Writes to blue until stopped: random transactions of 1-4 statements, about one in seven rolled back. */
function startWriter(c: pg.Client, rand: () => number): { stop: () => Promise<Tally> } {
  const tally: Tally = { transactions: 0, withChanges: 0, rolledBack: 0, changes: 0, inserted: new Set(), discarded: new Set() };
  const next: Record<Table, number> = { 'public.accounts': 1, 'public.events': 1, 'public.wide': 1 };
  let live: Record<Table, number[]> = { 'public.accounts': [], 'public.events': [], 'public.wide': [] };
  let stopping = false;
  const int = (n: number): number => Math.floor(rand() * n);

  async function statement(t: Record<Table, number[]>, added: string[], discarded: string[]): Promise<number> {
    const pick = (table: Table): number | null => (t[table].length ? t[table][int(t[table].length)]! : null);
    const drop = (table: Table, id: number): void => {
      t[table] = t[table].filter((x) => x !== id);
    };
    const r = rand();
    if (r < 0.04) {
      // A rolled-back savepoint inside a transaction that may well commit.
      const id = next['public.accounts']++;
      await c.query('SAVEPOINT sp');
      await c.query(`INSERT INTO accounts (id, name) VALUES ($1, 'savepoint')`, [id]);
      await c.query('ROLLBACK TO SAVEPOINT sp');
      discarded.push(`public.accounts:${id}`);
      return 0;
    }
    if (r < 0.07) {
      const id = next['public.wide']++;
      const cols = WIDE_COLUMNS.map((_, i) => `w${id}-${i}-${int(1000)}`);
      const body = crypto.randomBytes(2000 + int(6000)).toString('hex'); // stored EXTERNAL: always TOASTed
      await c.query(`INSERT INTO wide (id, body, ${WIDE_COLUMNS.join(', ')}) VALUES ($1, $2, ${WIDE_COLUMNS.map((_, i) => `$${i + 3}`).join(', ')})`, [id, body, ...cols]);
      t['public.wide'].push(id);
      added.push(`public.wide:${id}`);
      return 1;
    }
    if (r < 0.14) {
      const id = pick('public.wide');
      if (id === null) return 0;
      const touchBody = rand() < 0.3;
      // Without the body: it is not sent and the change lists it as unchanged TOAST.
      const res = await c.query(`UPDATE wide SET c01 = $2, c17 = NULL${touchBody ? `, body = body || 'ff'` : ''} WHERE id = $1`, [id, `u${int(1e6)}`]);
      return res.rowCount ?? 0;
    }
    if (r < 0.16) {
      const id = pick('public.wide');
      if (id === null) return 0;
      drop('public.wide', id);
      return (await c.query('DELETE FROM wide WHERE id = $1', [id])).rowCount ?? 0;
    }
    if (r < 0.45) {
      const id = next['public.accounts']++;
      const tags = ['a', `b ${id}`, null, 'd"e', 'f,g{}'].slice(0, 1 + int(5));
      const doc = { n: id, name: `o'neil "${id}"`, nested: { list: [1, 2.5, null, 'x'] }, unicode: 'é ✓' };
      await c.query(`INSERT INTO accounts (id, name, balance, score, tags, doc, at) VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp())`, [
        id,
        `acct ${id}\t"${int(100)}"`,
        (rand() * 1e6).toFixed(int(6)),
        rand() * 1000,
        tags,
        JSON.stringify(doc),
      ]);
      t['public.accounts'].push(id);
      added.push(`public.accounts:${id}`);
      return 1;
    }
    if (r < 0.62) {
      const id = pick('public.accounts');
      if (id === null) return 0;
      const res = await c.query(
        `UPDATE accounts SET balance = coalesce(balance, 0) + $2, tags = array_append(tags, $3), doc = jsonb_set(coalesce(doc, '{}'), '{n}', to_jsonb($4::int)), at = clock_timestamp() WHERE id = $1`,
        [id, (rand() * 100).toFixed(2), `t${int(100)}`, int(1e6)],
      );
      return res.rowCount ?? 0;
    }
    if (r < 0.7) {
      const id = pick('public.accounts');
      if (id === null) return 0;
      drop('public.accounts', id);
      return (await c.query('DELETE FROM accounts WHERE id = $1', [id])).rowCount ?? 0;
    }
    if (r < 0.85) {
      // One statement, three rows.
      const first = next['public.events'];
      next['public.events'] += 3;
      const res = await c.query(
        `INSERT INTO events (id, account, kind, payload) SELECT g, $2, 'kind' || (g % 3), jsonb_build_object('g', g, 'arr', jsonb_build_array(g, 'x')) FROM generate_series($1::bigint, $1::bigint + 2) g`,
        [first, pick('public.accounts')],
      );
      for (let id = first; id < first + 3; id++) {
        t['public.events'].push(id);
        added.push(`public.events:${id}`);
      }
      return res.rowCount ?? 0;
    }
    if (r < 0.93) {
      const id = pick('public.events');
      if (id === null) return 0;
      return (await c.query(`UPDATE events SET payload = payload || jsonb_build_object('seen', $2::int), kind = NULL WHERE id = $1`, [id, int(1000)])).rowCount ?? 0;
    }
    const id = pick('public.events');
    if (id === null) return 0;
    drop('public.events', id);
    return (await c.query('DELETE FROM events WHERE id = $1', [id])).rowCount ?? 0;
  }

  async function transaction(): Promise<void> {
    const t: Record<Table, number[]> = { 'public.accounts': [...live['public.accounts']], 'public.events': [...live['public.events']], 'public.wide': [...live['public.wide']] };
    const added: string[] = [];
    const discarded: string[] = [];
    let changes = 0;
    await c.query('BEGIN');
    for (let n = 1 + int(4); n > 0; n--) changes += await statement(t, added, discarded);
    const rollback = rand() < 0.15;
    await c.query(rollback ? 'ROLLBACK' : 'COMMIT');
    for (const k of discarded) tally.discarded.add(k);
    if (rollback) {
      for (const k of added) tally.discarded.add(k);
      tally.rolledBack += 1;
      return;
    }
    live = t;
    for (const k of added) tally.inserted.add(k);
    tally.transactions += 1;
    tally.changes += changes;
    if (changes) tally.withChanges += 1;
  }

  const done = (async () => {
    while (!stopping) {
      await transaction();
      await sleep(1 + int(6));
    }
  })();
  return {
    stop: async () => {
      stopping = true;
      await done;
      return tally;
    },
  };
}

/** A running child reader. */
interface Child {
  proc: ChildProcess;
  /** Resolves true at the first progress line (a batch is committed), false if the child exits first. */
  firstProgress: Promise<boolean>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout: () => string;
  stderr: () => string;
}

let pair: DbPair | undefined;
let refName: string | undefined;
let blue: pg.Client | undefined;
const greens: Db[] = [];
const children = new Set<ChildProcess>();
let writer: { stop: () => Promise<Tally> } | undefined;
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

function spawnChild(slot: string, greenDsn: string, uptoLsn?: string): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', CHILD, slot, publication!, String(CHAOS_BATCH), ...(uptoLsn ? [uptoLsn] : [])], {
    env: { ...process.env, CI: 'true', STREAM_BLUE_DSN: pair!.blueDsn, STREAM_GREEN_DSN: greenDsn },
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(proc);
  let out = '';
  let err = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('exit', (code, signal) => {
      children.delete(proc);
      resolve({ code, signal });
    }),
  );
  const firstProgress = new Promise<boolean>((resolve) => {
    proc.stderr!.on('data', (b: Buffer) => {
      err += b.toString();
      if (/^stream \S+: \d+ change/m.test(err)) resolve(true);
    });
    void exited.then(() => resolve(false));
  });
  return { proc, firstProgress, exited, stdout: () => out, stderr: () => err };
}

async function appliedLsn(green: Db, slot: string): Promise<string | null> {
  const { rows } = await green.query<{ lsn: string }>('SELECT applied_lsn::text AS lsn FROM bluegreen_green.stream_mark WHERE slot = $1', [slot]);
  return rows[0]?.lsn ?? null;
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

/** Every row of a table on blue as the reader's WAL sender prints it, by id. */
async function blueRows(table: Table): Promise<Map<string, TextRow>> {
  const { rows: cols } = await blue!.query<{ list: string }>(
    `SELECT string_agg(format('%I::text AS %I', attname, attname), ', ' ORDER BY attnum) AS list FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`,
    [table],
  );
  const { rows } = await blue!.query<TextRow>(`SELECT ${cols[0]!.list} FROM ${table}`);
  return new Map(rows.map((r) => [r.id!, r]));
}

/** Applies the change log in order to empty tables; refuses an insert of a present key or a change of a missing one. */
async function replay(green: Db): Promise<Map<string, Map<string, TextRow>>> {
  const tables = new Map<string, Map<string, TextRow>>(TABLES.map((t) => [t, new Map()]));
  const { rows } = await green.query<{ at: string; relation: string; op: string; key: TextRow | null; row: TextRow | null; toast_unchanged: string[] | null }>(
    `SELECT lsn::text || '#' || seq AS at, relation, op, key, "row", toast_unchanged FROM bluegreen_green.change_log ORDER BY lsn, seq`,
  );
  for (const c of rows) {
    const table = tables.get(c.relation);
    if (!table) throw new Error(`${c.at}: change of an unknown relation ${c.relation}`);
    if (c.op === 'I') {
      const id = c.row!.id!;
      if (table.has(id)) throw new Error(`${c.at}: insert of ${c.relation} id ${id}, already present (applied twice?)`);
      table.set(id, c.row!);
    } else if (c.op === 'U' || c.op === 'D') {
      const id = c.key!.id!;
      const old = table.get(id);
      if (!old) throw new Error(`${c.at}: ${c.op} of ${c.relation} id ${id}, not present (a write lost?)`);
      table.delete(id);
      if (c.op === 'U') {
        const row = { ...c.row! };
        for (const col of c.toast_unchanged ?? []) row[col] = old[col] ?? null;
        table.set(row.id!, row);
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
  await greenAdmin(`CREATE DATABASE ${ident(refName)}`);
  blue = new pg.Client({ connectionString: pair.blueDsn, options: OUTPUT_OPTIONS });
  await blue.connect();
  const { rows } = await blue.query<{ wal_level: string }>('SHOW wal_level');
  expect(rows[0]!.wal_level, 'blue must run with wal_level=logical (support/embedded.ts)').toBe('logical');
});

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

describe('stream reader under kill -9', () => {
  it('a catch-up SIGKILLed at random points and resumed stages exactly what an uninterrupted run stages', { timeout: 240_000 }, async () => {
    const started = Date.now();
    const rand = prng(SEED);
    const c = blue!;
    await c.query(`CREATE TABLE accounts (id int PRIMARY KEY, name text, balance numeric, score float8, tags text[], doc jsonb, at timestamptz);
      CREATE TABLE events (id bigint PRIMARY KEY, account int, kind text, payload jsonb);
      CREATE TABLE wide (id int PRIMARY KEY, body text, ${WIDE_COLUMNS.map((col) => `${col} text`).join(', ')});
      ALTER TABLE wide ALTER COLUMN body SET STORAGE EXTERNAL`);
    const id = `chaos-${crypto.randomBytes(6).toString('hex')}`;
    const pub = publicationName(id);
    publication = pub;
    await c.query(`CREATE PUBLICATION ${ident(pub)} FOR TABLE accounts, events, wide`);
    const [slotA, slotB] = [slotName(`${id}-a`), slotName(`${id}-b`)];
    // Both slots before the first write: they hand out exactly the same transactions.
    for (const slot of [slotA, slotB]) {
      await c.query(`SELECT pg_create_logical_replication_slot(${literal(slot)}, 'pgoutput')`);
      slots.push(slot);
    }

    const writerClient = new pg.Client({ connectionString: pair!.blueDsn });
    await writerClient.connect();
    let tally: Tally;
    let final: StreamStats;
    let reference: StreamStats;
    const kills = { total: 0, afterCommit: 0, fromSpawn: 0, selfExited: 0 };
    const green = await connect('green', pair!.greenDsn, 'stream-chaos-check');
    greens.push(green);
    const refDsn = withDatabase(inject('greenAdminDsn'), refName!);
    const refGreen = await connect('green', refDsn, 'stream-chaos-reference');
    greens.push(refGreen);
    await installChangeLog(green); // the mark is read between kills, maybe before a child got that far
    try {
      writer = startWriter(writerClient, prng(SEED ^ 0x5eed));
      await sleep(300);

      // The chaos: spawn, wait, SIGKILL; from the spawn for a few, from the first committed batch for the rest.
      const plan = [...Array<boolean>(KILLS_AFTER_PROGRESS).fill(false), ...Array<boolean>(KILLS_FROM_SPAWN).fill(true)].sort(() => rand() - 0.5);
      for (let attempt = 0; kills.total < plan.length; attempt++) {
        expect(attempt, 'children kept exiting on their own before they could be killed').toBeLessThan(plan.length + 10);
        const fromSpawn = plan[kills.total]!;
        const before = await appliedLsn(green, slotA);
        const child = spawnChild(slotA, pair!.greenDsn);
        if (!fromSpawn) {
          const progressed = await Promise.race([child.firstProgress, sleep(30_000).then(() => false)]);
          if (!progressed) {
            await kill9(child.proc);
            throw new Error(`the child printed no progress line:\n${child.stderr()}`);
          }
        }
        await sleep(100 + Math.floor(rand() * 1400));
        const running = child.proc.exitCode === null && child.proc.signalCode === null;
        await kill9(child.proc);
        const exit = await child.exited;
        if (!running || exit.signal !== 'SIGKILL') {
          expect(exit.code, `a child exited on its own with an error:\n${child.stderr()}`).toBe(0);
          kills.selfExited += 1;
          continue;
        }
        kills.total += 1;
        if (fromSpawn) kills.fromSpawn += 1;
        if ((await appliedLsn(green, slotA)) !== before) kills.afterCommit += 1;
      }

      tally = await writer.stop();
      writer = undefined;
      const upto = (await c.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0]!.lsn;

      // Resume the chaos run to the end, and the reference run from scratch, side by side.
      const resumed = spawnChild(slotA, pair!.greenDsn, upto);
      const [exit, ref] = await Promise.all([
        resumed.exited,
        streamToGreen({ blueDsn: pair!.blueDsn, green: refGreen, slot: slotB, publication: pub, uptoLsn: upto, batchChanges: REFERENCE_BATCH }),
      ]);
      expect(exit, `the resumed run failed:\n${resumed.stderr()}`).toEqual({ code: 0, signal: null });
      final = JSON.parse(resumed.stdout().trim().split('\n').at(-1)!) as StreamStats;
      reference = ref;
    } finally {
      await writer?.stop().catch(() => undefined);
      writer = undefined;
      await writerClient.end().catch(() => {});
    }

    expect(final.stopped).toBe('upto');
    expect(reference).toMatchObject({ stopped: 'upto', changes: tally.changes });
    expect(kills.total).toBeGreaterThanOrEqual(10);
    expect(kills.afterCommit).toBeGreaterThanOrEqual(KILLS_AFTER_PROGRESS);

    // The two change logs are the same, row for row, every column.
    const [chaosLog, refLog] = [await logDigest(green), await logDigest(refGreen)];
    expect(chaosLog.length).toBe(tally.changes);
    expect(refLog.length).toBe(tally.changes);
    const firstDiff = chaosLog.findIndex((d, i) => d !== refLog[i]);
    expect(firstDiff, `first differing change log row: chaos ${JSON.stringify(await logRow(green, chaosLog[firstDiff]))} vs reference ${JSON.stringify(await logRow(refGreen, refLog[firstDiff]))}`).toBe(-1);
    const { rows: txs } = await green.query<{ n: number }>('SELECT count(DISTINCT lsn)::int AS n FROM bluegreen_green.change_log');
    expect(txs[0]!.n).toBe(tally.withChanges);

    // No write lost or applied twice: every committed insert once, nothing rolled back ...
    const { rows: inserts } = await green.query<{ k: string; n: number }>(`SELECT relation || ':' || ("row" ->> 'id') AS k, count(*)::int AS n FROM bluegreen_green.change_log WHERE op = 'I' GROUP BY 1`);
    expect(inserts.filter((r) => r.n !== 1)).toEqual([]);
    expect(new Set(inserts.map((r) => r.k))).toEqual(tally.inserted);
    const { rows: touched } = await green.query<{ k: string }>(
      `SELECT DISTINCT relation || ':' || coalesce("row" ->> 'id', key ->> 'id') AS k FROM bluegreen_green.change_log`,
    );
    expect(touched.map((r) => r.k).filter((k) => tally.discarded.has(k))).toEqual([]);
    // ... and the log replayed in order rebuilds blue's tables exactly (wide rows' unchanged TOAST included).
    const rebuilt = await replay(green);
    for (const table of TABLES) expect(rebuilt.get(table), table).toEqual(await blueRows(table));
    const { rows: toasted } = await green.query<{ n: number }>(`SELECT count(*)::int AS n FROM bluegreen_green.change_log WHERE toast_unchanged = ARRAY['body']`);
    expect(toasted[0]!.n).toBeGreaterThan(0);

    // Slot A was acknowledged past the last staged commit, and nothing holds it.
    const lastLsn = chaosLog.at(-1)!.split('#')[0]!;
    const { rows: slotRows } = await c.query<{ ok: boolean; active: boolean }>(
      'SELECT confirmed_flush_lsn > $2::pg_lsn AS ok, active FROM pg_replication_slots WHERE slot_name = $1',
      [slotA, lastLsn],
    );
    expect(slotRows[0]).toEqual({ ok: true, active: false });

    process.stderr.write(
      `stream chaos (seed ${SEED}): ${kills.total} kills (${kills.afterCommit} after a committed batch, ${kills.fromSpawn} timed from the spawn, ${kills.selfExited} children exited on their own); ` +
        `writer committed ${tally.transactions} transactions (${tally.changes} changes), rolled back ${tally.rolledBack}; resumed run redelivered ${final.redelivered}, staged ${final.changes}; ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
    );
  });
});
