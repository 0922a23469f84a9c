// Duplicates that a new unique key rejects must lose all but one row, and which one stays decides
// what users keep: the row that grants access must win. A tie-break is declared once per engine
// (criteria, most important first); from it come both the rule's `where` (rows that lose to another
// row of their group) and the sentence `plan` prints ("keeps the handled, remembered consent X;
// quarantines Y").

import type { Db } from '../db/connect.ts';
import { query } from '../db/connect.ts';
import { ident, qualified, type TableRef } from '../db/sql.ts';
import type { TieBreak } from './types.ts';

/** The ranking of alias `r` as a row value: criteria in order, the key last (always decides). */
function rank(tb: TieBreak, r: string): string {
  return `(${[...tb.order.map((c) => c.sql(r)), `${r}.${ident(tb.keyColumn)}`].join(', ')})`;
}

/** Predicate over alias `t`: the row loses to another row of its group (so it is the one quarantined). */
export function tieBreakWhere(table: TableRef, tb: TieBreak): string {
  const g = ident(tb.groupColumn);
  const k = ident(tb.keyColumn);
  return (
    `t.${g} IS NOT NULL AND EXISTS (SELECT 1 FROM ${qualified(table.schema, table.name)} n ` +
    `WHERE n.${g} = t.${g} AND n.${k} <> t.${k} AND ${rank(tb, 'n')} > ${rank(tb, 't')})`
  );
}

/** The criteria in words, for the plan ("handled, then remembered, then ..."). */
export function tieBreakOrder(tb: TieBreak): string {
  return tb.order.map((c) => c.name).join(', then ');
}

/** One resolved group: the row kept, one row quarantined, and what decided. */
export interface TieChoice {
  /** Key of the row that stays. */
  kept: string;
  /** Properties of the kept row (the boolean criteria it meets). */
  keptIs: string[];
  /** Key of a row that is quarantined. */
  quarantined: string;
  /** The first criterion on which they differ, as the quarantined row lacks it ("not handled"). */
  decidedBy: string;
  /** The sentence `plan` prints. */
  sentence: string;
}

/**
 * For quarantined keys, the row of their group that stays and why (read-only; callers hold the
 * read-only transaction that evaluates rules).
 */
export async function explainChoices(db: Db, table: TableRef, tb: TieBreak, quarantinedKeys: readonly string[]): Promise<TieChoice[]> {
  if (!quarantinedKeys.length) return [];
  const g = ident(tb.groupColumn);
  const k = ident(tb.keyColumn);
  const from = qualified(table.schema, table.name);
  const loser = tb.order.map((c, i) => `(${c.sql('t')})::text AS ${ident(`q${i}`)}`).join(', ');
  const winner = tb.order.map((c, i) => `(${c.sql('n')})::text AS ${ident(`k${i}`)}`).join(', ');
  const order = [...tb.order.map((c) => `${c.sql('n')} DESC`), `n.${k} DESC`].join(', ');
  const { rows } = await query<Record<string, string>>(
    db,
    `SELECT t.${k}::text AS quarantined, w.key AS kept, ${loser}, ${tb.order.map((_, i) => `w.${ident(`k${i}`)}`).join(', ')}
       FROM ${from} t CROSS JOIN LATERAL (SELECT n.${k}::text AS key, ${winner} FROM ${from} n WHERE n.${g} = t.${g} ORDER BY ${order} LIMIT 1) w
      WHERE t.${k}::text = ANY ($1::text[]) ORDER BY 1`,
    [quarantinedKeys],
  );
  return rows.map((r) => {
    const keptIs = tb.order.filter((c, i) => c.boolean && r[`k${i}`] === 'true').map((c) => c.name);
    const at = tb.order.findIndex((_, i) => r[`k${i}`] !== r[`q${i}`]);
    const decidedBy = at < 0 ? `${tb.keyColumn} sorts first` : tb.order[at]!.unlike;
    const kept = String(r.kept);
    const quarantined = String(r.quarantined);
    const adjectives = keptIs.length ? `${keptIs.join(', ')} ` : '';
    return { kept, keptIs, quarantined, decidedBy, sentence: `keeps the ${adjectives}${tb.noun} ${kept}; quarantines ${quarantined} (${decidedBy})` };
  });
}
