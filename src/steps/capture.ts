// Capture: before anything is copied, record every access-removing write on blue in an outbox, so
// nothing revoked during the window can fall between the snapshot and the cutover. Replay is
// idempotent, so events that the snapshot already contains are harmless.

import fs from 'node:fs';
import type { CaptureTable } from '../config/schema.ts';
import { query, type Db } from '../db/connect.ts';
import { ident, literal, qualified } from '../db/sql.ts';
import { ConfigError, StateError, type ConfigIssue, type Side } from '../errors.ts';
import { runSqlActions } from '../run-step.ts';
import { publicationAction } from '../stream/publication.ts';
import type { Action, Step } from './step.ts';

const CAPTURE_SQL = fs.readFileSync(new URL('../../sql/state/capture.sql', import.meta.url), 'utf8');
/** Records when capture started (time, WAL LSN); a rerun keeps the first start. */
const RECORD_START = 'INSERT INTO bluegreen.capture DEFAULT VALUES ON CONFLICT (capture_id) DO NOTHING';
/** The capture function every capture trigger calls (sql/state/capture.sql). */
const CAPTURE_FUNCTION = `${qualified('bluegreen', 'capture_revocation')}()`;

/** Trigger names we own; the snapshot leaves them out of green. */
export const CAPTURE_TRIGGERS = { delete: 'bluegreen_capture_delete', deactivate: 'bluegreen_capture_deactivate' } as const;

function splitTable(table: string): { schema: string; name: string } {
  const [schema = 'public', name = ''] = table.split('.');
  return { schema, name };
}

function textArray(values: readonly string[]): string {
  return literal(`{${values.map((v) => `"${v.replace(/(["\\])/g, '\\$1')}"`).join(',')}}`);
}

/** The DDL that installs capture on one table (idempotent: drop and create in one transaction). */
export function captureDdl(t: CaptureTable): string[] {
  const { schema, name } = splitTable(t.table);
  const target = `${ident(schema)}.${ident(name)}`;
  const args = [literal(t.kind), textArray(t.key), literal(t.activeColumn ?? ''), textArray(t.extraColumns)].join(', ');
  const ddl = [
    `DROP TRIGGER IF EXISTS ${CAPTURE_TRIGGERS.delete} ON ${target}`,
    `CREATE TRIGGER ${CAPTURE_TRIGGERS.delete} AFTER DELETE ON ${target} FOR EACH ROW EXECUTE FUNCTION bluegreen.capture_revocation(${args})`,
    `DROP TRIGGER IF EXISTS ${CAPTURE_TRIGGERS.deactivate} ON ${target}`,
  ];
  if (t.activeColumn) {
    const col = ident(t.activeColumn);
    ddl.push(
      `CREATE TRIGGER ${CAPTURE_TRIGGERS.deactivate} AFTER UPDATE OF ${col} ON ${target} FOR EACH ROW WHEN (OLD.${col} IS TRUE AND NEW.${col} IS FALSE) EXECUTE FUNCTION bluegreen.capture_revocation(${args})`,
    );
  }
  return ddl;
}

async function missingColumns(db: Db, t: CaptureTable): Promise<string[]> {
  const { schema, name } = splitTable(t.table);
  const wanted = [...t.key, ...t.extraColumns, ...(t.activeColumn ? [t.activeColumn] : [])];
  const { rows } = await query<{ attname: string }>(
    db,
    `SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped`,
    [schema, name],
  );
  if (!rows.length) return [`table ${t.table} does not exist`];
  const have = new Set(rows.map((r) => r.attname));
  return wanted.filter((c) => !have.has(c)).map((c) => `column ${c} does not exist`);
}

/**
 * What rollback removes from blue, one action per object present (read-only): every trigger of ours
 * (our names, or calling the capture function: the configured tables and any an earlier config
 * left), then the capture function, then the capture start record, so a later capture starts anew.
 * The state schema (journal, outbox rows) stays: `migrate finish` drops it last.
 */
