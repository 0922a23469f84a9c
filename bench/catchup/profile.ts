// Where the mapping's time goes (bench/catchup.ts --profile): the Hydra mapping with a clock mark
// after each statement, in the same transaction, into a session temp table; summed per statement
// over every batch. The marks cost one extra round trip per statement, so a profiled run is a little
// slower than a plain one and the bench says which it timed.

import type { Db } from '../../src/db/connect.ts';
import { literal } from '../../src/db/sql.ts';
import type { StreamMapping } from '../../src/engines/types.ts';

const mark = (id: string, at = 'clock_timestamp()'): string => `INSERT INTO pg_temp.bench_marks VALUES (txid_current(), ${literal(id)}, ${at})`;

/** `mapping` with a clock mark before the first statement (the transaction's start) and after every statement. */
export function profiledMapping(mapping: StreamMapping): StreamMapping {
  return {
    name: mapping.name,
    setup: `${mapping.setup}\nCREATE TEMP TABLE IF NOT EXISTS bench_marks (batch bigint, id text, at timestamptz) ON COMMIT PRESERVE ROWS;`,
    statements: [
      { id: 'profile begin', sql: mark('begin', 'now()') },
      { id: 'profile batch', sql: mark('read the mark, copy the batch into bluegreen_batch') },
      ...mapping.statements.flatMap((s) => [s, { id: `profile ${s.id}`, sql: mark(s.id) }]),
    ],
  };
}

/** Milliseconds per statement summed over the batches, slowest first (the session that ran the profiled mapping). */
export async function statementProfile(green: Db): Promise<Record<string, number>> {
  const { rows } = await green.query<{ id: string; ms: number }>(
    `SELECT id, round(sum(extract(epoch FROM d) * 1000))::float8 AS ms
       FROM (SELECT id, at - lag(at) OVER (PARTITION BY batch ORDER BY at, id <> 'begin') AS d FROM pg_temp.bench_marks) x
      WHERE d IS NOT NULL GROUP BY id ORDER BY 2 DESC`,
  );
  return Object.fromEntries(rows.map((r) => [r.id, r.ms]));
}
