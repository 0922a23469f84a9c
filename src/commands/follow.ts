// `migrate follow`: keeps green caught up with blue between `migrate apply` and `migrate cutover`.
// Nothing else reads the run's replication slot in that window, so during an hours-long window blue's
// WAL piles up in the slot and green falls behind (and cutover then has a long backlog to catch up
// before the flip). Follow loops the catch-up cutover itself uses (catchUpNow: stage blue's changes up
// to its insert position, then map them into the new schema), one line per round on stderr, until
// SIGINT/SIGTERM or, with --until-caught-up, until the stream-caught-up guardrail of cutover holds.
//
// It holds the run lock like every command that writes, so it cannot run beside apply or cutover:
// cutover refuses while it runs, and the refusal's hint says to stop follow first. A signal lets the
// round in flight finish (its green transactions commit, the replication connection closes and the
// slot is released), then follow reports and exits 0; a second signal ends the process at once (safe:
// blue sends anything green has not confirmed again, and nothing is staged or mapped twice).

import { checkGuardrails, assertGreenIdentity, type BacklogFn, type Guardrail } from '../cutover/guardrails.ts';
import { LIVE_STATES, targetRecords } from '../cutover/state.ts';
import { StateError } from '../errors.ts';
import { Journal, latestRun } from '../state/journal.ts';
import { catchUpNow } from '../steps/stream.ts';
import type { StepContext } from '../steps/step.ts';
import { lagLine, streamLag, streamStatus, type SlotState, type StreamLag } from '../stream/readiness.ts';
import { streamObjects } from '../stream/names.ts';
import { missingSlot } from '../stream/upstream.ts';
import type { CommandResult } from './result.ts';
import { withContext, type CommonOptions } from './session.ts';

/** Flags of `migrate follow`. */
export interface FollowFlags extends CommonOptions {
  /** Pause after a round that found nothing to stage or map (default 1000). */
  intervalMs?: number;
  /** Stop by itself once a round ends with green within cutover's stream-caught-up allowance. */
  untilCaughtUp?: boolean;
}

/** The run lock's name while follow holds it: `acquireRunLock` makes the session `migrate follow`. */
const LOCK_COMMAND = 'follow';
const DEFAULT_INTERVAL_MS = 1000;
/** A round still running after this long forwards the reader's own progress lines (a long backlog's ETA). */
const LONG_ROUND_MS = 2000;

/** Why follow stopped. */
type Stop = { by: 'signal'; signal: NodeJS.Signals } | { by: 'caught-up' };

/** What the rounds did, summed. */
interface Totals {
  rounds: number;
  staged: number;
  mapped: number;
}

/** A progress line on stderr in the plain sink's format (`12:00:01 follow: ...`). */
function line(text: string): void {
  process.stderr.write(`${new Date().toISOString().slice(11, 19)} follow: ${text}\n`);
}

/**
 * SIGINT and SIGTERM while follow runs: the first asks it to stop after the round in flight and wakes
 * a pause; the listeners are removed at once, so a second signal gets Node's default (the process ends).
 */
class StopRequest {
  signal: NodeJS.Signals | null = null;
  private wake: (() => void) | null = null;
  private readonly onSignal = (signal: NodeJS.Signals): void => {
    this.signal = signal;
    this.detach();
    line(`${signal} received: finishing the current round (its transactions commit, the slot is released), then stopping; send it again to stop at once`);
    this.wake?.();
  };

  constructor() {
    process.on('SIGINT', this.onSignal);
    process.on('SIGTERM', this.onSignal);
  }

  /** Removes the listeners (idempotent). */
  detach(): void {
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
  }

  /** Waits `ms`, or less when a signal comes. */
  pause(ms: number): Promise<void> {
    if (this.signal) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    }).finally(() => {
      this.wake = null;
    });
  }
}

/**
 * The run follow keeps caught up, or a refusal (exit 3): the stream must be on, the newest real run's
 * apply must have finished its stream step into the configured green, and no target may be live on green
 * (after the flip, cutover's drain step streams the tail; blue is not the source any more).
 */
async function followedRun(ctx: StepContext): Promise<{ journal: Journal; slot: string }> {
  if (!ctx.config.raw.stream.enabled) {
    throw new StateError(
      'follow refused: stream.enabled is false in the config, so the run has no replication slot to follow',
      'follow keeps green caught up through the stream (runbooks/stream.md); without it, revocations reach green through the capture outbox (`migrate drain`) and nothing piles up on blue. To stream, set "stream": { "enabled": true } before `migrate apply` (the slot is created with the snapshot)',
    );
  }
  const run = await latestRun(ctx.blue, { kind: 'real' });
  if (!run || run.status === 'abandoned') {
    throw new StateError(run ? `follow refused: run ${run.run_id} is abandoned` : 'follow refused: there is no run on blue', 'run `migrate apply` (with stream.enabled) first; follow keeps its green caught up until `migrate cutover`');
  }
  await assertGreenIdentity(LOCK_COMMAND, ctx.green, run, ctx.config.greenDsn);
  const journal = new Journal(ctx.blue, run.run_id);
  if (!(await journal.done('stream')).has('')) {
    throw new StateError(
      `follow refused: run ${run.run_id} has not finished its stream step yet (run ${run.status})`,
      'run `migrate apply --resume` until it is done (its stream step creates green\'s change log and catches up first); then `migrate follow` keeps green caught up until `migrate cutover`',
      { runId: run.run_id },
    );
  }
  const live = (await targetRecords(journal)).filter((t) => LIVE_STATES.has(t.state));
  if (live.length) {
    throw new StateError(
      `follow refused: target(s) ${live.map((t) => t.name).join(', ')} of run ${run.run_id} are live on green`,
      'follow is for the window between `migrate apply` and `migrate cutover`; after the flip, cutover\'s drain step streamed the tail. After `migrate rollback --yes` blue is the source again and follow may run',
      { runId: run.run_id, live: live.map((t) => t.name) },
    );
  }
  return { journal, slot: (await streamObjects(ctx.blue)).slot };
}

