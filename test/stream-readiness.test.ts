// Safe to leave running for hours: what the stream needs on blue is checked before a slot is made
// (replica identity, privileges, wal_level, slots and senders, max_slot_wal_keep_size), by preflight
// when stream.enabled and by doctor always; and every slot of ours on blue is reported by doctor and
// status with its retained WAL, a slot no live run reads flagged as left behind with the fix.
// Everything is asserted against what the test cluster actually has (its settings may change).
import crypto from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installState } from '../src/state/journal.ts';
import { slotName } from '../src/stream/names.ts';
import { streamReadiness, type StreamCheck } from '../src/stream/readiness.ts';
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
    expect(json.stream).toEqual({ enabled: true, slot: null, leftBehind: [] });
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
});
