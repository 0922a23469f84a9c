// `migrate validate`: compare green with blue as of the snapshot of the run that built green. A green
// whose run has not finished its migrations is refused (exit 3, naming the step): it never "passes".

import { ExitCode } from '../errors.ts';
import { validateCopy } from '../steps/validate.ts';
import { finishedRunOfGreen } from '../validate/as-of-snapshot.ts';
import { validationLines } from '../validate/report-text.ts';
import type { CommandResult } from './result.ts';
import { withContext, type CommonOptions } from './session.ts';

/** Runs `migrate validate`; exit 5 when green lost something unexpectedly, 3 when green's run is unfinished. */
export async function validateCommand(flags: CommonOptions): Promise<CommandResult> {
  return withContext({ config: flags.config }, async (ctx) => {
    const runId = await finishedRunOfGreen(ctx.blue, ctx.green, ctx.source);
    const report = await validateCopy(ctx, await ctx.source.all(), { runId });
    const exitCode = report.passed ? ExitCode.ok : ExitCode.findings;
    return { exitCode, json: { ok: report.passed, exitCode, validation: report }, text: validationLines(report).join('\n') };
  });
}
