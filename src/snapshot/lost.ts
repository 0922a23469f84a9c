// Green can lose work the journal on blue says is done: restored from an older backup, or crashed
// while running with fsync=off. Before a resume skips finished units, this compares green with what
// the journal recorded (each data unit's row count, each index's existence) and puts the units whose
// effect is missing back to "not done", so this attempt does them again instead of verification
// failing at the end (or, worse, a short table being cut over).

import type { TableInfo } from '../db/catalog.ts';
import { query, type Db } from '../db/connect.ts';
import { qualified } from '../db/sql.ts';
import { StateError } from '../errors.ts';
import type { StepContext } from '../steps/step.ts';
import { rangePredicate, type KeyRange } from './copy.ts';
import { rangesUnit, type UnitAction } from './units.ts';

/** A done unit whose effect green no longer holds, and why. */
interface Lost {
  id: string;
  why: string;
}

async function exists(green: Db, regclass: string): Promise<boolean> {
  const { rows } = await query<{ ok: boolean }>(green, 'SELECT to_regclass($1) IS NOT NULL AS ok', [regclass], { side: 'green' });
  return rows[0]?.ok ?? false;
}

/** Done data units of tables whose rows green no longer holds (exact count per unit against the journal). */
async function lostData(green: Db, actions: readonly UnitAction[], details: ReadonlyMap<string, Record<string, unknown>>, tables: ReadonlyMap<string, TableInfo>): Promise<Lost[]> {
  const lost: Lost[] = [];
  for (const [key, t] of tables) {
    const done = actions.filter((a) => a.facts.unit === 'data' && a.facts.table === key && details.has(a.id));
    if (!done.length) continue;
    const target = qualified(t.schema, t.name);
    if (!(await exists(green, target))) {
      throw new StateError(`green no longer has table ${key}, which this run had copied (green was restored or rebuilt behind migrate's back)`, 'rerun with --restart to copy blue again from scratch');
    }
    const ranges = details.get(rangesUnit(t))?.ranges as (KeyRange | null)[] | undefined;
    for (const a of done) {
      const [i, n] = a.facts.part ?? [1, 1];
      const where = n > 1 ? rangePredicate(t, ranges?.[i - 1] ?? null) : 'TRUE';
      const expected = Number(details.get(a.id)?.rows ?? 0);
      const { rows } = await query<{ n: string }>(green, `SELECT count(*) AS n FROM ONLY ${target} WHERE ${where}`, [], { side: 'green' });
      const actual = Number(rows[0]?.n ?? 0);
      if (actual < expected) lost.push({ id: a.id, why: `green holds ${actual} of the ${expected} rows it copied` });
    }
  }
  return lost;
}

/** Done index units whose index is missing on green, with the ADD CONSTRAINT ... USING INDEX that attached it. */
async function lostIndexes(green: Db, actions: readonly UnitAction[], details: ReadonlyMap<string, Record<string, unknown>>, tables: ReadonlyMap<string, TableInfo>): Promise<Lost[]> {
  const lost: Lost[] = [];
  for (const a of actions) {
    if (a.facts.unit !== 'post' || !details.has(a.id)) continue;
    const t = a.facts.table ? tables.get(a.facts.table) : undefined;
    let regclass: string | null = null;
    if (a.id.startsWith('unique-index:') && t) regclass = qualified(t.schema, a.id.slice(`unique-index:${a.facts.table}.`.length));
    const plain = /^index:([^.]+)\.(.+)$/.exec(a.id);
    if (plain) regclass = qualified(plain[1]!, plain[2]!);
    if (!regclass || (await exists(green, regclass))) continue;
    lost.push({ id: a.id, why: 'its index is missing on green' });
    for (const c of actions) if (c.facts.unit === 'post' && c.facts.after.includes(a.id) && details.has(c.id)) lost.push({ id: c.id, why: `it attaches ${a.id}, which is redone` });
  }
  return lost;
}

/**
 * Re-opens the finished snapshot units whose effect green lost: the journal row goes back to failed
 * (with the reason) and the unit leaves `details`, so the step runs it again. A table's analyze unit
 * follows its data. Returns the re-opened ids. A lost table whose foreign keys are already in place
 * cannot be emptied and copied again safely: that is refused with the --restart hint.
 */
export async function reopenLostUnits(ctx: StepContext, actions: readonly UnitAction[], details: Map<string, Record<string, unknown>>, tables: ReadonlyMap<string, TableInfo>): Promise<string[]> {
  // Pre-data is one transaction: green has all of its tables or none. None means green lost
  // everything this step did (e.g. its last WAL with synchronous_commit=off), so all of it is redone.
  let present = 0;
  for (const t of tables.values()) if (await exists(ctx.green, qualified(t.schema, t.name))) present++;
  if (present === 0) {
    const all = [...details.keys()].filter((id) => actions.some((a) => a.id === id));
    for (const id of all) {
      await ctx.journal!.fail('snapshot', id, "green lost this unit's work (green has none of the copied tables); redone on resume");
      details.delete(id);
    }
    ctx.progress(`green lost finished work: none of the ${tables.size} copied tables is on green; copying everything again`);
    return all;
  }
  const data = await lostData(ctx.green, actions, details, tables);
  const lostTables = new Set(data.map((l) => actions.find((a) => a.id === l.id)?.facts.table));
  for (const fk of actions.filter((a) => a.facts.unit === 'foreign-key' && details.has(a.id))) {
    const touches = [...lostTables].some((key) => fk.facts.table === key || fk.facts.after.some((d) => actions.find((a) => a.id === d)?.facts.unit === 'data' && actions.find((a) => a.id === d)?.facts.table === key));
    if (touches) throw new StateError(`green lost rows of a table whose foreign keys are already in place (${fk.id})`, 'rerun with --restart to copy blue again from scratch');
  }
  const analyze: Lost[] = [...lostTables].filter((key) => details.has(`analyze:${key}`)).map((key) => ({ id: `analyze:${key}`, why: 'its table is copied again' }));
  const lost = [...data, ...analyze, ...(await lostIndexes(ctx.green, actions, details, tables))];
  for (const l of lost) {
    await ctx.journal!.fail('snapshot', l.id, `green lost this unit's work (${l.why}); redone on resume`);
    details.delete(l.id);
    ctx.progress(`green lost finished work: ${l.id} (${l.why}); doing it again`);
  }
  return lost.map((l) => l.id);
}
