// Steady-state lag of ours for the catch-up bench (bench/catchup.ts): blue takes engine requests at a
// fixed rate (bench.burst, one cycle at a time, paced) while ours follows continuously: stage up to
// blue's insert position (streamToGreen with uptoLsn), map what is staged (applyStagedChanges), again.
// A blue transaction's lag is the time from its commit on blue (its commit timestamp, as staged) to
// the end of the green transaction that mapped it; every transaction of the run is one sample.

import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import type { Db } from '../../src/db/connect.ts';
import type { StreamMapping } from '../../src/engines/types.ts';
import { applyStagedChanges } from '../../src/stream/apply-changes.ts';
import { parseLsn } from '../../src/stream/lsn.ts';
import { streamToGreen } from '../../src/stream/reader.ts';
import { TXNS_PER_CYCLE } from './burst.ts';

/** What to follow and how hard blue is driven. */
export interface LagOptions {
  /** Blue's DSN (the writer and the reader open their own connections). */
  blueDsn: string;
  /** Green (change log and mapped tables). */
  green: Db;
  /** Ours' slot on blue. */
  slot: string;
  /** Ours' publication on blue. */
  publication: string;
  /** The mapping ours applies. */
  mapping: StreamMapping;
  /** The next unused burst cycle. */
  firstCycle: number;
  /** Engine requests (blue transactions) per second. */
  rate: number;
  /** How long blue is driven. */
  seconds: number;
  /** stream.batchChanges. */
  batch: number;
}

/** Lag figures of one run. */
export interface LagResult {
  /** Blue transactions measured. */
  samples: number;
  /** Median lag, milliseconds. */
  p50: number;
  /** 99th percentile lag, milliseconds. */
  p99: number;
  /** Largest lag, milliseconds. */
  max: number;
  /** Follower iterations (stage + map). */
  loops: number;
  /** The rate blue actually took, transactions per second. */
  txnsPerS: number;
  /** The same in row changes per second. */
  changesPerS: number;
  /** The next unused burst cycle afterwards. */
  nextCycle: number;
}

interface Mark {
  lsn: string;
  seq: number;
}

async function mappedMark(green: Db, slot: string): Promise<Mark> {
  const { rows } = await green.query<Mark>('SELECT applied_lsn::text AS lsn, applied_seq AS seq FROM bluegreen_green.mapped_mark WHERE slot = $1', [slot]);
  return rows[0] ?? { lsn: '0/0', seq: 0 };
}

const quantile = (sorted: readonly number[], q: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? Number.NaN;

/** Drives blue at `rate` for `seconds` while ours follows; returns every transaction's lag. */
export async function followLag(o: LagOptions): Promise<LagResult> {
  const writer = new pg.Client({ connectionString: o.blueDsn });
  const probe = new pg.Client({ connectionString: o.blueDsn });
  await Promise.all([writer.connect(), probe.connect()]);
  const insertLsn = async (): Promise<string> => (await probe.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0]!.lsn;
  try {
    const every = (1000 * TXNS_PER_CYCLE) / o.rate;
    let writing = true;
    let cycle = o.firstCycle;
    const wrote = { txns: 0, changes: 0, seconds: 0 };
    const drive = (async () => {
      const t0 = performance.now();
      try {
        for (let i = 0; performance.now() - t0 < o.seconds * 1000; i++) {
          const wait = t0 + i * every - performance.now();
          if (wait > 0) await sleep(wait);
          const r = (await writer.query<{ changes: string; txns: string }>(`CALL bench.burst(${cycle}, 1)`)).rows[0]!;
          cycle += 1;
          wrote.txns += Number(r.txns);
          wrote.changes += Number(r.changes);
        }
      } finally {
        wrote.seconds = (performance.now() - t0) / 1000;
        writing = false;
      }
    })();
    const lags: number[] = [];
    let prev = await mappedMark(o.green, o.slot);
    let loops = 0;
    let endLsn: bigint | null = null;
    for (;;) {
      if (!writing && endLsn === null) {
        await drive;
        endLsn = parseLsn(await insertLsn());
      }
      const upto = await insertLsn();
      await streamToGreen({ blueDsn: o.blueDsn, green: o.green, slot: o.slot, publication: o.publication, uptoLsn: upto, batchChanges: o.batch });
      await applyStagedChanges(o.green, { mapping: o.mapping, batch: o.batch, slot: o.slot });
      const done = Date.now();
      loops += 1;
      const next = await mappedMark(o.green, o.slot);
      if (next.lsn !== prev.lsn || next.seq !== prev.seq) {
        const { rows } = await o.green.query<{ ms: number }>(
          `SELECT DISTINCT c.lsn, extract(epoch FROM c.committed_at)::float8 * 1000 AS ms FROM bluegreen_green.change_log c
            WHERE (c.lsn, c.seq) > ($1::pg_lsn, $2::int) AND (c.lsn, c.seq) <= ($3::pg_lsn, $4::int)`,
          [prev.lsn, prev.seq, next.lsn, next.seq],
        );
        for (const r of rows) lags.push(done - r.ms);
        prev = next;
      }
      if (endLsn !== null && parseLsn(upto) >= endLsn) break;
    }
    await drive;
    lags.sort((a, b) => a - b);
    return {
      samples: lags.length,
      p50: quantile(lags, 0.5),
      p99: quantile(lags, 0.99),
      max: lags[lags.length - 1] ?? Number.NaN,
      loops,
      txnsPerS: wrote.txns / wrote.seconds,
      changesPerS: wrote.changes / wrote.seconds,
      nextCycle: cycle,
    };
  } finally {
    await Promise.all([writer.end(), probe.end()]);
  }
}
