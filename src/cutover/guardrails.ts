// Guardrails checked before any target is committed: the run is a real run (not a rehearsal), the
// configured green is the green that run copied and carries its marker, green migrated and validated
// (journal), capture active on blue, drain backlog below the threshold, no blocking findings. Each
// check is a sentence with its verdict, so `apply --dry-run` can print them and `cutover` can refuse.
// The identity checks exist because the journal describes one green: passing the other guardrails
// from a run's journal says nothing about a different database that green.dsn may name today.

import { readMark } from '../stream/changelog.ts';
import { slotOf } from '../stream/slot.ts';
import { lagBytes } from '../stream/upstream.ts';
import { CUTOVER_STEP_ORDER } from '../steps/step.ts';
import type { ResolvedConfig } from '../config/load.ts';
import { query, type Db } from '../db/connect.ts';
import { readMarker } from '../db/green.ts';
import { describeDsn } from '../db/redact.ts';
import { StateError } from '../errors.ts';
import { isRehearsal, type Journal, type RunRow } from '../state/journal.ts';
import { CAPTURE_TRIGGERS } from '../steps/capture.ts';

/** A failed earlier cutover attempt (already rolled back) does not block the next one. */
const CUTOVER_STEPS = new Set<string>([...CUTOVER_STEP_ORDER, 'rollback']);

/** Outbox rows not yet replayed into green; the drain (issue D) provides the real count. */
export type BacklogFn = () => Promise<number>;

/** One guardrail's verdict. */
export interface Guardrail {
  /** Short id. */
  id: IdentityGuardrailId | 'green-validated' | 'capture-active' | 'drain-backlog' | 'stream-caught-up' | 'no-blocking-findings';
  /** Whether it holds. */
  ok: boolean;
  /** What was found. */
  detail: string;
}

/**
 * Default backlog: blue outbox rows above the high-water mark the drain keeps on green
 * (`bluegreen_green.drain_mark`, source `outbox:blue`, written by src/replay/drain.ts); every row when
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

/** Guardrails that tie the run to the database green.dsn names today; a failing one is exit 3. */
export type IdentityGuardrailId = 'real-run' | 'green-is-run-target' | 'green-marker';

const IDENTITY_IDS: ReadonlySet<Guardrail['id']> = new Set<IdentityGuardrailId>(['real-run', 'green-is-run-target', 'green-marker']);

/** True for the guardrails that say "this is not the run or the green you think" (exit 3, never 5). */
export function isIdentityGuardrail(g: Guardrail): boolean {
  return IDENTITY_IDS.has(g.id);
}

/**
 * Whether `run` may act on the green `greenDsn` names (read-only): a real run, whose recorded
 * green_target is the configured green, and whose run id green's marker carries.
 */
export async function identityGuardrails(green: Db, run: RunRow, greenDsn: string): Promise<Guardrail[]> {
  const configured = describeDsn(greenDsn);
  const marker = await readMarker(green);
  return [
    {
      id: 'real-run',
      ok: !isRehearsal(run),
      detail: isRehearsal(run) ? `run ${run.run_id} is a rehearsal (\`apply --dry-run\` into ${run.green_target}); a rehearsal is never cut over` : `run ${run.run_id} is a real run`,
    },
    {
      id: 'green-is-run-target',
      ok: configured === run.green_target,
      detail: configured === run.green_target ? `green.dsn names ${configured}, the green run ${run.run_id} copied` : `green.dsn names ${configured}, but run ${run.run_id} copied into ${run.green_target}`,
    },
    {
      id: 'green-marker',
      ok: marker?.run_id === run.run_id,
      detail: marker?.run_id === run.run_id
        ? `green's marker names run ${run.run_id}`
        : `green ${configured} ${marker ? `carries the marker of run ${marker.run_id}` : 'carries no marker of ours'}, not of run ${run.run_id}`,
    },
  ];
}

