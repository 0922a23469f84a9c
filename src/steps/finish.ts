// Finish: once green has served through the watch window (or an upgrade is abandoned before any
// target went live), everything migrate installed is removed again: capture triggers and the state
// schemas on blue and green, and any replication objects of ours. The quarantine on green holds rows
// of real data, so it is kept and reported: nothing lost, ever. This is capture's rollback, too.

import { query, type Db } from '../db/connect.ts';
import { ident } from '../db/sql.ts';
import type { Side } from '../errors.ts';
import { captureRollbackActions } from './capture.ts';
import type { Action } from './step.ts';

/** Schemas migrate owns outright on a side (the quarantine is reported, never dropped). */
const OWNED_SCHEMAS = ['bluegreen', 'bluegreen_green'] as const;

const OURS_SQL = `
  SELECT 'publication' AS kind, p.pubname AS name, format('DROP PUBLICATION IF EXISTS %I', p.pubname) AS drop FROM pg_publication p WHERE p.pubname LIKE 'bluegreen%'
  UNION ALL
  SELECT 'replication slot', s.slot_name, format('SELECT pg_drop_replication_slot(%L)', s.slot_name)
    FROM pg_replication_slots s WHERE s.slot_name LIKE 'bluegreen%' AND s.database = current_database()
  UNION ALL
  SELECT 'schema', n.nspname, format('DROP SCHEMA IF EXISTS %I CASCADE', n.nspname) FROM pg_namespace n WHERE n.nspname = ANY ($1::text[])
  ORDER BY 1 DESC, 2`;

/** What `finish` removes on one side, one action per object: capture's rollback first, then replication objects and schemas. */
export async function finishActions(db: Db, side: Side): Promise<Action[]> {
  const capture = (await captureRollbackActions(db, side)).map((a) => ({ ...a, id: `${side}:${a.id}` }));
  const { rows } = await query<{ kind: string; name: string; drop: string }>(db, OURS_SQL, [[...OWNED_SCHEMAS]], { side });
  return [...capture, ...rows.map((r): Action => ({ id: `${side}:${r.kind}:${r.name}`, sentence: `remove ${r.kind} ${r.name} from ${side}`, side, sql: r.drop }))];
}

/** Rows held in green's quarantine (kept by finish), by table; empty when there is none. */
export async function keptQuarantine(green: Db): Promise<{ table: string; rows: number }[]> {
  const { rows } = await query<{ relname: string }>(
    green,
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'bluegreen_quarantine' AND c.relkind = 'r' AND c.relname <> '_template' ORDER BY 1`,
    [],
    { side: 'green' },
  );
  const out: { table: string; rows: number }[] = [];
  for (const r of rows) {
    const n = await query<{ n: string }>(green, `SELECT count(*) AS n FROM ${ident('bluegreen_quarantine')}.${ident(r.relname)}`, [], { side: 'green' });
    if (Number(n.rows[0]?.n) > 0) out.push({ table: `bluegreen_quarantine.${r.relname}`, rows: Number(n.rows[0]?.n) });
  }
  return out;
}

/** What an operator runs to drop the kept quarantine once its rows are no longer needed. */
export const DROP_QUARANTINE_HINT = 'export it first (pg_dump --schema=bluegreen_quarantine), then DROP SCHEMA bluegreen_quarantine CASCADE on green';
