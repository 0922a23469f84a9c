// How fast applyStagedChanges maps green's change log through the Hydra mapping (issue G), alone:
// the staging is done once, untimed, and every measured run maps the same staged log into its own copy
// of green (CREATE DATABASE ... TEMPLATE), so before/after figures of a change to the mapping compare
// like with like.
//   1. One embedded cluster: database `blue` seeded with the Hydra v1 fixture, database `green` seeded
//      the same (same seed) and migrated in place to v2 (as test/stream-chaos.test.ts does).
//   2. A publication over the tables Hydra writes and a pgoutput slot on blue; then the catch-up
//      bench's write burst (bench/catchup/burst.ts: login + consent flows, code exchanges, refresh
//      rotations, revocations, client updates, janitor deletes), one blue transaction per request.
//   3. The real reader stages it into green's change log (streamToGreen up to blue's insert position).
//   4. Per --batch size: a fresh copy of green, applyStagedChanges timed; one JSON line each:
//      {batch, changes, batches, ms, per_s, per_batch_ms, checksum} (checksum: md5 over green's tables,
//      the ledger and the quarantine, timestamps left out: equal before and after a change that keeps
//      the semantics). --profile adds the time per statement (bench/catchup/profile.ts's marks).
// Usage: npx tsx bench/map-speed.ts [--rows 5000] [--changes 5000] [--batch 20,100,5000] [--profile]

import crypto from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { connect } from '../src/db/connect.ts';
import { ident } from '../src/db/sql.ts';
import { HYDRA_V1_TO_V2 } from '../src/engines/hydra/index.ts';
import { popSource } from '../src/sources/pop.ts';
import { applyStagedChanges } from '../src/stream/apply-changes.ts';
import { installChangeLog } from '../src/stream/changelog.ts';
import { streamToGreen } from '../src/stream/reader.ts';
import { startCluster } from '../support/embedded.ts';
import { HYDRA_V2_MIGRATIONS_DIR, loadHydraV1Schema, seedHydraV1 } from '../support/fixture/seed.ts';
import { BURST_PROCEDURE, CHANGES_PER_CYCLE, POOLS_SQL } from './catchup/burst.ts';
import { profiledMapping, statementProfile } from './catchup/profile.ts';

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '5000' },
    changes: { type: 'string', default: '5000' },
    batch: { type: 'string', default: '20,100,5000' },
    profile: { type: 'boolean', default: false },
  },
});
const rows = Number(values.rows);
const wanted = Number(values.changes);
const batches = values.batch.split(',').map(Number);
const log = (s: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);
const mapping = HYDRA_V1_TO_V2.streamMapping;
if (!mapping) throw new Error('the Hydra version pair declares no stream mapping');

/** Per table on green (user tables, the ledger, the staging tables, the quarantine): its columns but timestamps and sequence-drawn ids. */
const TABLES_SQL = `
SELECT format('%I.%I', c.table_schema, c.table_name) AS t, string_agg(format('%I', c.column_name), ', ' ORDER BY c.ordinal_position) AS cols
  FROM information_schema.columns c JOIN information_schema.tables x USING (table_schema, table_name)
 WHERE x.table_type = 'BASE TABLE' AND c.table_schema IN ('public', 'bluegreen_green', 'bluegreen_quarantine')
   AND c.table_name NOT IN ('change_log', 'stream_mark', 'mapped_mark')
   AND c.column_name NOT IN ('q_id', 'id') AND c.data_type NOT LIKE 'timestamp%'
 GROUP BY 1 ORDER BY 1`;

/** md5 over every row of those tables: equal before and after a change that keeps the semantics. */
async function checksum(green: pg.Client): Promise<string> {
  const parts: string[] = [];
  for (const { t, cols } of (await green.query<{ t: string; cols: string }>(TABLES_SQL)).rows) {
    const sql = `SELECT md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) AS h FROM (SELECT ${cols} FROM ${t}) x`;
    parts.push(`${t}:${(await green.query<{ h: string }>(sql)).rows[0]!.h}`);
  }
  return crypto.createHash('md5').update(parts.join('\n')).digest('hex');
}

const cluster = await startCluster({ name: 'map-speed', settings: { autovacuum: 'off' } });
try {
  const admin = new pg.Client({ connectionString: cluster.dsn() });
  await admin.connect();
  for (const d of ['blue', 'green']) await admin.query(`CREATE DATABASE ${ident(d)}`);
  const blue = new pg.Client({ connectionString: cluster.dsn('blue') });
  await blue.connect();
  const greenSeed = new pg.Client({ connectionString: cluster.dsn('green') });
  await greenSeed.connect();
  log(`seeding blue and green (${rows} tokens), green migrated to v2`);
  for (const c of [blue, greenSeed]) {
    await loadHydraV1Schema(c);
    await seedHydraV1(c, { rows, seed: 7, dirty: [] });
  }
  const source = popSource(HYDRA_V2_MIGRATIONS_DIR);
  for (const m of await source.pending(greenSeed)) await source.apply(greenSeed, m);
  await greenSeed.end();

  const present = await blue.query<{ t: string }>(`SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NOT NULL ORDER BY t`, [HYDRA_V1_TO_V2.writes]);
  await blue.query(`CREATE PUBLICATION map_speed FOR TABLE ${present.rows.map((r) => r.t).join(', ')}`);
  await blue.query(POOLS_SQL);
  await blue.query(BURST_PROCEDURE);
  await blue.query(`SELECT pg_create_logical_replication_slot('map_speed', 'pgoutput')`);
  const cycles = Math.ceil(wanted / CHANGES_PER_CYCLE);
  const burst = (await blue.query<{ changes: string }>(`CALL bench.burst(1, ${cycles})`)).rows[0]!;
  const upto = (await blue.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0]!.lsn;
  log(`burst: ${burst.changes} changes on blue`);

  const staging = await connect('green', cluster.dsn('green'), 'map-speed-stage');
  await installChangeLog(staging);
  const staged = await streamToGreen({ blueDsn: cluster.dsn('blue'), green: staging, slot: 'map_speed', publication: 'map_speed', uptoLsn: upto, batchChanges: 1000 });
  await staging.end();
  log(`staged ${staged.changes} changes`);
  await blue.query(`SELECT pg_drop_replication_slot('map_speed')`);
  await blue.end();

  for (const [i, batch] of batches.entries()) {
    const db = `green_run_${i}`;
    await admin.query(`CREATE DATABASE ${ident(db)} TEMPLATE green`);
    const green = await connect('green', cluster.dsn(db), 'map-speed');
    await green.query('VACUUM ANALYZE');
    const stats = await applyStagedChanges(green, { mapping: values.profile ? profiledMapping(mapping) : mapping, batch, slot: 'map_speed' });
    const profile = values.profile ? await statementProfile(green) : null;
    const sum = await checksum(green);
    await green.end();
    await admin.query(`DROP DATABASE ${ident(db)}`);
    const out = {
      batch,
      changes: stats.changes,
      batches: stats.batches,
      ms: stats.ms,
      per_s: Math.round((stats.changes * 1000) / stats.ms),
      per_batch_ms: Number((stats.ms / Math.max(1, stats.batches)).toFixed(1)),
      unmapped: stats.unmapped,
      quarantined: stats.quarantined,
      released: stats.released,
      checksum: sum,
      ...(profile ? { profile_ms: Object.fromEntries(Object.entries(profile).slice(0, 15)) } : {}),
    };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  }
  await admin.end();
} finally {
  await cluster.stop();
}