/** The refusal for failed identity guardrails: exit 3, naming both greens and the fix. */
export function identityRefusal(what: string, run: RunRow, greenDsn: string, guardrails: readonly Guardrail[]): StateError {
  const failed = guardrails.filter((g) => !g.ok);
  const configured = describeDsn(greenDsn);
  const ids = new Set(failed.map((g) => g.id));
  const hint = ids.has('real-run')
    ? `nothing was changed; run \`migrate apply\` (without --dry-run) into ${configured}, then \`migrate ${what}\``
    : ids.has('green-is-run-target')
      ? `nothing was changed; point green.dsn back at ${run.green_target} (the green run ${run.run_id} copied and validated)${what === 'cutover' ? `, or run \`migrate apply\` into ${configured} first` : ''}`
      : `nothing was changed; ${configured} does not hold run ${run.run_id}'s copy: point green.dsn at the green that does${what === 'cutover' ? ', or rebuild this one with `migrate apply --restart`' : ''}`;
  return new StateError(`${what} refused (${failed.map((g) => g.id).join(', ')}):\n  ${failed.map((g) => `${g.id}: ${g.detail}`).join('\n  ')}`, hint, { runId: run.run_id, runGreen: run.green_target, configuredGreen: configured, guardrails });
}

/** Throws identityRefusal when `run` may not act on the configured green (`migrate rollback`, `migrate drain`). */
export async function assertGreenIdentity(what: string, green: Db, run: RunRow, greenDsn: string): Promise<void> {
  const guardrails = await identityGuardrails(green, run, greenDsn);
  if (guardrails.some((g) => !g.ok)) throw identityRefusal(what, run, greenDsn, guardrails);
}

/** Evaluates every guardrail (read-only); the identity ones come first. */
export async function checkGuardrails(blue: Db, green: Db, journal: Journal, config: ResolvedConfig, backlog: BacklogFn): Promise<Guardrail[]> {
  const out: Guardrail[] = await identityGuardrails(green, await journal.run(), config.greenDsn);
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
  if (config.raw.stream.enabled) out.push(await streamGuardrail(blue, green, config.raw.stream.maxLagSeconds));
  const failed = (await journal.rows()).filter((r) => r.status === 'failed' && !CUTOVER_STEPS.has(r.step.split('#')[0]!));
  out.push({ id: 'no-blocking-findings', ok: failed.length === 0 && (validation?.failures?.length ?? 0) === 0, detail: failed.length ? `failed units: ${failed.map((r) => `${r.step}/${r.unit || '-'}`).join(', ')}` : 'no failed step or finding in the journal' });
  return out;
}

/** WAL blue may have written past the last staged commit and still count as caught up (an idle blue writes a little). */
const CAUGHT_UP_BYTES = 1024 * 1024;

/** Green holds blue's changes up to a recent commit (or blue wrote next to nothing since): the catch-up before the flip stays short. */
async function streamGuardrail(blue: Db, green: Db, maxLagSeconds: number): Promise<Guardrail> {
  const { name } = await slotOf(blue);
  const staged = (await query<{ ok: boolean }>(green, "SELECT to_regclass('bluegreen_green.stream_mark') IS NOT NULL AS ok", [], { side: 'green' })).rows[0]?.ok;
  const mark = staged ? await readMark(green, name) : { applied: null, committedAt: null };
  if (mark.applied === null) return { id: 'stream-caught-up', ok: false, detail: `nothing of slot ${name} is staged on green yet (run \`migrate apply --resume\`, whose stream step catches up)` };
  const bytes = await lagBytes(blue, mark.applied);
  const seconds = mark.committedAt ? (Date.now() - mark.committedAt.getTime()) / 1000 : null;
  const ok = bytes <= CAUGHT_UP_BYTES || (seconds !== null && seconds <= maxLagSeconds);
  return { id: 'stream-caught-up', ok, detail: `green's change log is ${bytes} byte(s) of WAL behind blue, last staged commit ${seconds === null ? 'unknown' : `${Math.round(seconds)} s`} ago (max ${maxLagSeconds} s)` };
}
