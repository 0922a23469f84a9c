// `migrate drain` on real Postgres: blue's outbox and a queue (over the documented REST shapes)
// replayed into a v2-shaped green, resumable by the high-water mark, deduplicated, forged messages
// left for the dead-letter queue, and rows of transactions still open at a read picked up later.
// A queue drain cannot pull (paused, or consumed by the Worker) stops it before anything is written;
// a dead-letter queue is replayed where its letters verify and keeps the rest.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { connect } from '../src/db/connect.ts';
import { resolveEngine } from '../src/engines/index.ts';
import { signRevocation } from '../src/queue-consumer/message.ts';
import { LocalQueue } from '../support/queues/local-queue.ts';
import { serveLocalQueueApi } from '../support/queues/fake-api.ts';
import { installGreenCapture } from '../src/replay/capture-green.ts';
import { drain } from '../src/replay/drain.ts';
import { createDbPair, fingerprint, runCli, seedBlue, seedUpgradedToV2, writeConfig, type DbPair } from './harness.ts';

const KEY = 'drain-test-hmac-key';
let pair: DbPair;
let blue: pg.Client;
let green: pg.Client;

/** Revokes a grant on blue the way the engine does (v1): delete access rows, deactivate refresh rows. */
async function revokeOnBlue(db: pg.Client, requestId: string): Promise<void> {
  await db.query('DELETE FROM hydra_oauth2_access WHERE request_id = $1', [requestId]);
  await db.query('UPDATE hydra_oauth2_refresh SET active = false WHERE request_id = $1 AND active', [requestId]);
}

async function liveGrants(db: pg.Client, n: number, offset: number): Promise<{ request_id: string; signature: string }[]> {
  return (await db.query(`SELECT r.request_id, r.signature FROM hydra_oauth2_refresh r WHERE r.active AND EXISTS (SELECT 1 FROM hydra_oauth2_access a WHERE a.request_id = r.request_id)
    ORDER BY r.signature OFFSET $1 LIMIT $2`, [offset, n])).rows;
}

async function liveOnGreen(requestIds: string[]): Promise<number> {
  const { rows } = await green.query(`SELECT (SELECT count(*) FROM hydra_oauth2_access WHERE request_id = ANY($1)) + (SELECT count(*) FROM hydra_oauth2_refresh WHERE request_id = ANY($1) AND active) AS n`, [requestIds]);
  return Number(rows[0].n);
}

beforeAll(async () => {
  pair = await createDbPair('drain');
  await seedBlue(pair, { rows: 600, seed: 3, dirty: [] });
  blue = await connect('blue', pair.blueDsn);
  await installGreenCapture(blue, resolveEngine('hydra', 'hydra-v2').capture.blue); // the capture step's triggers, v1 tables
  green = await connect('green', pair.greenDsn);
  await seedUpgradedToV2(green, { rows: 600, seed: 3, dirty: [] }); // the snapshot (same data), migrated
}, 60_000);

afterAll(async () => {
  await blue?.end();
  await green?.end();
  await pair?.drop();
});

/**
 * Rows at or below the mark that a new drain reads once more: those whose transaction was not older
 * than the stored xmin (other test files' transactions on the cluster hold it back, so the count varies).
 */
async function rereadBelowMark(mark: string): Promise<number> {
  const xmin = (await green.query(`SELECT snapshot_xmin::text AS x FROM bluegreen_green.drain_mark WHERE source = 'outbox:blue'`)).rows[0].x as string;
  return Number((await blue.query('SELECT count(*) AS n FROM bluegreen.outbox WHERE seq <= $1 AND txid >= $2::bigint', [mark, xmin])).rows[0].n);
}

