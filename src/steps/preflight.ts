// Preflight: everything that would make a later step fail halfway is checked before anything is
// written: server versions, pg_dump against blue's major, privileges, and a green we may fill; with
// stream.enabled also what the slot and the publication need on blue (src/stream/readiness.ts).

import { binaryVersion } from '../db/binaries.ts';
import { query, type Db } from '../db/connect.ts';
import { assertGreenUsable } from '../db/green.ts';
import { OperatorError, StateError } from '../errors.ts';
import { publishedTables } from '../stream/publication.ts';
import { streamReadiness } from '../stream/readiness.ts';
import type { Action, Step, StepContext } from './step.ts';

/** One preflight check's outcome. */
export interface CheckResult {
  /** Check id. */
  id: string;
  /** Passed or not. */
  ok: boolean;
  /** What was found. */
  detail: string;
  /** What to do when it failed (or about a warning). */
  hint?: string;
  /** A finding that never fails the preflight but must be read (ok stays true). */
  warn?: boolean;
}

async function serverMajor(db: Db): Promise<{ num: number; major: number }> {
  const { rows } = await query<{ v: string }>(db, `SELECT current_setting('server_version_num') AS v`);
  const num = Number(rows[0]?.v ?? 0);
  return { num, major: Math.floor(num / 10000) };
}

async function privileges(db: Db): Promise<{ superuser: boolean; canCreate: boolean }> {
  const { rows } = await query<{ superuser: boolean; can_create: boolean }>(
    db,
    `SELECT r.rolsuper AS superuser, has_database_privilege(current_database(), 'CREATE') AS can_create FROM pg_roles r WHERE r.rolname = current_user`,
  );
  return { superuser: rows[0]?.superuser ?? false, canCreate: rows[0]?.can_create ?? false };
}

/**
 * The stream's readiness checks on blue for exactly the tables its publication will hold: those the
 * engine writes (present on blue), else every table the snapshot copies.
 */
export async function streamChecks(ctx: StepContext): Promise<CheckResult[]> {
  return streamReadiness(ctx.blue, { tables: await publishedTables(ctx) });
}

/** Runs every preflight check (read-only) and returns all results; the stream's when stream.enabled. */
export async function runChecks(ctx: StepContext): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const blue = await serverMajor(ctx.blue);
  const green = await serverMajor(ctx.green);
  results.push({ id: 'blue-version', ok: blue.major >= 12, detail: `blue runs PostgreSQL ${blue.major} (${blue.num})`, hint: 'blue must run PostgreSQL 12 or newer' });
  results.push({
    id: 'green-version',
    ok: green.major >= blue.major,
    detail: `green runs PostgreSQL ${green.major}`,
    hint: `green must run PostgreSQL ${blue.major} or newer (a copy cannot go to an older major)`,
  });
  const dump = await binaryVersion('pg_dump');
  results.push(
    dump
      ? { id: 'pg_dump', ok: dump.major >= blue.major, detail: `pg_dump ${dump.version}`, hint: `install pg_dump ${blue.major} or newer (postgresql-client-${blue.major}) and put it first on PATH` }
      : { id: 'pg_dump', ok: false, detail: 'pg_dump not found on PATH', hint: `install the PostgreSQL ${blue.major} client (Debian: apt-get install postgresql-client-${blue.major})` },
  );
  const bluePriv = await privileges(ctx.blue);
  results.push({
    id: 'blue-privileges',
    ok: bluePriv.superuser || bluePriv.canCreate,
    detail: bluePriv.superuser ? 'superuser on blue' : `CREATE on blue database: ${bluePriv.canCreate}`,
    hint: 'the blue user needs CREATE on the database (for schema bluegreen) and ownership of the captured tables (for triggers)',
  });
  const greenPriv = await privileges(ctx.green);
  results.push({
    id: 'green-privileges',
    ok: greenPriv.superuser || greenPriv.canCreate,
    detail: greenPriv.superuser ? 'superuser on green' : `CREATE on green database: ${greenPriv.canCreate}`,
    hint: 'the green user needs CREATE on the green database',
  });
  try {
    const marker = await assertGreenUsable(ctx.green);
    results.push({ id: 'green-target', ok: true, detail: marker ? `green carries the marker of run ${marker.run_id}` : 'green is empty' });
  } catch (err) {
    if (!(err instanceof OperatorError)) throw err;
    results.push({ id: 'green-target', ok: false, detail: err.message, hint: err.hint });
  }
  const { rows } = await query<{ wal_level: string }>(ctx.blue, `SELECT current_setting('wal_level') AS wal_level`);
  results.push({ id: 'wal-level', ok: true, detail: `blue wal_level=${rows[0]?.wal_level ?? '?'}` });
  if (ctx.config.raw.stream.enabled) results.push(...(await streamChecks(ctx)));
  return results;
}

/** Throws one StateError listing every failed check (warnings never fail). */
export function assertChecks(results: CheckResult[]): void {
  const failed = results.filter((r) => !r.ok);
  if (!failed.length) return;
  throw new StateError(
    `preflight failed:\n${failed.map((f) => `  - ${f.id}: ${f.detail}`).join('\n')}`,
    failed.map((f) => f.hint).filter(Boolean).join('; '),
    { checks: results },
  );
}

/** The preflight step. */
export const preflight = {
  name: 'preflight',
  purpose: 'check versions, binaries, privileges and the green target before anything is written',
  async validate(ctx) {
    assertChecks(await runChecks(ctx));
  },
  async plan(): Promise<Action[]> {
    return [
      {
        id: 'checks',
        sentence: 'check server versions, pg_dump, privileges and that green is empty or ours',
        side: 'both',
        execute: async ({ ctx }) => {
          const checks = await runChecks(ctx);
          assertChecks(checks);
          const warnings = checks.filter((c) => c.warn).map((c) => `${c.id}: ${c.detail}${c.hint ? ` (${c.hint})` : ''}`);
          for (const w of warnings) ctx.progress(w);
          return { checks: checks.map((c) => `${c.id}: ${c.detail}`), ...(warnings.length ? { warnings } : {}) };
        },
      },
    ];
  },
  async summarize(_ctx, details) {
    const detail = details.get('checks');
    return { checks: detail?.checks ?? [], ...(detail?.warnings ? { warnings: detail.warnings } : {}) };
  },
  async verify() {},
} satisfies Step;
