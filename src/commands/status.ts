// `migrate status`: the newest real run, its journal, and what green holds. A rehearsal
// (`apply --dry-run`) is never shown as the run: it is mentioned in one line when it is newer, so
// nobody reads a rehearsal's "done" as the state of the upgrade they are about to cut over.

import { readMarker } from '../db/green.ts';
import { listQuarantine } from '../db/quarantine.ts';
import { cutoverLines, leverRecord, targetRecords } from '../cutover/state.ts';
import { Journal, latestRun, type RunRow } from '../state/journal.ts';
import { CUTOVER_STEP_ORDER, IN_PLACE_STEP_ORDER, OPTIONAL_STEP_ORDER, STEP_ORDER } from '../steps/step.ts';
import { streamLag, streamStatus, streamStatusLines } from '../stream/readiness.ts';
import { table, type CommandResult } from './result.ts';
import { withContext, type CommonOptions } from './session.ts';

/** The one line naming a rehearsal, e.g. "rehearsal run X (dry run) into G: done". */
export function rehearsalLine(r: RunRow): string {
  return `rehearsal run ${r.run_id} (dry run) into ${r.green_target}: ${r.status}`;
}

/** Runs `migrate status`. */
export async function statusCommand(flags: CommonOptions): Promise<CommandResult> {
  return withContext({ config: flags.config }, async (ctx) => {
    const run = await latestRun(ctx.blue, { kind: 'real' });
    const newest = await latestRun(ctx.blue, { kind: 'rehearsal' });
    const rehearsal = newest && (!run || newest.started_at > run.started_at) ? newest : null;
    const marker = await readMarker(ctx.green);
    // The run's slot on blue (and the newest rehearsal's); any other slot of ours is left behind.
    const slots = await streamStatus(ctx.blue, { enabled: ctx.config.raw.stream.enabled });
    // Green's lag behind the slot, its recent rate and ETA (read from green's marks).
    const stream = { ...slots, catchUp: slots.slot ? await streamLag(ctx.blue, ctx.green, slots.slot, { mapped: ctx.config.engine.streamMapping !== null }) : null };
    if (!run) {
      const text = ['no run yet: start with `migrate plan`, then `migrate apply`', rehearsal ? rehearsalLine(rehearsal) : '', ...streamStatusLines(stream)].filter(Boolean).join('\n');
      return { exitCode: 0, json: { ok: true, exitCode: 0, run: null, rehearsal, green: marker, stream }, text };
    }
    const rows = await new Journal(ctx.blue, run.run_id).rows();
    const units = rows.filter((r) => r.unit !== '');
    // Every step of the lifecycle in run order, those not reached yet included; then earlier cutover attempts.
    const own = new Map(rows.filter((r) => r.unit === '').map((r) => [r.step, r]));
    const inPlace = own.has('constraints') || own.has('migrate-in-place');
    const streams = ctx.config.raw.stream.enabled || own.has('stream');
    const order: readonly string[] = inPlace ? IN_PLACE_STEP_ORDER : [...STEP_ORDER, ...(streams ? OPTIONAL_STEP_ORDER : []), ...CUTOVER_STEP_ORDER];
    const steps = [...order.map((name) => own.get(name) ?? { step: name, unit: '', status: 'not started', started_at: null, finished_at: null, detail: {} }), ...[...own.values()].filter((r) => !order.includes(r.step))];
    const quarantine = await listQuarantine(ctx.green).catch(() => []);
    const journal = new Journal(ctx.blue, run.run_id);
    const cutover = { targets: await targetRecords(journal), lever: await leverRecord(journal) };
    const text = [
      `run ${run.run_id}: ${run.status} (started ${run.started_at.toISOString()}${run.finished_at ? `, finished ${run.finished_at.toISOString()}` : ''})`,
      `snapshot: ${run.snapshot_id ?? '-'}; green: ${run.green_target}${marker?.loaded_at ? ' (loaded)' : ''}`,
      table([['step', 'status', 'units done'], ...steps.map((s) => [s.step, s.status, String(units.filter((u) => u.step === s.step && u.status === 'done').length)])]),
      `quarantined rows: ${quarantine.reduce((a, q) => a + q.rows, 0)}`,
      ...cutoverLines(cutover.targets, cutover.lever),
      ...streamStatusLines(stream),
      run.status === 'failed' || run.status === 'running' ? 'next: fix the cause, then `migrate apply --resume`' : '',
      rehearsal ? rehearsalLine(rehearsal) : '',
    ].filter(Boolean);
    return { exitCode: 0, json: { ok: true, exitCode: 0, run, rehearsal, steps, units, green: marker, quarantine, cutover, stream }, text: text.join('\n') };
  });
}
