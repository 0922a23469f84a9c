// Capture: before anything is copied, record every access-removing write on blue in an outbox, so
// nothing revoked during the window can fall between the snapshot and the cutover. Replay is
// idempotent, so events that the snapshot already contains are harmless.

import fs from 'node:fs';
import type { CaptureTable } from '../config/schema.ts';
import { query, withTransaction, type Db } from '../db/connect.ts';
import { ident, literal } from '../db/sql.ts';
import { ConfigError, StateError, type ConfigIssue } from '../errors.ts';
import { unitOnce, type Action, type Step } from './step.ts';

const CAPTURE_SQL = fs.readFileSync(new URL('../../sql/state/capture.sql', import.meta.url), 'utf8');

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
    const actions: Action[] = [{ id: 'outbox', sentence: 'install the outbox function and record the capture start (time, WAL LSN)', side: 'blue', sql: CAPTURE_SQL.trim() }];
    for (const t of ctx.config.captureTables) {
      actions.push({ id: `trigger:${t.table}`, sentence: `capture ${t.kind} revocations on ${t.table} (delete${t.activeColumn ? `, ${t.activeColumn} true->false` : ''})`, side: 'blue', sql: captureDdl(t).join(';\n') });
    }
    return actions;
  },
  async run(ctx, actions) {
    const done = await ctx.journal!.done('capture');
    for (const action of actions) {
      await unitOnce(ctx, 'capture', action.id, async () => {
        await withTransaction(ctx.blue, async () => {
          await query(ctx.blue, action.sql!, [], { side: 'blue', sql: action.sql! });
          if (action.id === 'outbox') await query(ctx.blue, 'INSERT INTO bluegreen.capture DEFAULT VALUES ON CONFLICT (capture_id) DO NOTHING');
        });
        return {};
      }, done);
    }
    const { rows } = await query<{ started_at: Date; start_lsn: string }>(ctx.blue, 'SELECT started_at, start_lsn::text FROM bluegreen.capture');
    return { tables: ctx.config.captureTables.length, startedAt: rows[0]?.started_at, startLsn: rows[0]?.start_lsn };
  },
  async verify(ctx) {
    const { rows } = await query<{ n: string }>(ctx.blue, `SELECT count(*) AS n FROM pg_trigger WHERE tgname = $1`, [CAPTURE_TRIGGERS.delete]);
    if (Number(rows[0]?.n) < ctx.config.captureTables.length) throw new StateError('capture triggers are missing on blue after install', 'check that no other tool drops triggers on blue, then rerun with --resume');
  },
} satisfies Step;
