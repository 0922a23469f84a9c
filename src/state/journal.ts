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
  /** 'bluegreen' for a real run, 'rehearsal' for `apply --dry-run` (see RUN_MODE). */
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

/**
 * Takes the run lock for `command` (session-level, held until the connection closes) or fails at once
 * with LockHeldError (exit 3) naming the holder (advisory locks are per database: the holder is looked
 * up in blue's database only, never a run against another database on the same server). The session is renamed `migrate <command>` first, so
 * the next command refused can say who holds it.
 */
export async function acquireRunLock(blue: Db, command = 'apply'): Promise<void> {
  const { rows } = await query<{ ok: boolean }>(blue, `SELECT set_config('application_name', $3, false) IS NOT NULL AND pg_try_advisory_lock($1, $2) AS ok`, [...LOCK_KEY, `migrate ${command}`]);
  if (rows[0]?.ok) return;
  const holder = await query<{ pid: number; application: string; since: string | null; client: string | null }>(
    blue,
    `SELECT l.pid, coalesce(a.application_name, '') AS application, to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS since, host(a.client_addr) AS client
       FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 2 AND l.granted
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) LIMIT 1`,
    [...LOCK_KEY],
  );
  throw new LockHeldError(command, holder.rows[0] ?? null);
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

/** Values of bluegreen.run.mode: a real blue-green run, or a rehearsal started by `apply --dry-run`. */
export const RUN_MODE = { real: 'bluegreen', rehearsal: 'rehearsal' } as const;

/** Which runs a lookup may return: real runs (the ones to cut over, resume, show), rehearsals, or either. */
export type RunKind = 'real' | 'rehearsal' | 'any';

/** True when the run was started by `apply --dry-run`: it is never cut over and never the run `status` shows. */
export function isRehearsal(run: Pick<RunRow, 'mode'>): boolean {
  return run.mode === RUN_MODE.rehearsal;
}

/**
 * The newest run of the given kind (default 'real': a rehearsal is never the run to cut over, resume
 * or show), or null when there is none (or no state schema yet).
 */
export async function latestRun(blue: Db, opts: { kind?: RunKind } = {}): Promise<RunRow | null> {
  if (!(await stateInstalled(blue))) return null;
  const kind = opts.kind ?? 'real';
  const { rows } = await query<RunRow>(
    blue,
    `SELECT * FROM bluegreen.run
      WHERE $1 = 'any' OR (mode = $2) = ($1 = 'rehearsal')
      ORDER BY started_at DESC, run_id DESC LIMIT 1`,
    [kind, RUN_MODE.rehearsal],
  );
  return rows[0] ?? null;
}

/** How `apply` wants to treat an unfinished run. */
export type ResumeMode = 'fresh' | 'resume' | 'restart';

/** What `apply` asks of openRun. */
export interface OpenRunOptions {
  /** Continue, replace or create. */
  mode: ResumeMode;
  /** Digest of the config as written. */
  configDigest: string;
  /** describeDsn of the configured green. */
  greenTarget: string;
  /** `apply --dry-run`: the run is a rehearsal (resumes only a rehearsal, is never cut over). */
  rehearsal?: boolean;
}

/**
 * Picks the run `apply` works on: continues, replaces, or creates one; refuses ambiguity. Real runs
 * and rehearsals are separate lines: `--resume` continues the newest unfinished run of its own kind.
 * A real run abandons an unfinished rehearsal (a rehearsal is disposable and has nothing to cut over);
 * a rehearsal never touches a real run.
 */
export async function openRun(blue: Db, opts: OpenRunOptions): Promise<{ run: RunRow; resumed: boolean; replaced: RunRow | null }> {
  const rehearsal = opts.rehearsal ?? false;
  const what = rehearsal ? 'rehearsal' : 'run';
  const flags = rehearsal ? 'apply --dry-run' : 'apply';
  const last = await latestRun(blue, { kind: rehearsal ? 'rehearsal' : 'real' });
  const unfinished = last && (last.status === 'running' || last.status === 'failed') ? last : null;
  if (opts.mode === 'resume') {
    if (!unfinished) throw new StateError(`there is no unfinished ${what} to resume`, `run \`migrate ${flags}\` without --resume to start a new ${what}`);
    if (unfinished.green_target !== opts.greenTarget) {
      throw new StateError(
        `${what} ${unfinished.run_id} was copying into ${unfinished.green_target}, but the config now names ${opts.greenTarget}`,
        'point green.dsn back at the original target, or pass --restart to start over',
      );
    }
    await query(blue, `UPDATE bluegreen.run SET status = 'running' WHERE run_id = $1`, [unfinished.run_id]);
    return { run: { ...unfinished, status: 'running' }, resumed: true, replaced: null };
  }
  if (unfinished && opts.mode === 'fresh') {
    throw new StateError(
      `${what} ${unfinished.run_id} is unfinished (${unfinished.status})`,
      `pass --resume to continue it (\`migrate ${flags} --resume\`), or --restart to abandon it and start over (green is rebuilt)`,
      { runId: unfinished.run_id },
    );
  }
  if (unfinished) await abandon(blue, unfinished.run_id);
  if (!rehearsal) {
    const stale = await latestRun(blue, { kind: 'rehearsal' });
    if (stale && (stale.status === 'running' || stale.status === 'failed')) await abandon(blue, stale.run_id);
  }
  const runId = newRunId();
  const { rows } = await query<RunRow>(
    blue,
    'INSERT INTO bluegreen.run (run_id, config_digest, green_target, mode) VALUES ($1, $2, $3, $4) RETURNING *',
    [runId, opts.configDigest, opts.greenTarget, rehearsal ? RUN_MODE.rehearsal : RUN_MODE.real],
  );
  return { run: rows[0]!, resumed: false, replaced: unfinished };
}

async function abandon(blue: Db, runId: string): Promise<void> {
  await query(blue, `UPDATE bluegreen.run SET status = 'abandoned', finished_at = clock_timestamp() WHERE run_id = $1`, [runId]);
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

  /** The run's own row (mode, green target, status). */
  async run(): Promise<RunRow> {
    const { rows } = await query<RunRow>(this.blue, 'SELECT * FROM bluegreen.run WHERE run_id = $1', [this.runId]);
    if (!rows[0]) throw new StateError(`run ${this.runId} is not in bluegreen.run`, '`migrate status` shows the runs blue knows');
    return rows[0];
  }

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

  /**
   * Re-opens a finished step and the named finished units of it (`--resume` after their inputs
   * changed): they are no longer done, so the runner runs them again. Their old detail
   * (stamps included) stays until they finish again.
   */
  async reopen(step: string, units: readonly string[]): Promise<void> {
    await query(
      this.blue,
      `UPDATE bluegreen.journal SET status = 'running', finished_at = NULL
        WHERE run_id = $1 AND step = $2 AND status = 'done' AND (unit = '' OR unit = ANY ($3::text[]))`,
      [this.runId, step, [...units]],
    );
  }

  /**
   * Files the rows of `steps` away as attempt `attempt` (step `cutover` becomes `cutover#1`), so the
   * steps run afresh; nothing is deleted, and `migrate status` still lists the earlier attempt.
   */
  async archive(steps: readonly string[], attempt: number): Promise<void> {
    await query(this.blue, `UPDATE bluegreen.journal SET step = step || '#' || $3 WHERE run_id = $1 AND step = ANY ($2::text[])`, [this.runId, [...steps], String(attempt)]);
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