describe('drain', () => {
  it('replays the outbox into green and resumes from its high-water mark', async () => {
    const first = await liveGrants(blue, 20, 0);
    for (const g of first) await revokeOnBlue(blue, g.request_id);
    expect(await liveOnGreen(first.map((g) => g.request_id))).toBeGreaterThan(0);
    const outbox = Number((await blue.query('SELECT count(*) AS n FROM bluegreen.outbox')).rows[0].n);
    expect(outbox).toBeGreaterThanOrEqual(first.length * 2);
    // Split over two connections to green, as `migrate drain` does by default.
    const green2 = await connect('green', pair.greenDsn);
    const s1 = await drain({ source: blue, sourceSide: 'blue', target: green, moreTargets: [green2], profile: 'hydra-v2', batchSize: 7 }).finally(() => green2.end());
    expect(s1.outboxRead).toBe(outbox);
    expect(s1.batches).toBeGreaterThan(1);
    expect(await liveOnGreen(first.map((g) => g.request_id))).toBe(0);

    const second = await liveGrants(blue, 5, 0);
    for (const g of second) await revokeOnBlue(blue, g.request_id);
    const captured = Number((await blue.query('SELECT count(*) AS n FROM bluegreen.outbox WHERE seq > $1', [s1.outboxMark])).rows[0].n);
    const again = await rereadBelowMark(s1.outboxMark);
    const s2 = await drain({ source: blue, sourceSide: 'blue', target: green, profile: 'hydra-v2' });
    expect(s2.outboxRead).toBe(captured + again);
    expect(s2.applied).toBe(captured);
    expect(await liveOnGreen(second.map((g) => g.request_id))).toBe(0);
    const s3 = await drain({ source: blue, sourceSide: 'blue', target: green, profile: 'hydra-v2' });
    expect(s3.applied).toBe(0);
    expect(s3.outboxMark).toBe(s2.outboxMark);
  });

  it('picks up a revocation whose transaction was still open when a later one was drained', async () => {
    const [slow, fast] = await liveGrants(blue, 2, 0);
    const other = await connect('blue', pair.blueDsn);
    try {
      await other.query('BEGIN');
      await revokeOnBlue(other, slow!.request_id); // takes the lower seq, commits last
      await revokeOnBlue(blue, fast!.request_id);
      await drain({ source: blue, sourceSide: 'blue', target: green, profile: 'hydra-v2' });
      expect(await liveOnGreen([fast!.request_id])).toBe(0);
      expect(await liveOnGreen([slow!.request_id])).toBeGreaterThan(0);
      await other.query('COMMIT');
    } finally {
      await other.end();
    }
    await drain({ source: blue, sourceSide: 'blue', target: green, profile: 'hydra-v2' });
    expect(await liveOnGreen([slow!.request_id])).toBe(0);
  });

  it('reads each outbox row once while an unrelated open transaction holds the cluster-wide xmin back', async () => {
    const idle = await connect('blue', pair.blueDsn);
    try {
      await idle.query('BEGIN');
      await idle.query('SELECT txid_current()'); // an old transaction id stays open for the whole drain
      const before = Number((await blue.query('SELECT max(seq) AS m FROM bluegreen.outbox')).rows[0].m ?? 0);
      const grants = await liveGrants(blue, 12, 0);
      for (const g of grants) await revokeOnBlue(blue, g.request_id);
      const captured = Number((await blue.query('SELECT count(*) AS n FROM bluegreen.outbox WHERE seq > $1', [before])).rows[0].n);
      const again = await rereadBelowMark(String(before));
      const stats = await drain({ source: blue, sourceSide: 'blue', target: green, profile: 'hydra-v2', batchSize: 5 });
      expect(stats.batches).toBeGreaterThan(2);
      // Each row once: a batch never re-reads its predecessor's rows (the bug read about twice `captured`).
      // The previous run's tail (`again`) is re-read at most once; whether all of it is depends on the
      // cluster-wide xmin other sessions (other test files) held when that run stored its mark.
      expect(stats.outboxRead).toBeGreaterThanOrEqual(captured);
      expect(stats.outboxRead).toBeLessThanOrEqual(captured + again);
      expect(stats.applied).toBe(captured);
      expect(await liveOnGreen(grants.map((g) => g.request_id))).toBe(0);
    } finally {
      await idle.query('ROLLBACK').catch(() => undefined);
      await idle.end();
    }
  });

  it('applies queue messages once, acks them after commit and leaves forged ones for the dead-letter queue', async () => {
    const queue = new LocalQueue({ maxRetries: 2 });
    const grants = await liveGrants(green, 6, 0);
    const envelopes = await Promise.all(grants.map((g, i) => signRevocation({ v: 1, id: `q-${g.signature.slice(0, 12)}-${i}`, kind: 'token-revoke', at: new Date().toISOString(), requestId: g.request_id }, KEY)));
    for (const e of envelopes) queue.send(e);
    queue.send(envelopes[0]); // delivered twice
    const victim = (await liveGrants(green, 1, 10))[0]!;
    const forged = await signRevocation({ v: 1, id: 'forged-0001', kind: 'token-revoke', at: new Date().toISOString(), requestId: victim.request_id }, 'not-the-key');
    queue.send(forged);
    queue.send({ body: { v: 1 }, mac: 'zz' });
    const stats = await drain({ source: blue, sourceSide: 'blue', target: green, profile: 'hydra-v2', queue: { queue, hmacKey: KEY } });
    expect(stats.queueRead).toBe(7);
    expect(stats.duplicates).toBeGreaterThanOrEqual(1);
    expect(stats.rejected).toEqual({ 'bad-signature': 3, malformed: 3 });
    expect(await liveOnGreen(grants.map((g) => g.request_id))).toBe(0);
    expect(await liveOnGreen([victim.request_id])).toBeGreaterThan(0);
    expect(queue.size).toBe(0);
    expect(queue.deadLetters.map((d) => d.body)).toEqual([forged, { body: { v: 1 }, mac: 'zz' }]);
  });

  it('runs as `migrate drain --json` against the Queues REST API without printing its secrets', async () => {
    const queue = new LocalQueue();
    const api = await serveLocalQueueApi(queue, { accountId: 'acc', queueId: 'rq', token: 'cli-token-secret' });
    try {
      const g = (await liveGrants(green, 1, 3))[0]!;
      queue.send(await signRevocation({ v: 1, id: 'cli-msg-0001', kind: 'refresh-rotate', at: new Date().toISOString(), signature: g.signature }, KEY));
      const cfg = writeConfig(pair, { queue: { kind: 'cloudflare-http', accountId: 'acc', queueId: 'rq', token: 'env:Q_TOKEN', hmacKey: 'env:Q_HMAC', baseUrl: api.baseUrl } });
      const res = await runCli(['drain', '--config', cfg.file, '--json'], { ...cfg.env, Q_TOKEN: 'cli-token-secret', Q_HMAC: KEY });
      expect(res.code, res.stderr).toBe(0);
      const doc = JSON.parse(res.stdout);
      expect(doc.drain).toMatchObject({ queueRead: 1, applied: 1 });
      expect(res.stdout + res.stderr).not.toContain('cli-token-secret');
      expect((await green.query('SELECT active FROM hydra_oauth2_refresh WHERE signature = $1', [g.signature])).rows).toEqual([{ active: false }]);
    } finally {
      await api.close();
    }
  });

  it('stops with exit 6 before writing anything when the queue has delivery paused, and names resume-delivery', async () => {
    const queue = new LocalQueue();
    const api = await serveLocalQueueApi(queue, { accountId: 'acc', queueId: 'rq', token: 'tok' });
    try {
      const g = (await liveGrants(green, 1, 20))[0]!;
      queue.send(await signRevocation({ v: 1, id: 'paused-msg-01', kind: 'refresh-rotate', at: new Date().toISOString(), signature: g.signature }, KEY));
      await revokeOnBlue(blue, (await liveGrants(blue, 1, 30))[0]!.request_id); // an outbox event a drain would apply
      queue.pauseDelivery();
      const before = { blue: await fingerprint(pair.blueDsn), green: await fingerprint(pair.greenDsn) };
      const cfg = writeConfig(pair, { queue: { kind: 'cloudflare-http', accountId: 'acc', queueId: 'rq', token: 'env:Q_TOKEN', hmacKey: 'env:Q_HMAC', baseUrl: api.baseUrl } });
      const res = await runCli(['drain', '--config', cfg.file, '--json'], { ...cfg.env, Q_TOKEN: 'tok', Q_HMAC: KEY });
      expect(res.code, res.stderr).toBe(6);
      const doc = JSON.parse(res.stdout);
      expect(doc.error).toMatchObject({ name: 'QueueDeliveryPausedError', reason: 'queue_delivery_paused' });
      expect(doc.error.message).toContain('nothing was pulled, applied or acked');
      expect(doc.error.hint).toContain('npx wrangler queues resume-delivery bluegreen-revocations');
      expect({ blue: await fingerprint(pair.blueDsn), green: await fingerprint(pair.greenDsn) }).toEqual(before);
      expect(api.requests.filter((r) => r.endsWith('messages/ack'))).toEqual([]);
      queue.resumeDelivery();
      const [m] = await queue.pull(10, 1000);
      expect([queue.size, m!.attempts]).toEqual([1, 1]); // the message is still there, no delivery spent
    } finally {
      await api.close();
    }
  });

  it('stops with exit 6 before writing anything when a Worker consumes the queue, and names the wrangler switch', async () => {
    const queue = new LocalQueue({ consumers: [{ type: 'worker', scriptName: 'bluegreen-revocation-consumer', deadLetterQueue: 'bluegreen-revocations-dlq' }] });
    const api = await serveLocalQueueApi(queue, { accountId: 'acc', queueId: 'rq', token: 'tok' });
    try {
      const before = { blue: await fingerprint(pair.blueDsn), green: await fingerprint(pair.greenDsn) };
      const cfg = writeConfig(pair, { queue: { kind: 'cloudflare-http', accountId: 'acc', queueId: 'rq', token: 'env:Q_TOKEN', hmacKey: 'env:Q_HMAC', baseUrl: api.baseUrl } });
      const res = await runCli(['drain', '--config', cfg.file], { ...cfg.env, Q_TOKEN: 'tok', Q_HMAC: KEY });
      expect(res.code, res.stderr).toBe(6);
      expect(res.stderr).toContain('queue bluegreen-revocations has no HTTP pull consumer (worker bluegreen-revocation-consumer)');
      expect(res.stderr).toContain('npx wrangler queues consumer remove bluegreen-revocations bluegreen-revocation-consumer');
      expect({ blue: await fingerprint(pair.blueDsn), green: await fingerprint(pair.greenDsn) }).toEqual(before);
      expect(api.requests.some((r) => r.endsWith('messages/pull'))).toBe(false);
    } finally {
      await api.close();
    }
  });

  it('replays a dead letter whose original verifies, keeps a forged one unacked and reports it with exit 5', async () => {
    const main = new LocalQueue();
    const dlq = new LocalQueue({ name: 'bluegreen-revocations-dlq', maxRetries: 100, consumers: [{ type: 'http_pull', deadLetterQueue: 'bluegreen-revocations-dlq-kept', maxRetries: 100 }] });
    const api = await serveLocalQueueApi(main, { accountId: 'acc', queueId: 'rq', token: 'tok' }, { dlq: dlq });
    try {
      const [a, b, victim] = await liveGrants(green, 3, 40);
      const good = await signRevocation({ v: 1, id: 'dlq-good-0001', kind: 'refresh-rotate', at: new Date().toISOString(), signature: a!.signature }, KEY);
      const forged = await signRevocation({ v: 1, id: 'dlq-forged-01', kind: 'token-revoke', at: new Date().toISOString(), requestId: victim!.request_id }, 'not-the-key');
      // The consumer Worker's wrappers, and a message Queues moved there itself after its retries (unwrapped).
      dlq.send({ reason: 'invalid-body', detail: 'written by an older Worker', original: good });
      dlq.send({ reason: 'bad-signature', detail: 'mac does not match the body', original: forged });
      dlq.send(await signRevocation({ v: 1, id: 'dlq-raw-00001', kind: 'refresh-rotate', at: new Date().toISOString(), signature: b!.signature }, KEY));
      dlq.send({ reason: 'malformed', detail: '(root): expected object', original: 'hello' });
      const cfg = writeConfig(pair, { queue: { kind: 'cloudflare-http', accountId: 'acc', queueId: 'rq', deadLetterQueueId: 'dlq', token: 'env:Q_TOKEN', hmacKey: 'env:Q_HMAC', baseUrl: api.baseUrl } });
      const res = await runCli(['drain', '--config', cfg.file, '--json'], { ...cfg.env, Q_TOKEN: 'tok', Q_HMAC: KEY });
      expect(res.code, res.stderr).toBe(5);
      const doc = JSON.parse(res.stdout);
      expect(doc.drain.deadLetters).toMatchObject({ read: 4, replayed: 2, kept: { 'bad-signature': 1, malformed: 1 } });
      expect(doc.drain.deadLetters.keptMessages.map((k: { workerReason: string }) => k.workerReason).sort()).toEqual(['bad-signature', 'malformed']);
      expect(doc.error).toMatchObject({ name: 'FindingsError', exitCode: 5 });
      expect(doc.error.message).toContain('2 dead letter(s) do not verify and were kept on the dead-letter queue');
      expect(doc.error.hint).toContain('never purge the dead-letter queue');
      expect((await green.query('SELECT signature, active FROM hydra_oauth2_refresh WHERE signature = ANY($1) ORDER BY signature', [[a!.signature, b!.signature]])).rows.map((r) => r.active)).toEqual([false, false]);
      expect(await liveOnGreen([victim!.request_id])).toBeGreaterThan(0);
      // Kept, not handed back: still on the queue, still leased (a retry would make them visible now), never dropped.
      expect(dlq.size).toBe(2);
      expect(await dlq.pull(10, 1000)).toEqual([]);
      expect(dlq.deadLetters).toEqual([]);
    } finally {
      await api.close();
    }
  });

  it('fails with exit 2 naming the unset queue secrets', async () => {
    const cfg = writeConfig(pair, { queue: { kind: 'cloudflare-http', accountId: 'acc', queueId: 'rq', token: 'env:Q_TOKEN_UNSET', hmacKey: 'env:Q_HMAC_UNSET' } });
    const res = await runCli(['drain', '--config', cfg.file, '--json'], cfg.env);
    expect(res.code).toBe(2);
    expect(res.stdout).toContain('Q_TOKEN_UNSET');
  });
});