export async function captureRollbackActions(db: Db, side: Side = 'blue'): Promise<Action[]> {
  const triggers = await query<{ tgname: string; nspname: string; relname: string }>(
    db,
    `SELECT t.tgname, n.nspname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE NOT t.tgisinternal AND (t.tgname = ANY ($1::text[]) OR t.tgfoid = to_regprocedure($2))
      ORDER BY n.nspname, c.relname, t.tgname`,
    [Object.values(CAPTURE_TRIGGERS), 'bluegreen.capture_revocation()'],
    { side },
  );
  const actions: Action[] = triggers.rows.map((r) => {
    const object = `trigger ${r.tgname} ON ${r.nspname}.${r.relname}`;
    return { id: `trigger:${r.tgname}:${r.nspname}.${r.relname}`, sentence: `remove ${object} from ${side}`, side, sql: `DROP TRIGGER IF EXISTS ${ident(r.tgname)} ON ${qualified(r.nspname, r.relname)}`, facts: { object } };
  });
  const state = await query<{ fn: boolean; started: boolean }>(
    db,
    `SELECT to_regprocedure('bluegreen.capture_revocation()') IS NOT NULL AS fn, to_regclass('bluegreen.capture') IS NOT NULL AS started`,
    [],
    { side },
  );
  if (state.rows[0]?.fn) {
    const object = 'function bluegreen.capture_revocation()';
    actions.push({ id: 'function:bluegreen.capture_revocation()', sentence: `remove ${object} from ${side}`, side, sql: `DROP FUNCTION IF EXISTS ${CAPTURE_FUNCTION}`, facts: { object } });
  }
  if (state.rows[0]?.started && (await query(db, 'SELECT 1 FROM bluegreen.capture', [], { side })).rowCount) {
    const object = 'capture start record (bluegreen.capture)';
    actions.push({ id: 'start:bluegreen.capture', sentence: `remove the ${object} from ${side}`, side, sql: 'DELETE FROM bluegreen.capture', facts: { object } });
  }
  return actions;
}

/** The capture step. */
export const capture = {
  name: 'capture',
  purpose: 'record every access-removing write on blue from now on (outbox triggers)',
  async validate(ctx) {
    const issues: ConfigIssue[] = [];
    for (const [i, t] of ctx.config.captureTables.entries()) {
      for (const problem of await missingColumns(ctx.blue, t)) issues.push({ path: `capture.tables.${i}`, message: `${t.table}: ${problem}` });
    }
    if (issues.length) throw new ConfigError(ctx.config.file, issues, 'fix capture.tables (or the profile) to name tables and columns that exist on blue');
  },
  async plan(ctx) {
    const actions: Action[] = [{ id: 'outbox', sentence: 'install the outbox function and record the capture start (time, WAL LSN)', side: 'blue', sql: `${CAPTURE_SQL.trim()}\n${RECORD_START}` }];
    for (const t of ctx.config.captureTables) {
      actions.push({ id: `trigger:${t.table}`, sentence: `capture ${t.kind} revocations on ${t.table} (delete${t.activeColumn ? `, ${t.activeColumn} true->false` : ''})`, side: 'blue', sql: captureDdl(t).join(';\n') });
    }
    // Every write, not only revocations: the change stream's publication (the slot comes with the snapshot).
    if (ctx.config.raw.stream.enabled) actions.push(await publicationAction(ctx));
    return actions;
  },
  async summarize(ctx) {
    const { rows } = await query<{ started_at: Date; start_lsn: string }>(ctx.blue, 'SELECT started_at, start_lsn::text FROM bluegreen.capture');
    return { tables: ctx.config.captureTables.length, startedAt: rows[0]?.started_at, startLsn: rows[0]?.start_lsn };
  },
  async verify(ctx) {
    const { rows } = await query<{ n: string }>(ctx.blue, `SELECT count(*) AS n FROM pg_trigger WHERE tgname = $1`, [CAPTURE_TRIGGERS.delete]);
    if (Number(rows[0]?.n) < ctx.config.captureTables.length) throw new StateError('capture triggers are missing on blue after install', 'check that no other tool drops triggers on blue, then rerun with --resume');
  },
  async rollback(ctx) {
    const actions = await captureRollbackActions(ctx.blue);
    await runSqlActions(ctx.blue, 'blue', actions);
    return { removed: actions.map((a) => String(a.facts?.object)) };
  },
} satisfies Step;
