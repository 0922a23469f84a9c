// Safe to leave running for hours: what the stream needs on blue is checked before a slot is made
// (replica identity, privileges, wal_level, slots and senders, max_slot_wal_keep_size), by preflight
// when stream.enabled and by doctor always; and every slot of ours on blue is reported by doctor and
// status with its retained WAL, a slot no live run reads flagged as left behind with the fix; status
// shows green's lag behind blue in bytes and seconds, the recent rate and an ETA, with a backlog and
// once caught up (and with staged changes not yet mapped).
// Everything is asserted against what the test cluster actually has (its settings may change).
import crypto from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installState } from '../src/state/journal.ts';
import { MAPPED_SQL } from '../src/stream/apply-changes.ts';
import { publicationName, slotName } from '../src/stream/names.ts';
import { streamToGreen } from '../src/stream/reader.ts';
import { lagLine, streamLag, streamReadiness, streamStatus, type StreamCheck, type StreamLag } from '../src/stream/readiness.ts';
import { createDbPair, runCli, withClient, writeConfig, type DbPair } from './harness.ts';

interface Check { id: string; ok: boolean; detail: string; hint?: string; warn?: boolean }

const TABLES = ['public.keyed', 'public.loose', 'public.indexed'];
const NO_ENGINE = { profile: 'none' };
const STREAM_ON = { ...NO_ENGINE, stream: { enabled: true } };

function find(checks: readonly Check[] | readonly StreamCheck[], id: string): Check {
  const c = checks.find((x) => x.id === id);
  if (!c) throw new Error(`no check ${id} in ${checks.map((x) => x.id).join(', ')}`);
  return c;
}

async function setting(c: pg.Client, name: string): Promise<string> {
  return (await c.query<{ v: string }>(`SELECT current_setting($1) AS v`, [name])).rows[0]!.v;
}

