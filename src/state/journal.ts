// The run journal on blue (schema `bluegreen`): which run is current, which steps and units are
// done. Every step asks it first and skips finished work, so a crash then `--resume` continues
// where it stopped. One session-level advisory lock guards the whole run.

import crypto from 'node:crypto';
import fs from 'node:fs';
import { LockHeldError, StateError } from '../errors.ts';
import { query, type Db } from '../db/connect.ts';

const STATE_SQL = new URL('../../sql/state/bluegreen.sql', import.meta.url);
/** Advisory lock key pair ('bg', 1): one migrate run per blue database. */
const LOCK_KEY = [0x6267, 1] as const;

/** One row of bluegreen.run. */
export interface RunRow {
  run_id: string;
  started_at: Date;
  finished_at: Date | null;
  status: 'running' | 'done' | 'failed' | 'abandoned';
  mode: string;
  config_digest: string;
  snapshot_id: string | null;
  green_target: string;
}

/** One row of bluegreen.journal. */
export interface JournalRow {
  step: string;
  unit: string;
  started_at: Date;
  finished_at: Date | null;
  status: 'running' | 'done' | 'failed';
  detail: Record<string, unknown>;
}

/** Takes the run lock or fails at once with LockHeldError (exit 3). */
export async function acquireRunLock(blue: Db): Promise<void> {
  const { rows } = await query<{ ok: boolean }>(blue, 'SELECT pg_try_advisory_lock($1, $2) AS ok', [...LOCK_KEY]);
  if (rows[0]?.ok) return;
  const holder = await query<{ pid: number }>(
    blue,
    `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = 2 AND granted LIMIT 1`,
    [...LOCK_KEY],
  );
  throw new LockHeldError(holder.rows[0]?.pid ?? null);
}

/** True when the state schema exists on blue (read-only check). */
export async function stateInstalled(blue: Db): Promise<boolean> {
  const { rows } = await query<{ ok: boolean }>(blue, `SELECT to_regclass('bluegreen.journal') IS NOT NULL AS ok`);
  return rows[0]?.ok ?? false;
}

/** Creates or upgrades the state schema (idempotent). */
export async function installState(blue: Db): Promise<void> {
  await query(blue, fs.readFileSync(STATE_SQL, 'utf8'));
}

/** The newest run, or null when there is none (or no state schema yet). */
export async function latestRun(blue: Db): Promise<RunRow | null> {
  if (!(await stateInstalled(blue))) return null;
  const { rows } = await query<RunRow>(blue, 'SELECT * FROM bluegreen.run ORDER BY started_at DESC, run_id DESC LIMIT 1');
  return rows[0] ?? null;
}

/** How `apply` wants to treat an unfinished run. */
export type ResumeMode = 'fresh' | 'resume' | 'restart';

/** Picks the run `apply` works on: continues, replaces, or creates one; refuses ambiguity. */
export async function openRun(blue: Db, opts: { mode: ResumeMode; configDigest: string; greenTarget: string }): Promise<{ run: RunRow; resumed: boolean; replaced: RunRow | null }> {
  const last = await latestRun(blue);
  const unfinished = last && (last.status === 'running' || last.status === 'failed') ? last : null;
  if (opts.mode === 'resume') {
    if (!unfinished) throw new StateError('there is no unfinished run to resume', 'run `migrate apply` without --resume to start a new run');
    if (unfinished.green_target !== opts.greenTarget) {
      throw new StateError(
        `run ${unfinished.run_id} was copying into ${unfinished.green_target}, but the config now names ${opts.greenTarget}`,
        'point green.dsn back at the original target, or pass --restart to start over',
      );
    }
    await query(blue, `UPDATE bluegreen.run SET status = 'running' WHERE run_id = $1`, [unfinished.run_id]);
    return { run: { ...unfinished, status: 'running' }, resumed: true, replaced: null };
  }
  if (unfinished && opts.mode === 'fresh') {
    throw new StateError(
      `run ${unfinished.run_id} is unfinished (${unfinished.status})`,
      'pass --resume to continue it, or --restart to abandon it and start over (green is rebuilt)',
      { runId: unfinished.run_id },
    );
  }
  if (unfinished) await query(blue, `UPDATE bluegreen.run SET status = 'abandoned', finished_at = clock_timestamp() WHERE run_id = $1`, [unfinished.run_id]);
  const runId = newRunId();
  const { rows } = await query<RunRow>(
    blue,
    'INSERT INTO bluegreen.run (run_id, config_digest, green_target) VALUES ($1, $2, $3) RETURNING *',
    [runId, opts.configDigest, opts.greenTarget],
  );
  return { run: rows[0]!, resumed: false, replaced: unfinished };
}

