// `migrate apply`: run every step under the journal; `--resume` continues an unfinished run,
// `--restart` abandons it and rebuilds green.

import fs from 'node:fs';
import type { ResolvedConfig } from '../config/load.ts';
import { listQuarantine } from '../db/quarantine.ts';
import { accessChangeLines, type AccessChange } from '../engines/access.ts';
import { drillHooksFromFlag } from '../drill.ts';
import { UsageError } from '../errors.ts';
import { progressSink } from '../report/progress.ts';
import { IN_PLACE_STEPS } from '../inplace/steps.ts';
import type { UnitHooks } from '../drill.ts';
import { applyMarkdown } from '../report/apply-summary.ts';
import { checkGuardrails, outboxBacklog } from '../cutover/guardrails.ts';
import { Journal } from '../state/journal.ts';
import { collectMetrics, dbStats, metricsText, recordBaseline } from '../report/metrics.ts';
import { apply, applySteps, type ProgressSink } from '../runner.ts';
import type { ValidationReport } from '../steps/validate.ts';
import { validationLines } from '../validate/report-text.ts';
import type { ResumeMode } from '../state/journal.ts';
import { stepsTable, type CommandResult } from './result.ts';
import { withContext } from './session.ts';

/** Flags of `migrate apply`. */
export interface ApplyFlags {
  /** Config path or an already resolved config (demo). */
  config: string | ResolvedConfig;
  /** Print JSON. */
  json?: boolean;
  /** Continue the unfinished run. */
  resume?: boolean;
  /** Abandon the unfinished run and start over. */
  restart?: boolean;
  /** Copy remaining tables from a new snapshot when the old one is gone. */
  acceptNewSnapshot?: boolean;
  /** Parallel workers. */
  jobs?: number;
  /** Copy verification: `sample` (default) or `full`. */
  verify?: 'sample' | 'full';
  /** CI rehearsal against a copied database: everything except cutover, with the report. */
  dryRun?: boolean;
  /** Also write the report as Markdown to this file (CI step summary). */
  reportMd?: string;
  /** Run the migrations on blue itself, lock-safe (no copy). */
  inPlace?: boolean;
  /** With inPlace: false runs statements as written (`--no-rewrite`). */
  rewrite?: boolean;
  /** Accept a migrations folder with nothing pending: copy without migrating. */
  allowNoMigrations?: boolean;
  /** Crash drill: stop at this journal unit and wait to be killed (`before:<step>:<unit>`; hidden flag). */
  drillPause?: string;
  /** Progress sink override (demo, tests). */
  sink?: ProgressSink;
}

/** Summary of quarantined rows for reports. */
export interface QuarantineTotals {
  /** Total rows held. */
  rows: number;
  /** Rows per rule. */
  byReason: Record<string, number>;
}

