// `migrate validate`: compare blue and green now, outside a run.

import { ExitCode } from '../errors.ts';
import { validateCopy } from '../steps/validate.ts';
import { table, type CommandResult } from './result.ts';
import { withContext, type CommonOptions } from './session.ts';

/** Runs `migrate validate`; exit 5 when blue and green disagree. */
export async function validateCommand(flags: CommonOptions): Promise<CommandResult> {
  return withContext({ config: flags.config }, async (ctx) => {
    const report = await validateCopy(ctx, await ctx.source.all());
    const exitCode = report.passed ? ExitCode.ok : ExitCode.findings;
    const text = [
      table([['table', 'blue', 'green', 'quarantined', 'columns', 'ok'], ...report.tables.map((t) => [t.table, String(t.blueRows), String(t.greenRows), String(t.quarantinedRows), String(t.checkedColumns.length), t.ok ? 'yes' : `NO: ${t.problem}`])]),
      ...report.skipped.map((s) => `not compared: ${s.table} (${s.reason})`),
      `validation: ${report.passed ? 'passed' : 'FAILED'}`,
    ];
    return { exitCode, json: { ok: report.passed, exitCode, validation: report }, text: text.join('\n') };
  });
}
