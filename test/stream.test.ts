// The stream reader (issue G) on real clusters: blue's slot drained into green's change log in commit
// order, values byte for byte as `col::text` prints them on blue, TOAST-unchanged columns absent and
// listed, rolled-back work absent; a second run stages nothing; an aborted run resumes with every
// change exactly once; re-delivered transactions (mark ahead of the slot) are skipped; uptoLsn stops
// where asked; a missing slot is a StateError naming the fix. Each test has its own database pair,
// slot and publication, dropped afterwards (slots belong to the cluster, not the database).

import crypto from 'node:crypto';
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { connect, type Db } from '../src/db/connect.ts';
import { ConnectionLostError, StateError } from '../src/errors.ts';
import { publicationName, slotName } from '../src/stream/names.ts';
import { streamToGreen, type StreamOptions } from '../src/stream/reader.ts';
import { createDbPair, type DbPair } from './harness.ts';

/** The settings the reader's WAL sender prints values with (PostgreSQL's own subscriber asks for the same). */
const OUTPUT_OPTIONS = '-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3';
const KINDS = 'id::text AS id, tags::text AS tags, doc::text AS doc, at::text AS at, amount::text AS amount, blob::text AS blob, note::text AS note';

type TextRow = Record<string, string | null>;

/** One change as the change log should hold it. */
interface Expected {
  relation: string;
  op: string;
  key: TextRow | null;
  row: TextRow | null;
  toast_unchanged: string[] | null;
}

interface LogRow extends Expected {
  lsn: string;
  seq: number;
  xid: string | null;
  committed_at: Date | null;
}

let pair: DbPair;
let blue: pg.Client;
let green: Db;
let slots: string[];

beforeEach(async () => {
  pair = await createDbPair('stream');
  blue = new pg.Client({ connectionString: pair.blueDsn, options: OUTPUT_OPTIONS });
  await blue.connect();
  green = await connect('green', pair.greenDsn);
  slots = [];
  const { rows } = await blue.query<{ wal_level: string }>('SHOW wal_level');
  expect(rows[0]!.wal_level, 'blue must run with wal_level=logical (support/embedded.ts)').toBe('logical');
});

