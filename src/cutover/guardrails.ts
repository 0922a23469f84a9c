// Guardrails checked before any target is committed: green migrated and validated (journal),
// capture active on blue, drain backlog below the threshold, no blocking findings. Each check is a
// sentence with its verdict, so `apply --dry-run` can print them and `cutover` can refuse.

import type { ResolvedConfig } from '../config/load.ts';
import { query, type Db } from '../db/connect.ts';
import type { Journal } from '../state/journal.ts';
import { CAPTURE_TRIGGERS } from '../steps/capture.ts';

/** A failed earlier cutover attempt (already rolled back) does not block the next one. */
const CUTOVER_STEPS = new Set(['cutover', 'lever', 'watch']);

/** Outbox rows not yet replayed into green; the drain (issue D) provides the real count. */
export type BacklogFn = () => Promise<number>;

/** One guardrail's verdict. */
export interface Guardrail {
  /** Short id. */
  id: 'green-validated' | 'capture-active' | 'drain-backlog' | 'no-blocking-findings';
  /** Whether it holds. */
  ok: boolean;
  /** What was found. */
  detail: string;
}

/**
 * Default backlog: blue outbox rows above the high-water mark the drain keeps on green
 * (`bluegreen_green.drain_mark`, source `outbox:blue`, written by src/steps/drain.ts); every row when
 * nothing was drained yet.
 */
export function outboxBacklog(blue: Db, green: Db): BacklogFn {
  return async () => {
    const exists = await query<{ ok: boolean }>(green, `SELECT to_regclass('bluegreen_green.drain_mark') IS NOT NULL AS ok`);
    const mark = exists.rows[0]?.ok ? await query<{ seq: string | null }>(green, `SELECT max(seq)::text AS seq FROM bluegreen_green.drain_mark WHERE source = 'outbox:blue'`) : { rows: [] };
    const { rows } = await query<{ n: string }>(blue, 'SELECT count(*) AS n FROM bluegreen.outbox WHERE seq > $1::bigint', [mark.rows[0]?.seq ?? '0']);
    return Number(rows[0]?.n ?? 0);
  };
}

/** Evaluates every guardrail (read-only). */
export async function checkGuardrails(blue: Db, journal: Journal, config: ResolvedConfig, backlog: BacklogFn): Promise<Guardrail[]> {
  const out: Guardrail[] = [];
  const migrated = (await journal.done('migrate')).has('');
  const validation = (await journal.done('validate')).get('')?.validation as { passed?: boolean; failures?: string[] } | undefined;
  out.push({
    id: 'green-validated',
    ok: migrated && validation?.passed === true,
    detail: !migrated ? 'green is not migrated (run `migrate apply`)' : validation?.passed ? 'migrate and validate done, validation passed' : 'validation has not passed (run `migrate apply --resume`)',
  });
  const { rows } = await query<{ started: boolean; triggers: number }>(
    blue,
    `SELECT to_regclass('bluegreen.capture') IS NOT NULL AND EXISTS (SELECT 1 FROM bluegreen.capture) AS started,
            (SELECT count(*)::int FROM pg_trigger WHERE tgname = $1 AND tgenabled <> 'D') AS triggers`,
    [CAPTURE_TRIGGERS.delete],
  );
  const cap = rows[0];
  const wanted = config.captureTables.length;
  out.push({ id: 'capture-active', ok: !!cap?.started && (cap?.triggers ?? 0) >= wanted, detail: `capture ${cap?.started ? 'started' : 'not started'}, ${cap?.triggers ?? 0}/${wanted} triggers enabled on blue` });
  const pending = await backlog();
  const max = config.raw.guardrails.maxDrainBacklog;
  out.push({ id: 'drain-backlog', ok: pending <= max, detail: `${pending} outbox rows not yet replayed (max ${max}; run \`migrate drain\`)` });
  const failed = (await journal.rows()).filter((r) => r.status === 'failed' && !CUTOVER_STEPS.has(r.step));
  out.push({ id: 'no-blocking-findings', ok: failed.length === 0 && (validation?.failures?.length ?? 0) === 0, detail: failed.length ? `failed units: ${failed.map((r) => `${r.step}/${r.unit || '-'}`).join(', ')}` : 'no failed step or finding in the journal' });
  return out;
}
