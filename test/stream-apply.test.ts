// The stream starts exactly where the copy ends (issue G, item 1): with `stream.enabled`, apply
// creates the publication and a logical replication slot whose exported snapshot the copy reads, and
// its stream step stages what blue committed afterwards in green's change log. Every token written on
// blue during the whole apply is then in exactly one place on green: the copy or the change log, never
// both, never neither. Cutover requires green caught up and streams before and after the flip;
// `migrate finish` removes the slot and the publication again.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { streamToGreen } from '../src/stream/reader.ts';
import { HYDRA_STREAM_MAPPING } from '../src/engines/hydra/stream-map/index.ts';
import { applyStagedChanges } from '../src/stream/apply-changes.ts';
import { issueTokens } from './blue-writes.ts';
import { createDbPair, kill9, runCli, seedBlue, startCliUntil, withClient, writeConfig, type DbPair } from './harness.ts';

describe('apply with stream.enabled', () => {
  let pair: DbPair;
  let cfg: ReturnType<typeof writeConfig>;
  let applied: { code: number | null; doc: { ok: boolean; steps: { name: string; status: string }[] }; stderr: string };
  let issued: string[];
  let copied: Set<string>;

  beforeAll(async () => {
    pair = await createDbPair('stream');
    await seedBlue(pair, { rows: 3000, seed: 11, dirty: [] });
    const target = { name: 'config-table', kind: 'sql', database: 'green', prepare: { sql: `SELECT value FROM app_config WHERE key = 'upstream'`, params: [] }, commit: { sql: `UPDATE app_config SET value = 'green' WHERE key = 'upstream'`, params: [] }, rollback: { sql: `UPDATE app_config SET value = $1 WHERE key = 'upstream'`, params: ['{{saved}}'] } };
    cfg = writeConfig(pair, { stream: { enabled: true, batchChanges: 100 }, cutover: { targets: [target] } });
    let done = false;
    const writer = issueTokens(pair.blueDsn, () => done, 'stream');
    try {
      // Stopped right after the copy (a crash there): what the copy holds is read, then the run resumes.
      const paused = await startCliUntil(['apply', '--config', cfg.file, '--drill-pause', 'after:snapshot:mark-loaded'], cfg.env, 'fault: paused after snapshot:mark-loaded');
      copied = new Set(await withClient(pair.greenDsn, async (c) => (await c.query<{ s: string }>(`SELECT signature AS s FROM hydra_oauth2_access WHERE signature LIKE 'stream-%'`)).rows.map((r) => r.s)));
      await kill9(paused.child);
      const r = await runCli(['apply', '--config', cfg.file, '--resume', '--json'], cfg.env);
      applied = { code: r.code, doc: JSON.parse(r.stdout), stderr: r.stderr };
    } finally {
      done = true;
      issued = await writer;
    }
  }, 240_000);
  afterAll(async () => {
    // A slot left by a failed test would keep WAL on the shared cluster.
    await runCli(['finish', '--config', cfg.file, '--abandon', '--yes'], cfg.env).catch(() => {});
    await pair?.drop();
  });

  it('resumes after a kill right after the copy (the slot kept, no unit copied again) and runs the stream step after validate, exit 0', () => {
    expect(applied.code, applied.stderr.slice(-3000)).toBe(0);
    expect(applied.doc.steps.map((s) => `${s.name}:${s.status}`)).toEqual(['preflight:skipped', 'capture:skipped', ...['snapshot', 'cleanup', 'migrate', 'validate', 'stream'].map((n) => `${n}:done`)]);
    expect(issued.length).toBeGreaterThan(20);
  });

  it('copies from the slot\'s snapshot: the journal records the slot and where its stream starts', async () => {
    await withClient(pair.blueDsn, async (c) => {
      const rec = (await c.query(`SELECT j.detail, r.snapshot_id FROM bluegreen.journal j JOIN bluegreen.run r USING (run_id) WHERE j.step = 'snapshot' AND j.unit = 'slot'`)).rows[0];
      expect(rec.detail.slot).toMatch(/^bluegreen_/);
      expect(rec.detail.consistentPoint).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
      expect(rec.detail.snapshotId).toBe(rec.snapshot_id);
      const slot = (await c.query(`SELECT plugin, slot_type FROM pg_replication_slots WHERE slot_name = $1`, [rec.detail.slot])).rows[0];
      expect(slot).toEqual({ plugin: 'pgoutput', slot_type: 'logical' });
      const pub = (await c.query(`SELECT count(*)::int AS n FROM pg_publication_tables WHERE pubname LIKE 'bluegreen_pub_%' AND tablename = 'hydra_oauth2_access'`)).rows[0];
      expect(pub.n).toBe(1);
    });
  });

  it('puts every token written during apply in exactly one place, the copy or the change log, and maps each into the v2 table', async () => {
    const slot = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT detail->>'slot' AS s FROM bluegreen.journal WHERE step = 'snapshot' AND unit = 'slot'`)).rows[0].s as string);
    const publication = slot.replace(/^bluegreen_/, 'bluegreen_pub_');
    // The writes after the stream step started: a last catch-up with the reader the step uses.
    const green = new pg.Client({ connectionString: pair.greenDsn });
    await green.connect();
    try {
      await streamToGreen({ blueDsn: pair.blueDsn, green, slot, publication, batchChanges: 100 });
      const logged = (await green.query<{ s: string }>(`SELECT row->>'signature' AS s FROM bluegreen_green.change_log WHERE relation = 'public.hydra_oauth2_access' AND op = 'I' AND row->>'signature' LIKE 'stream-%'`)).rows.map((r) => r.s);
      const loggedSet = new Set(logged);
      expect(logged.length, 'no insert staged twice').toBe(loggedSet.size);
      const both = issued.filter((s) => copied.has(s) && loggedSet.has(s));
      const neither = issued.filter((s) => !copied.has(s) && !loggedSet.has(s));
      expect(both).toEqual([]);
      expect(neither).toEqual([]);
      // Both halves are exercised: some tokens came with the copy, some through the stream.
      expect(copied.size).toBeGreaterThan(0);
      expect(loggedSet.size).toBeGreaterThan(0);
      // Mapped into the new schema, every one of them is a v2 token on green (with its network id).
      await applyStagedChanges(green, { mapping: HYDRA_STREAM_MAPPING, batch: 100, slot });
      const onGreen = (await green.query<{ s: string }>(`SELECT signature AS s FROM hydra_oauth2_access WHERE signature LIKE 'stream-%' AND nid IS NOT NULL`)).rows.map((r) => r.s);
      expect(new Set(onGreen)).toEqual(new Set(issued));
      expect((await green.query(`SELECT count(*)::int AS n FROM bluegreen_green.unmapped`)).rows[0].n).toBe(0);
    } finally {
      await green.end();
    }
  });

  it('cuts over only when green is caught up, streaming before the flip and the tail after it', async () => {
    await withClient(pair.greenDsn, (c) => c.query(`CREATE TABLE app_config (key text PRIMARY KEY, value text); INSERT INTO app_config VALUES ('upstream', 'blue')`));
    const late = await issueTokens(pair.blueDsn, ((n) => () => n++ >= 30)(0), 'late');
    const r = await runCli(['cutover', '--config', cfg.file, '--yes', '--json'], cfg.env);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const doc = JSON.parse(r.stdout) as { guardrails: { id: string; ok: boolean }[]; steps: { name: string; status: string; actions?: { id: string; status?: string }[] }[] };
    expect(doc.guardrails.find((g) => g.id === 'stream-caught-up')?.ok).toBe(true);
    const ran = doc.steps.flatMap((s) => (s.actions ?? []).map((a) => `${s.name}/${a.id}:${a.status}`));
    expect(ran).toEqual(expect.arrayContaining(['cutover/stream:done', 'cutover/flip:done', 'drain/stream-tail:done']));
    // The tokens written just before the cutover are in green's change log.
    const logged = await withClient(pair.greenDsn, async (c) => (await c.query<{ s: string }>(`SELECT row->>'signature' AS s FROM bluegreen_green.change_log WHERE op = 'I' AND row->>'signature' = ANY ($1::text[])`, [late])).rows.length);
    expect(logged).toBe(late.length);
  });

  it('shows the slot in status, and migrate finish removes the slot and the publication', async () => {
    const status = await runCli(['status', '--config', cfg.file, '--json'], cfg.env);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/bluegreen_/);
    const finished = await runCli(['finish', '--config', cfg.file, '--yes', '--json'], cfg.env);
    expect(finished.code, finished.stderr).toBe(0);
    const removed = (JSON.parse(finished.stdout).removed as { id: string }[]).map((a) => a.id);
    expect(removed.some((id) => id.startsWith('blue:replication slot:bluegreen_'))).toBe(true);
    expect(removed.some((id) => id.startsWith('blue:publication:bluegreen_pub_'))).toBe(true);
    await withClient(pair.blueDsn, async (c) => {
      expect((await c.query(`SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name LIKE 'bluegreen%' AND database = current_database()`)).rows[0].n).toBe(0);
      expect((await c.query(`SELECT count(*)::int AS n FROM pg_publication WHERE pubname LIKE 'bluegreen%'`)).rows[0].n).toBe(0);
    });
  });
});
