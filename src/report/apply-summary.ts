// The Markdown summary of an apply (or `apply --dry-run` in CI): steps, quarantine, validation with
// its invariants, the cutover guardrails a dry run evaluates, and the metrics table, ready for
// $GITHUB_STEP_SUMMARY.

import type { Guardrail } from '../cutover/guardrails.ts';
import { metricsMarkdown, type Metrics } from './metrics.ts';

interface ApplyJson {
  ok: boolean;
  exitCode: number;
  runId: string | null;
  quarantine: { rows: number; byReason: Record<string, number> };
  validation: { passed: boolean; failures: string[] } | null;
  guardrails?: Guardrail[] | null;
  error?: { message?: unknown; hint?: unknown };
}

/** Renders the apply report as Markdown. */
export function applyMarkdown(json: ApplyJson, metrics: Metrics, dryRun: boolean): string {
  const extra = [
    `Run \`${json.runId ?? '-'}\`, exit code **${json.exitCode}**${dryRun ? ' (dry run: everything except cutover)' : ''}.`,
    `Quarantined rows: **${json.quarantine.rows}**${Object.entries(json.quarantine.byReason).map(([r, n]) => ` · ${r}: ${n}`).join('')}`,
    json.validation ? `Validation: **${json.validation.passed ? 'passed' : 'FAILED'}**${json.validation.failures.map((f) => `\n- ${f}`).join('')}` : 'Validation: not run',
    ...(json.guardrails ? [`Cutover guardrails (informational):${json.guardrails.map((g) => `\n- ${g.ok ? '✅' : '❌'} \`${g.id}\`: ${g.detail}`).join('')}`] : []),
    ...(json.error ? [`**Error:** ${String(json.error.message)}\n\n**Hint:** ${String(json.error.hint)}`] : []),
  ];
  return metricsMarkdown(metrics, { title: dryRun ? 'migrate apply --dry-run' : 'migrate apply', ok: json.ok, extra });
}
