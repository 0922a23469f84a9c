// Replay semantics per profile on real Postgres: v1 (consent tables) and our v2-shaped fixture
// (flow table), idempotency on event id, time ordering of a set-based batch, a
// batch that loses a deadlock running again, and the pipelined stream of batches the drain uses.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { prepareParts, replayPipelined } from '../src/replay/pipeline.ts';
import { applyReplayBatch, orderEvents, type ReplayEvent } from '../src/replay/semantics.ts';
import { createDbPair, seedBlue, seedUpgradedToV2, withClient, type DbPair } from './harness.ts';
import { connect } from '../src/db/connect.ts';
import { loadHydraV1Schema, seedHydraV1 } from '../support/fixture/seed.ts';

let pair: DbPair;
let v1: pg.Client;
let v2: pg.Client;
let n = 0;
const ev = (e: Omit<ReplayEvent, 'id' | 'at'> & { at?: string }): ReplayEvent => ({ id: `evt-${++n}-${Date.now()}`, at: e.at ?? new Date(Date.UTC(2024, 0, 1, 0, 0, n)).toISOString(), ...e });

async function one<T>(db: pg.Client, sql: string, params: unknown[] = []): Promise<T> {
  return (await db.query(sql, params)).rows[0] as T;
}

/** A grant with an active access and an active refresh row. */
async function liveGrant(db: pg.Client, offset = 0): Promise<{ request_id: string; access: string; refresh: string }> {
  return one(db, `SELECT a.request_id, a.signature AS access, r.signature AS refresh FROM hydra_oauth2_access a JOIN hydra_oauth2_refresh r USING (request_id)
    WHERE r.active AND a.challenge_id IS NOT NULL ORDER BY a.signature OFFSET $1 LIMIT 1`, [offset]);
}

async function grantState(db: pg.Client, requestId: string): Promise<{ access: number; refreshActive: number; refresh: number }> {
  return one(db, `SELECT (SELECT count(*)::int FROM hydra_oauth2_access WHERE request_id = $1) AS access,
    (SELECT count(*)::int FROM hydra_oauth2_refresh WHERE request_id = $1 AND active) AS "refreshActive",
    (SELECT count(*)::int FROM hydra_oauth2_refresh WHERE request_id = $1) AS refresh`, [requestId]);
}

beforeAll(async () => {
  pair = await createDbPair('replay');
  await seedBlue(pair, { rows: 400, seed: 7, dirty: [] });
  v1 = await connect('blue', pair.blueDsn);
  // Green: the same seed, upgraded in place to the v2 shape by the fixture's own migrations.
  v2 = await connect('green', pair.greenDsn);
  await seedUpgradedToV2(v2, { rows: 400, seed: 7, dirty: [] });
}, 60_000);

afterAll(async () => {
  await v1?.end();
  await v2?.end();
  await pair?.drop();
});

