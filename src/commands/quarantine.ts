// `migrate quarantine list|restore`: what cleanup moved aside (and the values it rewrote in place),
// and putting it back exactly.

import { withDb } from '../db/connect.ts';
import { loadConfig } from '../config/load.ts';
import { listQuarantine, listRewrites, restoreQuarantine } from '../db/quarantine.ts';
import { UsageError } from '../errors.ts';
import { acquireRunLock } from '../state/journal.ts';
import { table, type CommandResult } from './result.ts';
import type { CommonOptions } from './session.ts';

/** Runs `migrate quarantine list`. */
export async function quarantineListCommand(flags: CommonOptions): Promise<CommandResult> {
  const config = loadConfig(flags.config);
  const { held, rewrites } = await withDb('green', config.greenDsn, async (db) => ({ held: await listQuarantine(db), rewrites: await listRewrites(db) }));
  const total = held.reduce((a, q) => a + q.rows, 0);
  const lines = [held.length ? `${table([['table', 'rule', 'rows', 'reason'], ...held.map((q) => [q.table, q.rule, String(q.rows), q.reason])])}\ntotal: ${total}` : 'quarantine is empty'];
  if (rewrites.length) {
    lines.push('rewritten in place (rows kept, old values held for restore):');
    lines.push(table([['column', 'rule', 'rows'], ...rewrites.map((r) => [`${r.table}.${r.column}`, r.rule, String(r.rows)])]));
  }
  return { exitCode: 0, json: { ok: true, exitCode: 0, rows: total, entries: held, rewrites }, text: lines.join('\n') };
}

/** Runs `migrate quarantine restore [--rule R]`; a rule that holds no rows is a usage error (exit 1), never a silent success. */
export async function quarantineRestoreCommand(flags: CommonOptions & { rule?: string }): Promise<CommandResult> {
  const config = loadConfig(flags.config);
  // The lock lives on blue; held for the whole restore so no apply, cutover or drain runs beside it.
  const restored = await withDb('blue', config.blueDsn, async (blue) => {
    await acquireRunLock(blue, 'quarantine restore');
    return withDb('green', config.greenDsn, async (db) => {
      if (flags.rule !== undefined) {
        const rules = [...new Set([...(await listQuarantine(db)), ...(await listRewrites(db))].map((q) => q.rule))];
        if (!rules.includes(flags.rule)) {
          throw new UsageError(
            `no quarantined rows under rule "${flags.rule}"`,
            rules.length ? `pass one of the rules that hold rows: ${rules.join(', ')} (\`migrate quarantine list --config ${flags.config}\`)` : 'the quarantine is empty: there is nothing to restore',
          );
        }
      }
      return restoreQuarantine(db, flags.rule);
    });
  });
  const total = Object.values(restored).reduce((a, b) => a + b, 0);
  const text = total ? `${table(Object.entries(restored).map(([t, n]) => [t, String(n)]))}\nrestored: ${total} row(s)` : 'nothing to restore';
  return { exitCode: 0, json: { ok: true, exitCode: 0, restored, rows: total }, text };
}