/** The run's slot as `migrate status` reads it (for the lag line). */
async function slotState(ctx: StepContext, name: string): Promise<SlotState> {
  const slot = (await streamStatus(ctx.blue, { enabled: true })).slot;
  if (!slot) throw missingSlot(name);
  return slot;
}

/** Only the stream-caught-up verdict is read: the outbox backlog is the drain's business, not counted here. */
const backlogNotCounted: BacklogFn = async () => 0;

/** Cutover's stream-caught-up guardrail, evaluated by cutover's own code. */
async function caughtUpGuardrail(ctx: StepContext, journal: Journal): Promise<Guardrail> {
  const all = await checkGuardrails(ctx.blue, ctx.green, journal, ctx.config, backlogNotCounted);
  const g = all.find((x) => x.id === 'stream-caught-up');
  if (!g) throw new StateError('cutover evaluated no stream-caught-up guardrail', 'this is a bug in migrate: report it with the command you ran');
  return g;
}

/** How the rounds ended. */
interface Outcome {
  stop: Stop;
  totals: Totals;
  /** Green's lag after the last round. */
  lag: StreamLag;
  /** With --until-caught-up: the guardrail after the last round. */
  guardrail: Guardrail | null;
}

/** Catch-up rounds until a signal or, with `untilCaughtUp`, until the guardrail holds; one line per round. */
async function rounds(ctx: StepContext, journal: Journal, slot: string, opts: { intervalMs: number; untilCaughtUp: boolean }): Promise<Outcome> {
  const mapped = ctx.config.engine.streamMapping !== null;
  const totals: Totals = { rounds: 0, staged: 0, mapped: 0 };
  const stop = new StopRequest();
  let roundStarted = 0;
  // The reader's own lines only during a long round: a short one is summed up by the round's line.
  ctx.progress = (text) => {
    if (Date.now() - roundStarted >= LONG_ROUND_MS) line(text);
  };
  try {
    line(`following run ${journal.runId} on slot ${slot}: a round every ${opts.intervalMs} ms while blue is idle; stop it (Ctrl-C or SIGTERM) before \`migrate cutover\``);
    for (;;) {
      roundStarted = Date.now();
      const round = await catchUpNow(ctx);
      totals.rounds += 1;
      totals.staged += round.staged;
      totals.mapped += round.mapped;
      const lag = await streamLag(ctx.blue, ctx.green, await slotState(ctx, slot), { mapped });
      const guardrail = opts.untilCaughtUp ? await caughtUpGuardrail(ctx, journal) : null;
      line(`round ${totals.rounds}: ${round.staged} staged, ${round.mapped} mapped in ${round.ms} ms (up to ${round.upto}); ${lagLine(lag)}`);
      if (guardrail?.ok) return { stop: { by: 'caught-up' }, totals, lag, guardrail };
      // A round that found work is followed at once: a backlog is worked off without pauses.
      if (round.staged === 0 && round.mapped === 0) await stop.pause(opts.intervalMs);
      if (stop.signal) return { stop: { by: 'signal', signal: stop.signal }, totals, lag, guardrail };
    }
  } finally {
    stop.detach();
    ctx.progress = () => {};
  }
}

function summaryText(o: Outcome, slot: string): string {
  return [
    `follow stopped (${o.stop.by === 'signal' ? o.stop.signal : 'caught up'}) after ${o.totals.rounds} round(s): ${o.totals.staged} change(s) staged, ${o.totals.mapped} mapped`,
    lagLine(o.lag),
    o.guardrail ? `guardrail stream-caught-up: ${o.guardrail.ok ? 'ok' : 'NOT ok'} (${o.guardrail.detail})` : '',
    `slot ${slot} released: nothing reads it until the next \`migrate follow\`, or \`migrate cutover\`, which catches up again before the flip`,
  ].filter(Boolean).join('\n');
}

/** Runs `migrate follow`. */
export async function followCommand(flags: FollowFlags): Promise<CommandResult> {
  return withContext({ config: flags.config, lock: LOCK_COMMAND }, async (ctx) => {
    const started = Date.now();
    const { journal, slot } = await followedRun(ctx);
    const o = await rounds(ctx, journal, slot, { intervalMs: flags.intervalMs ?? DEFAULT_INTERVAL_MS, untilCaughtUp: !!flags.untilCaughtUp });
    const json = {
      ok: true,
      exitCode: 0,
      runId: journal.runId,
      slot,
      stopped: o.stop.by,
      signal: o.stop.by === 'signal' ? o.stop.signal : null,
      ...o.totals,
      lag: o.lag,
      guardrail: o.guardrail,
      ms: Date.now() - started,
    };
    return { exitCode: 0, json, text: summaryText(o, slot) };
  });
}