for (const profile of ['hydra-v1', 'hydra-v2'] as const) {
  describe(`${profile} semantics`, () => {
    const db = (): pg.Client => (profile === 'hydra-v1' ? v1 : v2);

    it('revokes a whole grant from one access-token signature: access rows deleted, refresh rows deactivated', async () => {
      const g = await liveGrant(db(), 0);
      const before = await grantState(db(), g.request_id);
      expect(before.access).toBeGreaterThan(0);
      const total = await one<{ n: number }>(db(), 'SELECT count(*)::int AS n FROM hydra_oauth2_access');
      expect(await applyReplayBatch(db(), profile, [ev({ kind: 'token-revoke', signature: g.access })])).toEqual({ applied: 1, duplicates: 0 });
      expect(await grantState(db(), g.request_id)).toEqual({ access: 0, refreshActive: 0, refresh: before.refresh });
      expect((await one<{ n: number }>(db(), 'SELECT count(*)::int AS n FROM hydra_oauth2_access')).n).toBe(total.n - before.access);
    });

    it('revokes a grant by request id', async () => {
      const g = await liveGrant(db(), 1);
      await applyReplayBatch(db(), profile, [ev({ kind: 'token-revoke', requestId: g.request_id })]);
      expect(await grantState(db(), g.request_id)).toMatchObject({ access: 0, refreshActive: 0 });
    });

    it('deactivates only the rotated-away refresh token on refresh-rotate', async () => {
      const g = await liveGrant(db(), 2);
      const before = await grantState(db(), g.request_id);
      await applyReplayBatch(db(), profile, [ev({ kind: 'refresh-rotate', signature: g.refresh })]);
      expect(await one(db(), 'SELECT active FROM hydra_oauth2_refresh WHERE signature = $1', [g.refresh])).toEqual({ active: false });
      expect((await grantState(db(), g.request_id)).access).toBe(before.access);
    });

    it("deletes a subject's consent for one client and, by cascade, its tokens", async () => {
      const c = await one<{ subject: string; client_id: string; challenge: string }>(db(), `SELECT a.subject, a.client_id, a.challenge_id AS challenge FROM hydra_oauth2_access a
        WHERE a.challenge_id IS NOT NULL ORDER BY a.signature OFFSET 10 LIMIT 1`);
      const consentTable = profile === 'hydra-v1' ? 'hydra_oauth2_consent_request' : 'hydra_oauth2_flow';
      const challengeCol = profile === 'hydra-v1' ? 'challenge' : 'consent_challenge_id';
      const others = await one<{ n: number }>(db(), `SELECT count(*)::int AS n FROM ${consentTable} WHERE subject = $1 AND client_id <> $2 AND ${challengeCol} IS NOT NULL`, [c.subject, c.client_id]);
      await applyReplayBatch(db(), profile, [ev({ kind: 'consent-revoke', subject: c.subject, client: c.client_id })]);
      expect(await one(db(), `SELECT count(*)::int AS n FROM ${consentTable} WHERE subject = $1 AND client_id = $2 AND ${challengeCol} IS NOT NULL`, [c.subject, c.client_id])).toEqual({ n: 0 });
      expect(await one(db(), 'SELECT count(*)::int AS n FROM hydra_oauth2_access WHERE challenge_id = $1', [c.challenge])).toEqual({ n: 0 });
      expect(await one(db(), `SELECT count(*)::int AS n FROM ${consentTable} WHERE subject = $1 AND client_id <> $2 AND ${challengeCol} IS NOT NULL`, [c.subject, c.client_id])).toEqual(others);
    });

    it('leaves a consent requested after the revocation alone (a late replay never deletes a new grant)', async () => {
      const consentTable = profile === 'hydra-v1' ? 'hydra_oauth2_consent_request' : 'hydra_oauth2_flow';
      const challengeCol = profile === 'hydra-v1' ? 'challenge' : 'consent_challenge_id';
      const c = await one<{ subject: string; client_id: string; challenge: string }>(db(), `SELECT a.subject, a.client_id, a.challenge_id AS challenge FROM hydra_oauth2_access a
        WHERE a.challenge_id IS NOT NULL ORDER BY a.signature OFFSET 30 LIMIT 1`);
      // Granted anew on the live side after the revocation happened on the other side.
      await db().query(`UPDATE ${consentTable} SET requested_at = timestamp '2030-01-01 00:00:00' WHERE ${challengeCol} = $1`, [c.challenge]);
      const tokens = await one<{ n: number }>(db(), 'SELECT count(*)::int AS n FROM hydra_oauth2_access WHERE challenge_id = $1', [c.challenge]);
      expect(tokens.n).toBeGreaterThan(0);
      await applyReplayBatch(db(), profile, [ev({ kind: 'consent-revoke', subject: c.subject, client: c.client_id, at: '2029-12-31T23:59:59.000Z' })]);
      expect(await one(db(), `SELECT count(*)::int AS n FROM ${consentTable} WHERE ${challengeCol} = $1`, [c.challenge])).toEqual({ n: 1 });
      expect(await one(db(), 'SELECT count(*)::int AS n FROM hydra_oauth2_access WHERE challenge_id = $1', [c.challenge])).toEqual(tokens);
      expect(await one(db(), `SELECT count(*)::int AS n FROM ${consentTable} WHERE subject = $1 AND client_id = $2 AND ${challengeCol} <> $3`, [c.subject, c.client_id, c.challenge])).toEqual({ n: 0 });
      // A revocation after that grant does reach it.
      await applyReplayBatch(db(), profile, [ev({ kind: 'consent-revoke', subject: c.subject, client: c.client_id, at: '2030-01-01T00:00:01.000Z' })]);
      expect(await one(db(), `SELECT count(*)::int AS n FROM ${consentTable} WHERE ${challengeCol} = $1`, [c.challenge])).toEqual({ n: 0 });
    });

    it('applies outbox-shaped events exactly: one access row by signature, one consent by challenge', async () => {
      const g = await liveGrant(db(), 3);
      const before = await grantState(db(), g.request_id);
      const challenge = (await one<{ c: string }>(db(), 'SELECT challenge_id AS c FROM hydra_oauth2_refresh WHERE challenge_id IS NOT NULL AND request_id <> $1 ORDER BY signature OFFSET 20 LIMIT 1', [g.request_id])).c;
      await applyReplayBatch(db(), profile, [ev({ kind: 'access-remove', signature: g.access }), ev({ kind: 'consent-revoke', challenge })]);
      expect(await grantState(db(), g.request_id)).toEqual({ ...before, access: before.access - 1 });
      expect(await one(db(), 'SELECT count(*)::int AS n FROM hydra_oauth2_refresh WHERE challenge_id = $1', [challenge])).toEqual({ n: 0 });
    });

    it('is idempotent: a redelivered batch is counted as duplicates and changes nothing', async () => {
      const g = await liveGrant(db(), 4);
      const batch = [ev({ kind: 'token-revoke', requestId: g.request_id }), ev({ kind: 'refresh-rotate', signature: g.refresh })];
      expect(await applyReplayBatch(db(), profile, [...batch, batch[0]!])).toEqual({ applied: 2, duplicates: 1 });
      const after = await grantState(db(), g.request_id);
      expect(await applyReplayBatch(db(), profile, batch)).toEqual({ applied: 0, duplicates: 2 });
      expect(await grantState(db(), g.request_id)).toEqual(after);
    });
  });
}

