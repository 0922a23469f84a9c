// `migrate status`: the newest run, its journal, and what green holds.

import { readMarker } from '../db/green.ts';
import { listQuarantine } from '../db/quarantine.ts';
import { cutoverLines, leverRecord, targetRecords } from '../cutover/state.ts';
import { Journal, latestRun } from '../state/journal.ts';
import { table, type CommandResult } from './result.ts';
import { withContext, type CommonOptions } from './session.ts';

/** Runs `migrate status`. */
export async function statusCommand(flags: CommonOptions): Promise<CommandResult> {
  return withContext({ config: flags.config }, async (ctx) => {
    const run = await latestRun(ctx.blue);
    const marker = await readMarker(ctx.green);
    if (!run) {
      return { exitCode: 0, json: { ok: true, exitCode: 0, run: null, green: marker }, text: 'no run yet: start with `migrate plan`, then `migrate apply`' };
    }
    const rows = await new Journal(ctx.blue, run.run_id).rows();
    const steps = rows.filter((r) => r.unit === '');
    const units = rows.filter((r) => r.unit !== '');
    const quarantine = await listQuarantine(ctx.green).catch(() => []);
    const journal = new Journal(ctx.blue, run.run_id);
    const cutover = { targets: await targetRecords(journal), lever: await leverRecord(journal) };
    const text = [
      `run ${run.run_id}: ${run.status} (started ${run.started_at.toISOString()}${run.finished_at ? `, finished ${run.finished_at.toISOString()}` : ''})`,
      `snapshot: ${run.snapshot_id ?? '-'}; green: ${run.green_target}${marker?.loaded_at ? ' (loaded)' : ''}`,
      table([['step', 'status', 'units done'], ...steps.map((s) => [s.step, s.status, String(units.filter((u) => u.step === s.step && u.status === 'done').length)])]),
      `quarantined rows: ${quarantine.reduce((a, q) => a + q.rows, 0)}`,
      ...cutoverLines(cutover.targets, cutover.lever),
      run.status === 'failed' || run.status === 'running' ? 'next: fix the cause, then `migrate apply --resume`' : '',
    ].filter(Boolean);
    return { exitCode: 0, json: { ok: true, exitCode: 0, run, steps, units, green: marker, quarantine, cutover }, text: text.join('\n') };
  });
}
