// `npm run bench:replay -- [--events N] [--batch N] [--jobs N] [--naive-events N] [--json]`: replay
// N revocation events (half refresh rotations, half access removals, each hitting its own row) into a
// seeded Hydra v1 database the way `migrate drain` does (replayPipelined: deduplicated, set-based,
// each batch split over --jobs connections, default 2 as in `migrate drain`, one transaction per part,
// the next batch prepared while the server applies the current one), against the anchor in the same
// run: one UPDATE or DELETE per event on an identical database, in one transaction. The anchor runs
// on the first --naive-events events (default 20,000). Prints one JSON line.

import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { startCluster } from '../support/embedded.ts';
import { loadHydraV1Schema, seedHydraV1 } from '../support/fixture/seed.ts';
import { replayPipelined } from '../src/replay/pipeline.ts';
import type { ReplayEvent } from '../src/replay/semantics.ts';

const { values } = parseArgs({ options: { events: { type: 'string', default: '100000' }, batch: { type: 'string', default: '5000' }, jobs: { type: 'string', default: '2' }, 'naive-events': { type: 'string' }, json: { type: 'boolean', default: false } } });
const events = Number(values.events);
const batch = Number(values.batch);
const jobs = Number(values.jobs);
// The anchor costs one round trip per event: measuring its rate on the first 20k keeps the run short.
const naiveEvents = Math.min(events, Number(values['naive-events'] ?? 20_000));

// Autovacuum off: a background vacuum of the tables being replayed into would land in one side's timing.
const cluster = await startCluster({ name: 'bench-replay', settings: { autovacuum: 'off' } });
try {
  const admin = new pg.Client({ connectionString: cluster.dsn() });
  await admin.connect();
  for (const db of ['ours', 'naive']) await admin.query(`CREATE DATABASE ${db}`);
  await admin.end();
  const open = async (db: string): Promise<pg.Client> => {
    const c = new pg.Client({ connectionString: cluster.dsn(db) });
    await c.connect();
    await loadHydraV1Schema(c);
    await seedHydraV1(c, { rows: Math.ceil(events / 2), seed: 42, dirty: [] });
    await c.query('VACUUM ANALYZE'); // as a live engine's tables are: hint bits set, statistics fresh
    return c;
  };
  const [ours, naive] = await Promise.all([open('ours'), open('naive')]);
  const oursConnections = [ours];
  for (let i = 1; i < jobs; i++) {
    const c = new pg.Client({ connectionString: cluster.dsn('ours') });
    await c.connect();
    oursConnections.push(c);
  }

  const refresh = (await ours.query<{ s: string }>('SELECT signature AS s FROM hydra_oauth2_refresh ORDER BY signature LIMIT $1', [Math.ceil(events / 2)])).rows;
  const access = (await ours.query<{ s: string }>('SELECT signature AS s FROM hydra_oauth2_access ORDER BY signature LIMIT $1', [Math.floor(events / 2)])).rows;
  const t0 = Date.UTC(2024, 0, 1);
  const list: ReplayEvent[] = [];
  for (let i = 0; list.length < events; i++) {
    const r = refresh[i];
    const a = access[i];
    if (r) list.push({ id: `bench-r-${i}`, kind: 'refresh-rotate', at: new Date(t0 + list.length).toISOString(), signature: r.s });
    if (a && list.length < events) list.push({ id: `bench-a-${i}`, kind: 'access-remove', at: new Date(t0 + list.length).toISOString(), signature: a.s });
    if (!r && !a) throw new Error(`the seed has too few tokens for ${events} events`);
  }

  // Each side starts from clean shared buffers and a clean OS page cache: without a checkpoint and a
  // sync (the bench cluster runs with fsync off), the side measured first pays for writing out both
  // seeds' dirty pages.
  const settle = async (db: pg.Client): Promise<void> => {
    await db.query('CHECKPOINT');
    execFileSync('sync');
  };
  await settle(ours);
  let start = performance.now();
  let applied = 0;
  let offset = 0;
  const nextBatch = async () => (offset < list.length ? { events: list.slice(offset, (offset += batch)), meta: null } : null);
  await replayPipelined(oursConnections, 'hydra-v1', nextBatch, async (_, result) => void (applied += result.applied));
  const oursSeconds = (performance.now() - start) / 1000;

  await settle(naive);
  start = performance.now();
  await naive.query('BEGIN');
  for (const e of list.slice(0, naiveEvents)) {
    if (e.kind === 'refresh-rotate') await naive.query('UPDATE hydra_oauth2_refresh SET active = false WHERE signature = $1 AND active', [e.signature]);
    else await naive.query('DELETE FROM hydra_oauth2_access WHERE signature = $1', [e.signature]);
  }
  await naive.query('COMMIT');
  const naiveSeconds = (performance.now() - start) / 1000;

  // Both sides must end in the same state for the events both replayed.
  if (naiveEvents === events) {
    const digest = async (c: pg.Client) => (await c.query(`SELECT (SELECT count(*) FROM hydra_oauth2_access) || '/' || (SELECT count(*) FROM hydra_oauth2_refresh WHERE active) AS d`)).rows[0].d as string;
    const [a, b] = await Promise.all([digest(ours), digest(naive)]);
    if (a !== b) throw new Error(`replay and anchor disagree: ${a} vs ${b}`);
  }
  if (applied !== events) throw new Error(`applied ${applied} of ${events} events`);
  await Promise.all([...oursConnections, naive].map((c) => c.end()));

  const out = { events, ours_per_s: Math.round(events / oursSeconds), naive_per_s: Math.round(naiveEvents / naiveSeconds), naive_events: naiveEvents, batch, jobs, ours_s: Number(oursSeconds.toFixed(2)), naive_s: Number(naiveSeconds.toFixed(2)) };
  process.stdout.write(`${JSON.stringify(out)}\n`); // the same one line with or without --json
} finally {
  await cluster.stop();
}