describe('stream readiness on blue', () => {
  let pair: DbPair;
  const suffix = crypto.randomBytes(3).toString('hex');
  const plainRole = `bg_plain_${suffix}`;
  const replRole = `bg_repl_${suffix}`;
  const slots: string[] = [];

  const readiness = (tables: readonly string[] = TABLES, role?: string): Promise<StreamCheck[]> =>
    withClient(pair.blueDsn, async (c) => {
      if (role) await c.query(`SET ROLE ${role}`);
      return streamReadiness(c, { tables });
    });

  beforeAll(async () => {
    pair = await createDbPair('stream');
    await withClient(pair.blueDsn, async (c) => {
      await c.query(`CREATE TABLE public.keyed (id int PRIMARY KEY, v text)`);
      await c.query(`CREATE TABLE public.loose (a int NOT NULL, b text)`);
      await c.query(`CREATE TABLE public.indexed (a int NOT NULL, b text)`);
      await c.query(`CREATE UNIQUE INDEX indexed_a ON public.indexed (a)`);
      await c.query(`CREATE ROLE ${plainRole} NOLOGIN`);
      await c.query(`CREATE ROLE ${replRole} NOLOGIN REPLICATION`);
    });
  });

  afterAll(async () => {
    if (!pair) return;
    // A database with a logical slot cannot be dropped: the slots go first.
    await withClient(pair.blueDsn, async (c) => {
      for (const s of slots) await c.query(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, [s]);
      await c.query(`DROP ROLE IF EXISTS ${plainRole}`);
      await c.query(`DROP ROLE IF EXISTS ${replRole}`);
    });
    await pair.drop();
  });

  it('fails the replica identity check naming every table without a primary key or replica identity, and a table that is not there', async () => {
    const check = find(await readiness([...TABLES, 'public.nope']), 'stream-replica-identity');
    expect(check.ok).toBe(false);
    expect(check.detail).toContain('no replica identity on public.loose, public.indexed');
    expect(check.detail).not.toContain('public.keyed');
    expect(check.detail).toContain('not on blue: public.nope');
    expect(check.detail).toContain('UPDATE and DELETE');
    expect(check.hint).toContain('ALTER TABLE "public"."loose" REPLICA IDENTITY FULL;');
    expect(check.hint).toContain('ALTER TABLE "public"."indexed" REPLICA IDENTITY FULL;');
  });

  it('status says the stream is off, or that there is no slot yet, when no slot of ours exists', async () => {
    const off = writeConfig(pair, NO_ENGINE);
    const r = await runCli(['status', '--config', off.file], off.env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('stream: off');
    const on = writeConfig(pair, STREAM_ON);
    const json = JSON.parse((await runCli(['status', '--config', on.file, '--json'], on.env)).stdout);
    expect(json.stream).toEqual({ enabled: true, slot: null, leftBehind: [], catchUp: null });
    expect((await runCli(['status', '--config', on.file], on.env)).stdout).toContain('stream: no slot yet');
  });

  it('makes preflight (plan) and doctor fail with stream.enabled, and doctor only inform without it', async () => {
    const on = writeConfig(pair, STREAM_ON);
    const plan = await runCli(['plan', '--config', on.file], on.env);
    expect(plan.code).toBe(3);
    expect(plan.stderr).toContain('stream-replica-identity');
    expect(plan.stderr).toContain('public.loose');
    const doctorOn = await runCli(['doctor', '--config', on.file, '--json'], on.env);
    expect(doctorOn.code).toBe(3);
    expect(find(JSON.parse(doctorOn.stdout).checks, 'stream-replica-identity')).toMatchObject({ ok: false, detail: expect.stringContaining('public.loose') });

    const off = writeConfig(pair, NO_ENGINE);
    const doctorOff = await runCli(['doctor', '--config', off.file, '--json'], off.env);
    expect(doctorOff.code, doctorOff.stdout).toBe(0);
    const checks = JSON.parse(doctorOff.stdout).checks as Check[];
    expect(find(checks, 'stream-replica-identity')).toMatchObject({ ok: true, warn: true, detail: expect.stringMatching(/^needed for stream\.enabled: .*public\.loose/), hint: expect.stringContaining('REPLICA IDENTITY FULL') });
    // Every check once: preflight adds the stream's only when stream.enabled, doctor otherwise.
    const ids = checks.map((c) => c.id);
    expect(new Set(ids).size).toBe(ids.length);
    const text = await runCli(['doctor', '--config', off.file], off.env);
    expect(text.stdout).toMatch(/stream-replica-identity\s+warn\s+needed for stream\.enabled/);
  });

  it('passes the replica identity check once each table has FULL or USING INDEX, and fails again when that index is dropped', async () => {
    await withClient(pair.blueDsn, async (c) => {
      await c.query(`ALTER TABLE public.loose REPLICA IDENTITY FULL`);
      await c.query(`ALTER TABLE public.indexed REPLICA IDENTITY USING INDEX indexed_a`);
    });
    expect(find(await readiness(), 'stream-replica-identity')).toMatchObject({ ok: true, detail: '3 table(s) to publish, each with a primary key or a replica identity' });

    await withClient(pair.blueDsn, (c) => c.query(`DROP INDEX public.indexed_a`));
    expect(find(await readiness(), 'stream-replica-identity')).toMatchObject({ ok: false, detail: expect.stringContaining('no replica identity on public.indexed') });
    await withClient(pair.blueDsn, (c) => c.query(`ALTER TABLE public.indexed REPLICA IDENTITY FULL`));
  });

  it('checks wal_level, free slots and WAL senders against what the cluster has', async () => {
    const actual = await withClient(pair.blueDsn, async (c) => ({
      walLevel: await setting(c, 'wal_level'),
      maxSlots: Number(await setting(c, 'max_replication_slots')),
      usedSlots: Number((await c.query<{ n: string }>(`SELECT count(*) AS n FROM pg_replication_slots`)).rows[0]!.n),
    }));
    const checks = await readiness();
    const wal = find(checks, 'stream-wal-level');
    expect(wal.ok).toBe(actual.walLevel === 'logical');
    expect(wal.detail).toContain(`wal_level=${actual.walLevel}`);
    expect(wal.hint).toContain('rds.logical_replication');
    expect(wal.hint).toContain('cloudsql.logical_decoding');
    expect(find(checks, 'stream-slots')).toMatchObject({ ok: actual.maxSlots > actual.usedSlots, detail: expect.stringContaining(`max_replication_slots=${actual.maxSlots}`) });
    expect(find(checks, 'stream-wal-senders').detail).toMatch(/of max_wal_senders=\d+ active/);
  });

  it('fails the privilege checks for a role without REPLICATION that owns no table, and passes REPLICATION and superuser', async () => {
    const plain = await readiness(TABLES, plainRole);
    expect(find(plain, 'stream-replication-privilege')).toMatchObject({ ok: false, detail: expect.stringContaining(`${plainRole} has neither REPLICATION nor superuser`), hint: expect.stringContaining(`ALTER ROLE "${plainRole}" WITH REPLICATION`) });
    expect(find(plain, 'stream-replication-privilege').hint).toContain(`GRANT rds_replication TO "${plainRole}"`);
    const pub = find(plain, 'stream-publication-privilege');
    expect(pub.ok).toBe(false);
    expect(pub.detail).toContain(`no CREATE on database ${pair.name}`);
    expect(pub.detail).toContain('not the owner of public.keyed');
    expect(pub.detail).toContain('public.indexed');

    expect(find(await readiness(TABLES, replRole), 'stream-replication-privilege')).toMatchObject({ ok: true, detail: `${replRole} may create replication slots (REPLICATION attribute)` });
    const admin = await readiness();
    expect(find(admin, 'stream-replication-privilege')).toMatchObject({ ok: true, detail: expect.stringContaining('(superuser)') });
    expect(find(admin, 'stream-publication-privilege').ok).toBe(true);
  });

  it('warns loudly when max_slot_wal_keep_size is unlimited and shows it otherwise; a warning never fails', async () => {
    const keep = await withClient(pair.blueDsn, (c) => setting(c, 'max_slot_wal_keep_size'));
    const check = find(await readiness(), 'stream-wal-keep');
    expect(check.ok).toBe(true);
    if (keep === '-1') {
      expect(check).toMatchObject({ warn: true, detail: expect.stringMatching(/^WARNING: max_slot_wal_keep_size = -1 \(unlimited\).*disk/) });
      expect(check.hint).toContain("ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'");
    } else {
      expect(check.warn).toBeUndefined();
      expect(check.detail).toContain(`max_slot_wal_keep_size = ${keep}`);
    }
  });

  it("lists our slots in doctor and status: the database's with its retained WAL and lag, others and one no run reads as left behind with the fix", async () => {
    const own = slotName(pair.name);
    const left = `bluegreen_test_left_${suffix}`;
    await withClient(pair.blueDsn, async (c) => {
      for (const s of [own, left]) {
        await c.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [s]);
        slots.push(s);
      }
      // Some WAL after the slots were made, so both retain something.
      await c.query(`INSERT INTO public.keyed SELECT g, 'x' FROM generate_series(1, 1000) g`);
    });
    const cfg = writeConfig(pair, STREAM_ON);
    type Slot = { name: string; active: boolean; retainedBytes: number; retained: string; leftBehind: boolean; why?: string };
    const doctor = async (): Promise<{ checks: Check[]; slots: Slot[] }> => JSON.parse((await runCli(['doctor', '--config', cfg.file, '--json'], cfg.env)).stdout);

    // No run on blue yet: nobody reads even the database's own slot.
    const before = await doctor();
    expect(before.slots.find((s) => s.name === own)).toMatchObject({ leftBehind: true, why: expect.stringContaining('no live run') });

    const runId = `20250101T000000Z-${suffix}`;
    await withClient(pair.blueDsn, async (c) => {
      await installState(c);
      await c.query(`INSERT INTO bluegreen.run (run_id, config_digest, green_target) VALUES ($1, 'test', 'test')`, [runId]);
    });
    const doc = await doctor();
    expect(doc.slots.find((s) => s.name === left)).toMatchObject({ active: false, leftBehind: true, why: expect.stringContaining(`not this database's slot (${own})`), retainedBytes: expect.any(Number), retained: expect.stringMatching(/bytes|kB|MB/) });
    expect(doc.slots.find((s) => s.name === own)).toMatchObject({ leftBehind: false });
    const leftCheck = find(doc.checks, 'stream-left-behind');
    expect(leftCheck).toMatchObject({ ok: true, warn: true, detail: expect.stringContaining(left), hint: expect.stringContaining(`pg_drop_replication_slot('${left}')`) });
    expect(leftCheck.hint).toContain('migrate finish --abandon --yes');
    expect(leftCheck.detail).not.toContain(`${own} (`);
    const doctorText = await runCli(['doctor', '--config', cfg.file], cfg.env);
    expect(doctorText.stdout + doctorText.stderr).toMatch(new RegExp(`${left}\\s+no\\s+.*LEFT BEHIND`));

    const status = await runCli(['status', '--config', cfg.file, '--json'], cfg.env);
    expect(status.code, status.stderr).toBe(0);
    const stream = JSON.parse(status.stdout).stream;
    expect(stream.slot).toMatchObject({ name: own, active: false, confirmedFlushLsn: expect.stringMatching(/^[0-9A-F]+\/[0-9A-F]+$/), retainedBytes: expect.any(Number), lagBytes: expect.any(Number) });
    expect(stream.slot.retainedBytes).toBeGreaterThan(0);
    expect(stream.leftBehind.map((s: { name: string }) => s.name)).toEqual([left]);
    const text = (await runCli(['status', '--config', cfg.file], cfg.env)).stdout;
    expect(text).toContain(`stream: slot ${own} INACTIVE, confirmed up to`);
    expect(text).toMatch(new RegExp(`stream: slot ${left} is LEFT BEHIND .*pg_drop_replication_slot\\('${left}'\\)`));
  });
  it('shows lag in bytes and seconds, the recent rate and an ETA in status: with a backlog, and 0 / caught up after the catch-up', async () => {
    const own = slotName(pair.name);
    const publication = publicationName(pair.name);
    // A live run (status reads the database's slot only then), and the slot again, after the
    // publication: pgoutput cannot decode changes from before its publication existed.
    await withClient(pair.blueDsn, async (c) => {
      await installState(c);
      await c.query(`INSERT INTO bluegreen.run (run_id, config_digest, green_target) SELECT $1, 'test', 'test' WHERE NOT EXISTS (SELECT 1 FROM bluegreen.run)`, [`20250101T000001Z-${suffix}`]);
      await c.query(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, [own]);
      if (!slots.includes(own)) slots.push(own);
      await c.query(`CREATE PUBLICATION ${publication} FOR TABLE public.keyed`);
      await c.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [own]);
      for (let i = 1; i <= 200; i++) await c.query(`INSERT INTO public.keyed VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v`, [i, `first ${i}`]);
    });
    const cfg = writeConfig(pair, STREAM_ON);
    const green = new pg.Client({ connectionString: pair.greenDsn });
    await green.connect();
    const status = async (): Promise<StreamLag> => {
      const json = await runCli(['status', '--config', cfg.file, '--json'], cfg.env);
      expect(json.code, json.stderr).toBe(0);
      return JSON.parse(json.stdout).stream.catchUp;
    };
    const statusText = async (): Promise<string> => (await runCli(['status', '--config', cfg.file], cfg.env)).stdout;
    try {
      // Several batches close together: the rate window has a start.
      const lines: string[] = [];
      const first = await streamToGreen({ blueDsn: pair.blueDsn, green, slot: own, publication, batchChanges: 20, progress: (l) => lines.push(l) });
      expect(first).toMatchObject({ changes: 200, stopped: 'caught-up' });
      expect(lines.at(-1)).toMatch(/; lag \d+ bytes, [\d.]+ s since the last staged commit; now \d+ changes\/s, [\d.]+ (bytes|kB|MB)\/s of WAL; ETA caught up$/);

      // A backlog: more than the 1 MiB of WAL an idle blue may write, committed a while after the catch-up.
      await sleep(1200);
      await withClient(pair.blueDsn, async (c) => {
        for (let i = 1; i <= 30; i++) await c.query(`UPDATE public.keyed SET v = (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3000)) WHERE id = $1`, [i]);
      });
      const behind = await status();
      expect(behind).toMatchObject({ unmappedChanges: 0, eta: 'estimated', stagedLsn: first.appliedLsn });
      expect(behind.lagBytes).toBeGreaterThan(1024 * 1024);
      expect(behind.lagSeconds).toBeGreaterThan(1);
      expect(behind.lagSeconds).toBeLessThan(120);
      expect(behind.ratePerSecond).toBeGreaterThan(0);
      expect(behind.bytesPerSecond).toBeGreaterThan(0);
      expect(behind.etaSeconds).toBeCloseTo(behind.lagBytes / behind.bytesPerSecond!, 3);
      expect(await statusText()).toMatch(/stream: lag [\d.]+ MB of WAL, [\d.]+ s behind; rate \d+ changes\/s \([\d.]+ (bytes|kB|MB)\/s of WAL, last [\d.]+ s of batches\); ETA ([\d.]+ s|\d+ min \d+ s|\d+ h \d+ min)/);

      // Caught up again: lag 0 s and "caught up" (unless the shared cluster wrote over 1 MiB since, then a few seconds).
      const second = await streamToGreen({ blueDsn: pair.blueDsn, green, slot: own, publication, batchChanges: 5 });
      expect(second.changes).toBe(30);
      const caught = await status();
      if (caught.lagBytes <= 1024 * 1024) {
        expect(caught).toMatchObject({ lagSeconds: 0, eta: 'caught-up', etaSeconds: 0 });
        expect(lagLine(caught)).toMatch(/^stream: lag [\d.]+ (bytes|kB) of WAL, caught up; rate \d+ changes\/s .*; ETA caught up$/);
      } else {
        expect(caught.lagSeconds).toBeLessThan(10);
      }
      expect(caught.ratePerSecond).toBeGreaterThan(0);

      // Staged but not mapped (an engine with a mapping): the oldest unmapped commit sets the lag in seconds.
      await green.query(MAPPED_SQL);
      const log = (await green.query<{ lsn: string; seq: number; committed_at: Date }>(`SELECT lsn::text, seq, committed_at FROM bluegreen_green.change_log ORDER BY lsn, seq`)).rows;
      const mappedUpTo = log[199]!;
      await green.query(`INSERT INTO bluegreen_green.mapped_mark (slot, applied_lsn, applied_seq, changes) VALUES ($1, $2::pg_lsn, $3, 200)`, [own, mappedUpTo.lsn, mappedUpTo.seq]);
      const slot = (await withClient(pair.blueDsn, (c) => streamStatus(c, { enabled: true }))).slot!;
      const before = Date.now();
      const unmapped = await withClient(pair.blueDsn, (c) => streamLag(c, green, slot, { mapped: true }));
      expect(unmapped.unmappedChanges).toBe(30);
      expect(unmapped.lagSeconds).toBeGreaterThanOrEqual((before - log[200]!.committed_at.getTime()) / 1000);
      expect(unmapped.lagSeconds).toBeLessThan(120);
      expect(unmapped.lagBytes).toBeGreaterThan(1024 * 1024);
      expect(unmapped.eta).toBe('estimated');
      await green.query(`UPDATE bluegreen_green.mapped_mark SET applied_lsn = $2::pg_lsn, applied_seq = $3 WHERE slot = $1`, [own, log.at(-1)!.lsn, log.at(-1)!.seq]);
      expect((await withClient(pair.blueDsn, (c) => streamLag(c, green, slot, { mapped: true }))).unmappedChanges).toBe(0);
    } finally {
      await green.end();
      await withClient(pair.blueDsn, (c) => c.query(`DROP PUBLICATION IF EXISTS ${publication}`));
    }
  });
});
