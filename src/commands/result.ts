// What every command returns: an exit code, one JSON document for --json, and text for humans.
// The CLI entry prints exactly one of the two and exits with the code.

import { OperatorError } from '../errors.ts';
import type { StepResult } from '../runner.ts';

/** A finished command. */
export interface CommandResult {
  /** Process exit code (see README: Exit codes). */
  exitCode: number;
  /** The document printed by --json. */
  json: Record<string, unknown>;
  /** The human report. */
  text: string;
}

/** The JSON document and text for a command that failed with an operator error. */
export function errorResult(err: OperatorError): CommandResult {
  return {
    exitCode: err.exitCode,
    json: { ok: false, exitCode: err.exitCode, error: err.toJSON() },
    text: `error: ${err.message}\nhint: ${err.hint}`,
  };
}

/** Formats rows as an aligned text table. */
export function table(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')).join('\n');
}

/** Renders step results (name, status, wall time) as a table. */
export function stepsTable(results: readonly Pick<StepResult, 'name' | 'status' | 'ms'>[]): string {
  return table([['step', 'status', 'ms'], ...results.map((r) => [r.name, r.status, String(r.ms)])]);
}
