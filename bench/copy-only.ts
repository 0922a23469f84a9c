// Runs the real `migrate apply` code path restricted to preflight, capture and snapshot, in its own
// process, and prints one JSON line with the outcome and this process's peak RSS. The snapshot bench
// times it (and reads its memory); the snapshot tests SIGKILL it midway and resume it.
// Usage: tsx bench/copy-only.ts <config.json> [--resume] [--accept-new-snapshot] [--jobs N] [--verify full] [--drill-pause POINT]

import { loadConfig } from '../src/config/load.ts';
import { runOptions } from '../src/commands/session.ts';
import { plainSink } from '../src/report/progress.ts';
import { drillHooksFromFlag } from '../src/drill.ts';
import { asOperatorError } from '../src/errors.ts';
import { apply, openSession } from '../src/runner.ts';
import { capture } from '../src/steps/capture.ts';
import { preflight } from '../src/steps/preflight.ts';
import { snapshot } from '../src/steps/snapshot.ts';

const args = process.argv.slice(2);
const file = args[0];
if (!file) {
  process.stderr.write('usage: tsx bench/copy-only.ts <config.json> [--resume] [--accept-new-snapshot] [--jobs N] [--verify full] [--drill-pause before|after:<step>:<unit>]\n');
  process.exit(1);
}
const flag = (name: string): boolean => args.includes(name);
const value = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};

const config = loadConfig(file);
const overrides = {
  resume: flag('--resume'),
  acceptNewSnapshot: flag('--accept-new-snapshot'),
  ...(value('--jobs') ? { jobs: Number(value('--jobs')) } : {}),
  ...(value('--verify') === 'full' ? { verify: 'full' as const } : {}),
};
const started = Date.now();
const session = await openSession(config, runOptions(config, overrides));
const hooks = drillHooksFromFlag(value('--drill-pause'));
if (hooks) session.ctx.hooks = hooks;
let exitCode = 0;
let out: Record<string, unknown> = {};
try {
  const outcome = await apply(session.ctx, overrides.resume ? 'resume' : 'fresh', plainSink(), [preflight, capture, snapshot]);
  exitCode = outcome.error?.exitCode ?? 0;
  const step = outcome.results.find((r) => r.name === 'snapshot');
  out = { ok: !outcome.error, snapshotMs: step?.ms ?? null, snapshot: step?.detail ?? null, ...(outcome.error ? { error: outcome.error.toJSON() } : {}) };
} catch (err) {
  const e = asOperatorError(err);
  exitCode = e.exitCode;
  out = { ok: false, error: e.toJSON() };
} finally {
  await session.close();
}
const maxRssMb = process.resourceUsage().maxRSS / 1024;
process.stdout.write(`${JSON.stringify({ ...out, exitCode, ms: Date.now() - started, maxRssMb: Number(maxRssMb.toFixed(1)) })}\n`);
process.exit(exitCode);
