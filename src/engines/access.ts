// Access changes: before anything runs, an SRE must see what users will lose. For every quarantine
// rule, the rows it would move (its own and the dependents that go with them) that grant access
// today, by the engine's declared carriers (an active token, a remembered consent, a client with
// active tokens), with counts and sample keys. `plan` counts them; cleanup records them as it moves.

import type { ForeignKey } from '../db/catalog.ts';
import { query, type Db } from '../db/connect.ts';
import { expandDependents, type MoveStep } from '../db/quarantine.ts';
import { ident, qualified, tableKey } from '../db/sql.ts';
import type { AccessCarrier } from './types.ts';

/** Rows of one carrier class a rule takes away. */
export interface AccessChange {
  /** The rule that quarantines them. */
  rule: string;
  /** Carrier class ("active access token"). */
  kind: string;
  /** Their table. */
  table: string;
  /** How many. */
  rows: number;
  /** Up to five primary keys. */
  sample: Record<string, unknown>[];
  /** True when they move as dependents of the rule's rows (e.g. the tokens of a quarantined consent). */
  dependent: boolean;
}

/**
 * Counts, per carrier class, the rows a quarantine rule would move that grant access; read-only.
 * A table reached through several foreign keys is counted once (its moves are OR-ed).
 */
export async function accessChanges(db: Db, rule: MoveStep & { name: string }, fks: readonly ForeignKey[], carriers: readonly AccessCarrier[], primaryKeys: ReadonlyMap<string, string[]>): Promise<AccessChange[]> {
  if (!carriers.length) return [];
  const byTable = new Map<string, { step: MoveStep; wheres: string[] }>();
  for (const m of expandDependents(rule, fks)) {
    const key = tableKey(m.table);
    const entry = byTable.get(key) ?? { step: m, wheres: [] };
    entry.wheres.push(m.where);
    byTable.set(key, entry);
  }
  const out: AccessChange[] = [];
  for (const carrier of carriers) {
    const moved = byTable.get(carrier.table);
    if (!moved) continue;
    const from = `${qualified(moved.step.table.schema, moved.step.table.name)} t WHERE (${moved.wheres.map((w) => `(${w})`).join(' OR ')}) AND (${carrier.where})`;
    const pk = primaryKeys.get(carrier.table) ?? [];
    const cols = pk.length ? pk.map((c) => `t.${ident(c)}`).join(', ') : 't.ctid::text AS ctid';
    const { rows } = await query<{ n: string }>(db, `SELECT count(*) AS n FROM ${from}`);
    const n = Number(rows[0]?.n ?? 0);
    if (!n) continue;
    const sample = (await query<Record<string, unknown>>(db, `SELECT ${cols} FROM ${from} ORDER BY 1 LIMIT 5`)).rows;
    out.push({ rule: rule.name, kind: carrier.kind, table: carrier.table, rows: n, sample, dependent: carrier.table !== tableKey(rule.table) });
  }
  return out;
}

/** Every access change recorded in a list of plan steps (facts.accessChanges of their actions). */
export function accessChangesOf(steps: readonly { actions: readonly { facts?: Record<string, unknown> }[] }[]): AccessChange[] {
  return steps.flatMap((s) => s.actions.flatMap((a) => (a.facts?.accessChanges as AccessChange[] | undefined) ?? []));
}

/** The "access changes" section of `plan` and the apply report: every class by rule, counts and sample keys. */
export function accessChangeLines(changes: readonly AccessChange[], verb: 'would lose' | 'lost'): string[] {
  if (!changes.length) return ['access changes: none (no quarantined row grants access today)'];
  const total = changes.reduce((a, c) => a + c.rows, 0);
  const lines = [`access changes: ${total} row(s) that grant access ${verb === 'lost' ? 'were' : 'would be'} quarantined (users ${verb} them)`];
  for (const c of changes) {
    lines.push(`  - ${c.rule}: ${c.rows} ${c.kind}(s) in ${c.table}${c.dependent ? ' (moved with the rule\'s rows)' : ''}`);
    lines.push(`      sample keys: ${c.sample.map((k) => JSON.stringify(k)).join(' ')}`);
  }
  return lines;
}