afterEach(async () => {
  await green?.end().catch(() => {});
  if (slots.length) {
    // A reader that failed a test may still hold its slot: end its WAL sender first.
    await blue.query('SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = ANY($1) AND active_pid IS NOT NULL', [slots]);
    for (let i = 0; i < 50; i++) {
      const busy = await blue.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = ANY($1) AND active', [slots]);
      if (!busy.rowCount) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await blue.query('SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = ANY($1)', [slots]);
  }
  await blue?.end().catch(() => {});
  await pair?.drop();
});

/** A slot and a publication for `tables`, named as a run would name them. */
async function stream(tables: string[]): Promise<{ slot: string; publication: string }> {
  const id = `test-${crypto.randomBytes(6).toString('hex')}`;
  const slot = slotName(id);
  const publication = publicationName(id);
  await blue.query(`CREATE PUBLICATION ${publication} FOR TABLE ${tables.join(', ')}`);
  await blue.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
  slots.push(slot);
  return { slot, publication };
}

function options(s: { slot: string; publication: string }, extra: Partial<StreamOptions> = {}): StreamOptions {
  return { blueDsn: pair.blueDsn, green, slot: s.slot, publication: s.publication, batchChanges: 100, ...extra };
}

async function changeLog(): Promise<LogRow[]> {
  const { rows } = await green.query<LogRow>(
    `SELECT lsn::text, seq, xid::text, committed_at, relation, op, key, "row", toast_unchanged FROM bluegreen_green.change_log ORDER BY lsn, seq`,
  );
  return rows;
}

function shape(rows: LogRow[]): Expected[] {
  return rows.map((r) => ({ relation: r.relation, op: r.op, key: r.key, row: r.row, toast_unchanged: r.toast_unchanged }));
}

/** Waits until no WAL sender holds the slot (the reader closed its replication connection). */
async function slotReleased(slot: string): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    const { rows } = await blue.query<{ active: boolean }>('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [slot]);
    if (rows[0] && !rows[0].active) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

describe('streamToGreen', () => {
  it('stages exactly the committed changes, in order, with values as Postgres prints them', async () => {
    await blue.query(`CREATE TABLE kinds (id int PRIMARY KEY, tags text[], doc jsonb, at timestamptz(6), amount numeric, blob bytea, note text);
      CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
      ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL`);
    const s = await stream(['kinds', 'docs']);
    const expected: Expected[][] = [];
    const one = async (sql: string, params: unknown[] = []): Promise<TextRow> => (await blue.query<TextRow>(sql, params)).rows[0]!;

    // T1, T2: inserts with awkward values, then one with nulls only.
    const k1 = await one(
      `INSERT INTO kinds VALUES (1, ARRAY['a', 'b c', NULL, 'd"e', 'f,g'], '{"b": "x\\"y", "a": [1, 2.50, 1e3]}', '2024-02-29 12:34:56.123456+05:30',
         12345678901234567890.000000001, '\\x00ff10', E'é ✓\\nline\\t"q"') RETURNING ${KINDS}`,
    );
    expect(k1.at).toMatch(/\.123456/);
    expected.push([{ relation: 'public.kinds', op: 'I', key: null, row: k1, toast_unchanged: null }]);
    const k2 = await one(`INSERT INTO kinds (id) VALUES (2) RETURNING ${KINDS}`);
    expected.push([{ relation: 'public.kinds', op: 'I', key: null, row: k2, toast_unchanged: null }]);

    // T3: one transaction, four statements on two tables.
    await blue.query('BEGIN');
    const k3 = await one(`INSERT INTO kinds VALUES (3, '{}', 'null', 'infinity', 'NaN', '', '') RETURNING ${KINDS}`);
    const k1b = await one(`UPDATE kinds SET note = 'changed', amount = amount * 2 WHERE id = 1 RETURNING ${KINDS}`);
    await blue.query('DELETE FROM kinds WHERE id = 2');
    const d1 = await one(`INSERT INTO docs VALUES (1, repeat('x', 10000) || 'end', 1) RETURNING id::text AS id, body::text AS body, n::text AS n`);
    await blue.query('COMMIT');
    expected.push([
      { relation: 'public.kinds', op: 'I', key: null, row: k3, toast_unchanged: null },
      { relation: 'public.kinds', op: 'U', key: { id: '1' }, row: k1b, toast_unchanged: null },
      { relation: 'public.kinds', op: 'D', key: { id: '2' }, row: null, toast_unchanged: null },
      { relation: 'public.docs', op: 'I', key: null, row: d1, toast_unchanged: null },
    ]);

    // Rolled back: must not appear.
    await blue.query('BEGIN');
    await blue.query(`INSERT INTO kinds (id, note) VALUES (999, 'rolled back')`);
    await blue.query(`UPDATE kinds SET note = 'rolled back' WHERE id = 1`);
    await blue.query('ROLLBACK');

    // T4: the TOASTed body is not touched: not sent, absent from the row and listed.
    const d1b = await one('UPDATE docs SET n = n + 1 WHERE id = 1 RETURNING id::text AS id, n::text AS n');
    expected.push([{ relation: 'public.docs', op: 'U', key: { id: '1' }, row: d1b, toast_unchanged: ['body'] }]);
    // T5: the key changes: the old key is staged.
    const k10 = await one(`UPDATE kinds SET id = 10 WHERE id = 3 RETURNING ${KINDS}`);
    expected.push([{ relation: 'public.kinds', op: 'U', key: { id: '3' }, row: k10, toast_unchanged: null }]);
    // T6: truncate.
    await blue.query('TRUNCATE docs');
    expected.push([{ relation: 'public.docs', op: 'T', key: null, row: null, toast_unchanged: null }]);

    const lines: string[] = [];
    const stats = await streamToGreen(options(s, { batchChanges: 3, progress: (t) => lines.push(t) }));
    expect(stats).toMatchObject({ transactions: 6, changes: 9, redelivered: 0, stopped: 'caught-up' });
    expect(stats.batches).toBeGreaterThanOrEqual(2);

    const log = await changeLog();
    expect(shape(log)).toEqual(expected.flat());
    // One commit LSN per transaction, increasing, seq from 1 inside each.
    const byTx = expected.map((tx) => tx.length);
    const lsns = [...new Set(log.map((r) => r.lsn))];
    expect(lsns).toHaveLength(6);
    expect(lsns.map((l) => log.filter((r) => r.lsn === l).map((r) => r.seq))).toEqual(byTx.map((n) => Array.from({ length: n }, (_, i) => i + 1)));
    expect(log.every((r) => r.xid !== null && r.committed_at instanceof Date)).toBe(true);
    // Byte for byte what blue prints now for the rows that are left.
    const now = (await blue.query<TextRow>(`SELECT ${KINDS} FROM kinds ORDER BY id`)).rows;
    expect(now).toEqual([k1b, k10]);
    expect(log.find((r) => r.op === 'U' && r.row?.id === '1')!.row!.tags).toBe(now[0]!.tags);

    // The mark, the acknowledgement, the lag.
    const mark = (await green.query(`SELECT applied_lsn::text AS lsn, changes::int AS changes FROM bluegreen_green.stream_mark WHERE slot = $1`, [s.slot])).rows[0];
    expect(mark).toEqual({ lsn: lsns[5], changes: 9 });
    expect(stats.appliedLsn).toBe(lsns[5]);
    const confirmed = (await blue.query(`SELECT confirmed_flush_lsn > $2::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = $1`, [s.slot, lsns[5]])).rows[0];
    expect(confirmed.ok).toBe(true);
    expect(stats.lagBytes).toBeGreaterThanOrEqual(0);
    expect(stats.lagSeconds).toBeGreaterThanOrEqual(0);
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.at(-1)).toMatch(/9 change\(s\) in 6 transaction\(s\) staged \(\d+ changes\/s\); lag \d+ bytes, [\d.]+ s since the last staged commit/);
    expect(await slotReleased(s.slot)).toBe(true);

    // Idempotent: a second run stages nothing.
    const again = await streamToGreen(options(s));
    expect(again).toMatchObject({ transactions: 0, changes: 0, stopped: 'caught-up', appliedLsn: lsns[5] });
    expect(await changeLog()).toEqual(log);
    expect(await slotReleased(s.slot)).toBe(true);
  });

  it('resumes after an abort mid-stream: every change exactly once', async () => {
    await blue.query('CREATE TABLE t (id int PRIMARY KEY, v text)');
    const s = await stream(['t']);
    for (let i = 0; i < 40; i++) await blue.query(`INSERT INTO t SELECT g, 'v' || g FROM generate_series($1::int, $2::int) g`, [i * 5 + 1, i * 5 + 5]);

    const controller = new AbortController();
    const first = streamToGreen(options(s, { batchChanges: 10, signal: controller.signal, progress: () => controller.abort() }));
    await expect(first).rejects.toBeInstanceOf(StateError);
    await expect(first).rejects.toThrow(/stopped before it caught up/);
    const partial = (await changeLog()).length;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(200);
    expect(await slotReleased(s.slot)).toBe(true);

    const rest = await streamToGreen(options(s, { batchChanges: 10 }));
    expect(rest.changes).toBe(200 - partial);
    const log = await changeLog();
    expect(log).toHaveLength(200);
    expect(new Set(log.map((r) => `${r.lsn}#${r.seq}`)).size).toBe(200);
    expect(log.map((r) => Number(r.row!.id)).sort((a, b) => a - b)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    const lsns = [...new Set(log.map((r) => r.lsn))];
    expect(lsns).toHaveLength(40);
    for (const l of lsns) expect(log.filter((r) => r.lsn === l).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect((await streamToGreen(options(s))).changes).toBe(0);
    expect(await changeLog()).toHaveLength(200);
  });

  it('skips transactions green already holds (mark ahead of the slot), and ON CONFLICT guards a slot without a mark', async () => {
    await blue.query('CREATE TABLE t (id int PRIMARY KEY, v text)');
    const s = await stream(['t']);
    for (let i = 1; i <= 5; i++) await blue.query(`INSERT INTO t VALUES ($1, 'v')`, [i]);
    // Copies of the slot stand for "green committed, the acknowledgement never reached blue".
    const ahead = { slot: `${s.slot}_b`, publication: s.publication };
    const unmarked = { slot: `${s.slot}_c`, publication: s.publication };
    for (const copy of [ahead.slot, unmarked.slot]) {
      await blue.query('SELECT pg_copy_logical_replication_slot($1, $2)', [s.slot, copy]);
      slots.push(copy);
    }
    expect(await streamToGreen(options(s))).toMatchObject({ transactions: 5, changes: 5 });
    const log = await changeLog();
    await green.query(`INSERT INTO bluegreen_green.stream_mark (slot, applied_lsn, committed_at) SELECT $1, applied_lsn, committed_at FROM bluegreen_green.stream_mark WHERE slot = $2`, [ahead.slot, s.slot]);

    // The server starts at the mark, so it sends only the transaction committed there; the reader skips it.
    expect(await streamToGreen(options(ahead))).toMatchObject({ transactions: 0, changes: 0, redelivered: 1 });
    expect(await streamToGreen(options(unmarked))).toMatchObject({ transactions: 5, changes: 0, redelivered: 0 });
    expect(await changeLog()).toEqual(log);
  });

  it('stops at uptoLsn and leaves later transactions for the next run', async () => {
    await blue.query('CREATE TABLE t (id int PRIMARY KEY, v text)');
    const s = await stream(['t']);
    await blue.query(`INSERT INTO t VALUES (1, 'before')`);
    const upto = (await blue.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0]!.lsn;
    await blue.query(`INSERT INTO t VALUES (2, 'after')`);

    const stats = await streamToGreen(options(s, { uptoLsn: upto }));
    expect(stats).toMatchObject({ transactions: 1, changes: 1, stopped: 'upto' });
    expect((await changeLog()).map((r) => r.row!.id)).toEqual(['1']);
    expect(stats.lagBytes).toBeGreaterThan(0);

    await streamToGreen(options(s));
    expect((await changeLog()).map((r) => r.row!.id)).toEqual(['1', '2']);
  });

  it('a WAL sender that goes away is a lost blue connection, and the slot is left free', async () => {
    await blue.query('CREATE TABLE t (id int PRIMARY KEY)');
    const s = await stream(['t']);
    const run = streamToGreen(options(s));
    run.catch(() => {}); // asserted below
    let pid: number | null = null;
    for (let i = 0; i < 100 && pid === null; i++) {
      pid = (await blue.query<{ pid: number | null }>('SELECT active_pid AS pid FROM pg_replication_slots WHERE slot_name = $1', [s.slot])).rows[0]!.pid;
      if (pid === null) await new Promise((r) => setTimeout(r, 10));
    }
    expect(pid).not.toBeNull();
    await blue.query('SELECT pg_terminate_backend($1)', [pid]);
    await expect(run).rejects.toBeInstanceOf(ConnectionLostError);
    await expect(run).rejects.toMatchObject({ side: 'blue', exitCode: 6 });
    expect(await slotReleased(s.slot)).toBe(true);
  });

  it('a missing slot is a StateError naming the slot and the fix', async () => {
    await blue.query('CREATE TABLE t (id int PRIMARY KEY)');
    await blue.query(`CREATE PUBLICATION ${publicationName('test-missing')} FOR TABLE t`);
    const slot = slotName(`test-${crypto.randomBytes(6).toString('hex')}`);
    const run = streamToGreen(options({ slot, publication: publicationName('test-missing') }));
    await expect(run).rejects.toBeInstanceOf(StateError);
    await expect(run).rejects.toMatchObject({ message: expect.stringContaining(slot), hint: expect.stringContaining('migrate apply --restart') });
    const readers = await blue.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE 'migrate-stream%' AND datname = current_database()`);
    expect(readers.rows[0].n).toBe(0);
  });
});