describe('conflicts', () => {
  it('runs a batch again when it loses a deadlock against another writer', async () => {
    const [x, y] = (await v1.query<{ refresh: string }>('SELECT signature AS refresh FROM hydra_oauth2_refresh WHERE active ORDER BY signature OFFSET 50 LIMIT 2')).rows as [{ refresh: string }, { refresh: string }];
    const deadlocks = async () => (await one<{ n: number }>(v1, 'SELECT deadlocks::int AS n FROM pg_stat_database WHERE datname = current_database()')).n;
    const deadlocksBefore = await deadlocks();
    const other = await connect('blue', pair.blueDsn);
    try {
      const pid = (await one<{ p: number }>(v1, 'SELECT pg_backend_pid() AS p')).p;
      await other.query('BEGIN');
      await other.query('UPDATE hydra_oauth2_refresh SET scope = scope WHERE signature = $1', [x.refresh]);
      // The batch locks y's row (its earlier event), then waits for x's row.
      const batch = applyReplayBatch(v1, 'hydra-v1', [ev({ kind: 'refresh-rotate', signature: y.refresh }), ev({ kind: 'refresh-rotate', signature: x.refresh })]);
      for (let i = 0; i < 200 && (await one<{ w: string | null }>(other, 'SELECT wait_event_type AS w FROM pg_stat_activity WHERE pid = $1', [pid])).w !== 'Lock'; i++) await new Promise((r) => setTimeout(r, 25));
      // Now the other writer wants y's row: a cycle. The batch has waited longer, so its deadlock check
      // fires first and it is the one aborted (40P01); it must run again once the other writer is done.
      await other.query('UPDATE hydra_oauth2_refresh SET scope = scope WHERE signature = $1', [y.refresh]);
      await other.query('ROLLBACK');
      expect(await batch).toEqual({ applied: 2, duplicates: 0 });
      const active = await one<{ n: number }>(v1, 'SELECT count(*)::int AS n FROM hydra_oauth2_refresh WHERE signature = ANY($1) AND active', [[x.refresh, y.refresh]]);
      expect(active.n).toBe(0);
      // Postgres counted the deadlock (its statistics are flushed within about a second).
      for (let i = 0; i < 40 && (await deadlocks()) === deadlocksBefore; i++) await new Promise((r) => setTimeout(r, 100));
      expect(await deadlocks()).toBeGreaterThan(deadlocksBefore);
    } finally {
      await other.end();
    }
  });
});

describe('first use', () => {
  it('lets several connections create the dedup table at the same moment', async () => {
    const conns = await Promise.all(Array.from({ length: 4 }, () => connect('blue', pair.blueDsn)));
    try {
      const grants = (await v1.query<{ request_id: string }>('SELECT request_id FROM hydra_oauth2_refresh ORDER BY signature OFFSET 120 LIMIT 240')).rows;
      for (let round = 0; round < 60; round++) {
        await v1.query('DROP SCHEMA IF EXISTS bluegreen_green CASCADE');
        const results = await Promise.all(conns.map((c, i) => applyReplayBatch(c, 'hydra-v1', [ev({ kind: 'token-revoke', requestId: grants[round * 4 + i]!.request_id })])));
        expect(results).toEqual(conns.map(() => ({ applied: 1, duplicates: 0 })));
      }
    } finally {
      await Promise.all(conns.map((c) => c.end()));
    }
  });
});