/** Runs `migrate apply`. */
export async function applyCommand(flags: ApplyFlags): Promise<CommandResult> {
  if (flags.resume && flags.restart) throw new UsageError('--resume and --restart exclude each other', 'pass one of them');
  if (flags.acceptNewSnapshot && !flags.resume) throw new UsageError('--accept-new-snapshot only applies with --resume', 'add --resume');
  const mode: ResumeMode = flags.resume ? 'resume' : flags.restart ? 'restart' : 'fresh';
  const hooks = drillHooksFromFlag(flags.drillPause);
  if (flags.inPlace) return applyInPlace(flags, mode, hooks);
  const run = { acceptNewSnapshot: !!flags.acceptNewSnapshot, restart: !!flags.restart, resume: !!flags.resume, allowNoMigrations: !!flags.allowNoMigrations, ...(flags.jobs ? { jobs: flags.jobs } : {}), ...(flags.verify ? { verify: flags.verify } : {}) };
  return withContext({ config: flags.config, run, ...(hooks ? { hooks } : {}) }, async (ctx) => {
    const baseline = await dbStats(ctx.green);
    const outcome = await apply(ctx, mode, flags.sink ?? progressSink(!!flags.json), applySteps(ctx.config), { rehearsal: !!flags.dryRun });
    // After a failed run a side may be gone: the figures are best effort, the error stays the report.
    const bestEffort = <T>(work: Promise<T>): Promise<T | null> => (outcome.error ? work.catch(() => null) : work);
    await bestEffort(recordBaseline(ctx, baseline));
    const metrics = (await bestEffort(collectMetrics(ctx))) ?? { green: null, steps: outcome.results.map((r) => ({ name: r.name, ms: r.ms })), probes: [] };
    const held = await listQuarantine(ctx.green).catch(() => []);
    const quarantine: QuarantineTotals = { rows: 0, byReason: {} };
    for (const q of held) {
      quarantine.rows += q.rows;
      quarantine.byReason[q.rule] = (quarantine.byReason[q.rule] ?? 0) + q.rows;
    }
    // Recorded by cleanup as it moved the rows (kept in the journal, so a resumed run reports them too).
    const cleanupDetail = outcome.results.find((r) => r.name === 'cleanup')?.detail;
    const accessChanges = (cleanupDetail?.accessChanges as AccessChange[] | undefined) ?? [];
    const rewritten = (cleanupDetail?.rewritten as Record<string, number> | undefined) ?? {};
    const validationStep = outcome.results.find((r) => r.name === 'validate');
    const report = (validationStep?.detail?.validation ?? null) as ValidationReport | null;
    const validation = report;
    const exitCode = outcome.error?.exitCode ?? 0;
    // A rehearsal also says whether a cutover would be let through now (informational: a dry run
    // cuts nothing over, so the verdicts do not change its exit code).
    const guardrails = flags.dryRun && !outcome.error && outcome.runId ? await checkGuardrails(ctx.blue, ctx.green, new Journal(ctx.blue, outcome.runId), ctx.config, outboxBacklog(ctx.blue, ctx.green)) : null;
    const json = {
      ok: !outcome.error,
      exitCode,
      runId: outcome.runId,
      resumed: outcome.resumed,
      steps: outcome.results.map((r) => ({ name: r.name, status: r.status, ms: r.ms })),
      quarantine,
      accessChanges,
      rewritten,
      validation,
      metrics,
      ...(flags.dryRun ? { dryRun: true, guardrails } : {}),
      ...(outcome.error ? { error: outcome.error.toJSON() } : {}),
    };
    if (flags.reportMd) fs.writeFileSync(flags.reportMd, applyMarkdown(json, metrics, !!flags.dryRun));
    const lines = [`run ${outcome.runId}${outcome.resumed ? ' (resumed)' : ''}`, stepsTable(outcome.results), `quarantined rows: ${quarantine.rows}`];
    for (const [rule, n] of Object.entries(quarantine.byReason)) lines.push(`  ${rule}: ${n}`);
    for (const [rule, n] of Object.entries(rewritten)) lines.push(`rewritten in place (rows kept): ${rule}: ${n}`);
    if (cleanupDetail) lines.push(...accessChangeLines(accessChanges, 'lost'));
    if (validation) lines.push(...validationLines(validation));
    if (guardrails) lines.push('cutover guardrails (dry run, informational):', ...guardrails.map((g) => `  ${g.ok ? 'ok ' : 'NO '} ${g.id}: ${g.detail}`));
    lines.push(metricsText(metrics));
    if (outcome.error) lines.push(`error: ${outcome.error.message}`, `hint: ${outcome.error.hint}`);
    return { exitCode, json, text: lines.join('\n') };
  });
}

/** `migrate apply --in-place [--no-rewrite] [--resume|--restart]`: the pending migrations on blue itself, lock-safe, under the same journal and run lock. */
async function applyInPlace(flags: ApplyFlags, mode: ResumeMode, hooks?: UnitHooks): Promise<CommandResult> {
  const run = { resume: mode === 'resume', restart: mode === 'restart', rewrite: flags.rewrite !== false };
  return withContext({ config: flags.config, run, ...(hooks ? { hooks } : {}) }, async (ctx) => {
    const outcome = await apply(ctx, mode, flags.sink ?? progressSink(!!flags.json), IN_PLACE_STEPS);
    const migrate = outcome.results.find((r) => r.name === 'migrate-in-place');
    const exitCode = outcome.error?.exitCode ?? 0;
    const json = {
      ok: !outcome.error,
      exitCode,
      inPlace: true,
      runId: outcome.runId,
      resumed: outcome.resumed,
      steps: outcome.results.map((r) => ({ name: r.name, status: r.status, ms: r.ms })),
      migrate: migrate?.status === 'done' ? migrate.detail : null,
      ...(outcome.error ? { error: outcome.error.toJSON() } : {}),
    };
    const lines = [`in-place run ${outcome.runId}${outcome.resumed ? ' (resumed)' : ''}`, stepsTable(outcome.results)];
    if (migrate?.status === 'done' && migrate.detail) lines.push(`applied: ${(migrate.detail.applied as string[]).join(', ') || 'nothing'}; lock retries: ${String(migrate.detail.retries)}`);
    if (outcome.error) lines.push(`error: ${outcome.error.message}`, `hint: ${outcome.error.hint}`);
    return { exitCode, json, text: lines.join('\n') };
  });
}
