// The `verify` unit of the snapshot: per table, green's exact row count against the rows blue's COPY
// sent inside the snapshot, and green's checksums against blue's fingerprints (full or sampled) kept
// in the journal. A difference fails the step with exit 5 and names the table.

import type { TableInfo } from '../db/catalog.ts';
import { runPool } from '../db/parallel.ts';
import { tableKey } from '../db/sql.ts';
import { FindingsError } from '../errors.ts';
import type { StepContext } from '../steps/step.ts';
import { compareUnit, greenCount, type UnitCheck } from './check.ts';
import { rangePredicate, type KeyRange } from './copy.ts';
import { openGreenWorker } from './session.ts';
import { rangesUnit, type UnitAction } from './units.ts';

/** Compares every copied table with what blue held in the snapshot; throws FindingsError on a difference. */
export async function verifyCopy(ctx: StepContext, actions: readonly UnitAction[], details: ReadonlyMap<string, Record<string, unknown>>, tables: readonly TableInfo[]): Promise<Record<string, unknown>> {
  const problems: string[] = [];
  let sampled = 0;
  await runPool(
    tables,
    ctx.options.jobs,
    () => openGreenWorker(ctx.config.greenDsn),
    async (green, t) => {
      const key = tableKey(t);
      const units = actions.filter((a) => a.facts.unit === 'data' && a.facts.table === key);
      const expected = units.reduce((s, a) => s + Number(details.get(a.id)?.rows ?? 0), 0);
      const actual = await greenCount(green, t);
      if (actual !== expected) {
        problems.push(`${key}: blue had ${expected} rows in the snapshot, green has ${actual}`);
        return;
      }
      const ranges = details.get(rangesUnit(t))?.ranges as (KeyRange | null)[] | undefined;
      for (const a of units) {
        const check = details.get(a.id)?.check as UnitCheck | undefined;
        if (!check) continue;
        if (check.mode === 'sample') sampled++;
        const [i, n] = a.facts.part ?? [1, 1];
        const where = n > 1 ? rangePredicate(t, ranges?.[i - 1] ?? null) : 'TRUE';
        const problem = await compareUnit(green, t, where, check);
        if (problem) problems.push(`${key}${n > 1 ? ` range ${i}/${n}` : ''}: ${problem}`);
      }
    },
    (green) => green.end().catch(() => {}),
  );
  if (problems.length) {
    throw new FindingsError(`green does not match blue's snapshot:\n  ${problems.sort().join('\n  ')}`, 'inspect green for writes made outside migrate; rerun with --restart to copy again', { problems });
  }
  return { tables: tables.length, sampledUnits: sampled, mode: ctx.options.verify };
}