describe('ordering', () => {
  it('sorts a batch by time, then id, and keeps the first copy of a repeated id', () => {
    const a = { id: 'b', kind: 'token-revoke', at: '2024-01-01T00:00:02Z', requestId: 'r1' } as const;
    const b = { id: 'a', kind: 'token-revoke', at: '2024-01-01T00:00:02+00:00', requestId: 'r2' } as const;
    const c = { id: 'z', kind: 'token-revoke', at: '2024-01-01T01:00:01+02:00', requestId: 'r3' } as const;
    expect(orderEvents([a, b, c, { ...a, requestId: 'copy' }]).map((e) => e.id)).toEqual(['z', 'a', 'b']);
  });

  it('orders toISOString() times as text exactly as by parsed time', () => {
    const times = [Date.UTC(2024, 0, 1, 0, 0, 9), Date.UTC(2024, 0, 1, 0, 0, 10), Date.UTC(2023, 11, 31, 23, 59, 59, 999), Date.UTC(2024, 0, 1, 0, 0, 9)];
    const events = times.map((t, i) => ({ id: `e${3 - i}`, kind: 'token-revoke', at: new Date(t).toISOString(), requestId: `r${i}` }) as const);
    expect(orderEvents(events).map((e) => e.id)).toEqual(['e1', 'e0', 'e3', 'e2']);
  });
  it('gives the same result set-based and shuffled as one event at a time in time order', async () => {
    const p = await createDbPair('order');
    try {
      await seedBlue(p, { rows: 300, seed: 11, dirty: [] });
      await withClient(p.greenDsn, async (c) => {
        await loadHydraV1Schema(c);
        await seedHydraV1(c, { rows: 300, seed: 11, dirty: [] });
      });
      const events = await withClient(p.blueDsn, async (c) => {
        const grants = (await c.query('SELECT request_id, signature FROM hydra_oauth2_refresh ORDER BY signature LIMIT 60')).rows as { request_id: string; signature: string }[];
        const subjects = (await c.query('SELECT DISTINCT subject FROM hydra_oauth2_consent_request ORDER BY subject LIMIT 5')).rows as { subject: string }[];
        return [
          ...grants.slice(0, 30).map((g, i) => ev({ kind: 'token-revoke', signature: g.signature, at: `2024-02-01T00:00:${String(i).padStart(2, '0')}Z` })),
          ...grants.slice(30).map((g, i) => ev({ kind: 'refresh-rotate', signature: g.signature, at: `2024-02-01T00:01:${String(i).padStart(2, '0')}Z` })),
          ...subjects.map((s, i) => ev({ kind: 'consent-revoke', subject: s.subject, at: `2024-02-01T00:02:0${i}Z` })),
        ];
      });
      const shuffled = [...events].sort((x, y) => (x.id.split('').reverse().join('') < y.id.split('').reverse().join('') ? -1 : 1));
      await withClient(p.blueDsn, async (c) => {
        for (const e of orderEvents(events)) await applyReplayBatch(c, 'hydra-v1', [e]);
      });
      await withClient(p.greenDsn, (c) => applyReplayBatch(c, 'hydra-v1', shuffled));
      const digest = (dsn: string) => withClient(dsn, async (c) => (await c.query(`SELECT
          (SELECT md5(string_agg(signature || active, ',' ORDER BY signature)) FROM hydra_oauth2_refresh) AS r,
          (SELECT md5(string_agg(signature, ',' ORDER BY signature)) FROM hydra_oauth2_access) AS a,
          (SELECT md5(string_agg(challenge, ',' ORDER BY challenge)) FROM hydra_oauth2_consent_request) AS c`)).rows[0]);
      const [one1, batch] = await Promise.all([digest(p.blueDsn), digest(p.greenDsn)]);
      expect(batch).toEqual(one1);
    } finally {
      await p.drop();
    }
  }, 60_000);
});

describe('pipelined replay', () => {
  it('splits a batch by grant: each request on one connection, every event in exactly one part', () => {
    const events = Array.from({ length: 200 }, (_, i) => ev({ kind: 'token-revoke', requestId: `req-${i % 50}` }));
    const parts = prepareParts('hydra-v1', events, 3);
    expect(parts.map((p) => p.ordered.length).reduce((a, b) => a + b, 0)).toBe(200);
    expect(parts.every((p) => p.ordered.length > 0)).toBe(true);
    for (let r = 0; r < 50; r++) expect(parts.filter((p) => p.ordered.some((e) => e.requestId === `req-${r}`))).toHaveLength(1);
  });

  it('applies batches in order, reports each commit, and surfaces a source error only after the batch in flight committed', async () => {
    const grants = (await v1.query<{ request_id: string }>('SELECT request_id FROM hydra_oauth2_refresh WHERE active ORDER BY signature OFFSET 80 LIMIT 2')).rows;
    const batches = grants.map((g, i) => ({ events: [ev({ kind: 'token-revoke', requestId: g.request_id })], meta: i }));
    let reads = 0;
    const next = async () => {
      reads++;
      if (reads > batches.length) throw new Error('source went away');
      return batches[reads - 1]!;
    };
    const committed: [number, number][] = [];
    await expect(replayPipelined([v1], 'hydra-v1', next, async (meta, result) => void committed.push([meta, result.applied]))).rejects.toThrow('source went away');
    expect(committed).toEqual([[0, 1], [1, 1]]);
    for (const g of grants) expect(await grantState(v1, g.request_id)).toMatchObject({ access: 0, refreshActive: 0 });
  });
});
