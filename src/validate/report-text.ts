// The human form of a validation report, shared by `migrate validate` and `migrate apply`: every
// table, every invariant with its counts and expected losses by rule, every conversion and row-level
// change of the migrations, then the verdict. An SRE reads the same facts `--json` carries.

import { table } from '../commands/result.ts';
import type { ValidationReport } from '../steps/validate.ts';
import type { ChangedKey } from './changes.ts';

const keyText = (k: ChangedKey): string => `${k.key}${k.green !== undefined ? ` (blue ${JSON.stringify(k.blue)}, green ${JSON.stringify(k.green)})` : k.blue !== null ? ` (${k.blue})` : ''}`;

/** The lines of a validation report, verdict last. */
export function validationLines(report: ValidationReport): string[] {
  const lines = [`validation against blue as of the snapshot of run ${report.asOf.runId}${report.asOf.txSnapshot ? ` (txid snapshot ${report.asOf.txSnapshot})` : ''}`];
  lines.push(
    table([
      ['table', 'blue (snapshot)', 'green', 'quarantined', 'columns', 'ok'],
      ...report.tables.map((t) => [t.table, String(t.blueRows), String(t.greenRows), String(t.quarantinedRows), t.checksumSkipped ? `counts only: ${t.checksumSkipped}` : String(t.checkedColumns.length), t.ok ? 'yes' : `NO: ${t.problem}`]),
    ]),
  );
  lines.push(...report.skipped.map((s) => `not compared: ${s.table} (${s.reason})`));
  if (report.invariants.length) lines.push('invariants:');
  for (const i of report.invariants) {
    const expected = i.expected.reduce((s, e) => s + e.count, 0);
    lines.push(`  ${i.passed ? 'ok  ' : 'FAIL'} ${i.name}: blue ${i.blueCount}, green ${i.greenCount}, expected losses ${expected}, unexpected ${i.offending}`);
    for (const e of i.expected) lines.push(`       expected: quarantined by rule ${e.rule}: ${e.count} (sample: ${e.sample.join(', ')})`);
    if (!i.passed) lines.push(`       unexpected: ${i.message.slice(i.name.length + 2)}; sample keys: ${i.sample.join(', ')}`);
  }
  if (report.conversions.length || report.changes.length) lines.push('changed by the migration (listed, not failed):');
  for (const c of report.conversions) {
    lines.push(c.skipped ? `  conversion ${c.name}: not compared (${c.skipped})` : `  conversion ${c.name} (${c.kind}): ${c.changed} of ${c.compared} value(s) changed${c.sample.length ? `; sample: ${c.sample.map(keyText).join('; ')}` : ''}`);
  }
  for (const c of report.changes) {
    const verb = c.report === 'dropped' ? 'dropped' : 'rewritten';
    lines.push(c.skipped ? `  ${c.name}: not evaluated (${c.skipped})` : `  ${c.name}: ${c.count} of ${c.compared} ${verb}${c.sample.length ? `; sample: ${c.sample.map(keyText).join('; ')}` : ''}`);
  }
  lines.push(`validation: ${report.passed ? 'passed' : `FAILED\n  ${report.failures.join('\n  ')}`}`);
  return lines;
}