function newRunId(): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${stamp}-${crypto.randomBytes(3).toString('hex')}`;
}

/** Reads and writes the journal of one run. */
export class Journal {
  constructor(
    private readonly blue: Db,
    /** The run this journal belongs to. */
    readonly runId: string,
  ) {}

  /** All journal rows of the run, oldest first. */
  async rows(): Promise<JournalRow[]> {
    const { rows } = await query<JournalRow>(this.blue, 'SELECT step, unit, started_at, finished_at, status, detail FROM bluegreen.journal WHERE run_id = $1 ORDER BY started_at, step, unit', [this.runId]);
    return rows;
  }

  /** The finished units of a step (unit '' is the step itself). */
  async done(step: string): Promise<Map<string, Record<string, unknown>>> {
    const { rows } = await query<{ unit: string; detail: Record<string, unknown> }>(
      this.blue,
      `SELECT unit, detail FROM bluegreen.journal WHERE run_id = $1 AND step = $2 AND status = 'done'`,
      [this.runId, step],
    );
    return new Map(rows.map((r) => [r.unit, r.detail]));
  }

  /** Records that a step or unit started (again). */
  async start(step: string, unit = ''): Promise<void> {
    await query(
      this.blue,
      `INSERT INTO bluegreen.journal (run_id, step, unit) VALUES ($1, $2, $3)
       ON CONFLICT (run_id, step, unit) DO UPDATE SET started_at = clock_timestamp(), finished_at = NULL, status = 'running'`,
      [this.runId, step, unit],
    );
  }

  /** Records that a step or unit finished, with its detail. */
  async finish(step: string, unit = '', detail: Record<string, unknown> = {}): Promise<void> {
    await query(
      this.blue,
      `INSERT INTO bluegreen.journal (run_id, step, unit, status, finished_at, detail) VALUES ($1, $2, $3, 'done', clock_timestamp(), $4)
       ON CONFLICT (run_id, step, unit) DO UPDATE SET status = 'done', finished_at = clock_timestamp(), detail = EXCLUDED.detail`,
      [this.runId, step, unit, JSON.stringify(detail)],
    );
  }

  /** Records that a step or unit failed. */
  async fail(step: string, unit: string, message: string): Promise<void> {
    await query(
      this.blue,
      `INSERT INTO bluegreen.journal (run_id, step, unit, status, finished_at, detail) VALUES ($1, $2, $3, 'failed', clock_timestamp(), $4)
       ON CONFLICT (run_id, step, unit) DO UPDATE SET status = 'failed', finished_at = clock_timestamp(), detail = EXCLUDED.detail`,
      [this.runId, step, unit, JSON.stringify({ error: message })],
    );
  }

  /** Updates run-level fields (snapshot id, status). */
  async updateRun(fields: { snapshot_id?: string | null; status?: RunRow['status'] }): Promise<void> {
    if (fields.snapshot_id !== undefined) await query(this.blue, 'UPDATE bluegreen.run SET snapshot_id = $2 WHERE run_id = $1', [this.runId, fields.snapshot_id]);
    if (fields.status) {
      await query(this.blue, `UPDATE bluegreen.run SET status = $2, finished_at = CASE WHEN $2 IN ('done','abandoned') THEN clock_timestamp() ELSE finished_at END WHERE run_id = $1`, [this.runId, fields.status]);
    }
  }
}
