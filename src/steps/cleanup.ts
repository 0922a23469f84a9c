// Cleanup: years-old dirty rows make the new migrations fail (orphans under a re-added foreign
// key, text that will not cast, duplicates a merge cannot hold). Find them with one query per rule,
// move them and their dependents to quarantine, and validate the foreign keys the copy left NOT VALID.

import type pg from 'pg';
import { checkSqlFragment, SHAPE_HINT } from '../config/sql-fragment.ts';
import type { CleanupRule } from '../config/schema.ts';
import { listForeignKeys, listTables, type ForeignKey } from '../db/catalog.ts';
import { query, toPostgresError, type Db } from '../db/connect.ts';
import { readMarker } from '../db/green.ts';
import { installQuarantine, quarantineRule, withEphemeralHelpers, type MoveStep } from '../db/quarantine.ts';
import { ident, qualified, tableKey } from '../db/sql.ts';
import { ConfigError, FindingsError, type ConfigIssue } from '../errors.ts';
import { derivedRules, excludingEarlier } from '../lint/preflight.ts';
import { unitOnce, type Action, type Step, type StepContext } from './step.ts';

/** A rule ready to evaluate: its name and the move it starts. */
export interface ResolvedRule extends MoveStep {
  /** Rule name (configured, or `fk-orphans:<constraint>`). */
  name: string;
}

/** Rules for rows whose foreign key points nowhere (derived from the catalog, not configured). */
export function foreignKeyRules(fks: readonly ForeignKey[]): ResolvedRule[] {
  return fks.map((fk) => {
    const notNull = fk.childColumns.map((c) => `t.${ident(c)} IS NOT NULL`).join(' AND ');
    const match = fk.childColumns.map((c, i) => `p.${ident(fk.parentColumns[i] ?? c)} = t.${ident(c)}`).join(' AND ');
    return {
      name: `fk-orphans:${fk.name}`,
      table: fk.child,
      where: `${notNull} AND NOT EXISTS (SELECT 1 FROM ${qualified(fk.parent.schema, fk.parent.name)} p WHERE ${match})`,
      reason: `${tableKey(fk.child)}(${fk.childColumns.join(', ')}) points to no ${tableKey(fk.parent)} row (foreign key ${fk.name})`,
    };
  });
}

function splitTable(table: string): { schema: string; name: string } {
  const [schema = 'public', name = ''] = table.split('.');
  return { schema, name };
}

/**
 * Configured rules first (they remove whole objects with dependents), then foreign-key orphans,
 * then the constraints the pending migrations' DDL adds (src/lint/constraints.ts). A DDL-derived
 * rule leaves out rows an earlier rule on the same table already takes, so no row class is listed twice.
 */
export async function resolveRules(ctx: StepContext, db: Db): Promise<ResolvedRule[]> {
  // Every evaluation starts here (plan, in-place pre-flight, the moves on green), so a rule that
  // slipped past validate (in place has no cleanup step) is still refused before it runs.
  const unsafe = await unsafeRules(ctx, db);
  if (unsafe.length) throw new ConfigError(ctx.config.file, unsafe.map((u) => u.issue), RULE_HINT);
  const configured = ctx.config.cleanupRules.map((r) => ({ name: r.name, table: splitTable(r.table), where: r.where, reason: r.reason }));
  const earlier = [...configured, ...foreignKeyRules(await listForeignKeys(db))];
  return [...earlier, ...excludingEarlier(earlier, await derivedRules(ctx, db))];
}

/** Green once the copy is loaded, else blue (green will hold exactly blue's rows). */
async function inspected(ctx: StepContext): Promise<{ db: Db; side: 'blue' | 'green' }> {
  const marker = await readMarker(ctx.green);
  return marker?.loaded_at ? { db: ctx.green, side: 'green' } : { db: ctx.blue, side: 'blue' };
}

/**
 * Runs one statement built from rule SQL over the extended protocol, which refuses a second
 * statement outright: the config check is the first wall, this the second, read-only the third.
 */
async function ruleQuery<R extends pg.QueryResultRow>(db: Db, sql: string): Promise<pg.QueryResult<R>> {
  // queryMode is pg's own option (pg >= 8.11); @types/pg does not declare it yet.
  const extended: pg.QueryConfig & { queryMode: 'extended' } = { text: sql, values: [], queryMode: 'extended' };
  try {
    return await db.query<R>(extended);
  } catch (err) {
    throw toPostgresError(err, { sql });
  }
}

/** Counts a rule's rows and takes up to five sample keys (callers hold a read-only transaction: withEphemeralHelpers). */
export async function countRule(db: Db, rule: ResolvedRule, keyColumns: string[]): Promise<{ rows: number; sample: Record<string, unknown>[] }> {
  const from = `${qualified(rule.table.schema, rule.table.name)} t WHERE ${rule.where}`;
  const count = await ruleQuery<{ n: string }>(db, `SELECT count(*) AS n FROM ${from}`);
  const cols = keyColumns.length ? keyColumns.map((c) => `t.${ident(c)}`).join(', ') : 't.ctid::text AS ctid';
  const sample = await ruleQuery<Record<string, unknown>>(db, `SELECT ${cols} FROM ${from} ORDER BY 1 LIMIT 5`);
  return { rows: Number(count.rows[0]?.n ?? 0), sample: sample.rows };
}

// Functions a rule calls that may write or answer differently per call: volatile or set-returning
// overloads of the name, as blue resolves it (any overload counts: the check runs before planning).
const UNSAFE_FUNCTIONS = `
  SELECT p.oid::regprocedure::text AS fn, p.proretset AS retset
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE p.proname = $1 AND (p.provolatile = 'v' OR p.proretset)
     AND CASE WHEN $2::text IS NULL THEN n.nspname = ANY (current_schemas(true)) ELSE n.nspname = $2 END`;

const RULE_HINT = 'fix the rule (table name, or the SQL in `where`: one boolean expression over alias t, calling only IMMUTABLE or STABLE functions) and run again';

/** Where a configured rule sits: its path in the file, or the profile that brought it. */
function rulePath(ctx: StepContext, index: number): string {
  const fromProfile = ctx.config.cleanupRules.length - ctx.config.raw.cleanup.rules.length;
  return index < fromProfile ? `profile ${ctx.config.raw.profile} (rule ${ctx.config.cleanupRules[index]!.name})` : `cleanup.rules.${index - fromProfile}.where`;
}

/**
 * Configured rules (profile and file) that are not one safe predicate or call a volatile or
 * set-returning function as `db` resolves it; catalog reads only, so it may run anywhere.
 */
async function unsafeRules(ctx: StepContext, db: Db): Promise<{ index: number; issue: ConfigIssue }[]> {
  const out: { index: number; issue: ConfigIssue }[] = [];
  for (const [index, rule] of ctx.config.cleanupRules.entries()) {
    const problem = await functionProblem(db, rule);
    if (problem) out.push({ index, issue: { path: rulePath(ctx, index), message: `cleanup rule ${JSON.stringify(rule.name)}: ${problem}` } });
  }
  return out;
}

async function functionProblem(db: Db, rule: CleanupRule): Promise<string | null> {
  const verdict = checkSqlFragment(rule.where, 'predicate');
  if (!verdict.ok) return `where ${verdict.problem}; ${SHAPE_HINT.predicate}`;
  for (const f of verdict.functions) {
    const { rows } = await query<{ fn: string; retset: boolean }>(db, UNSAFE_FUNCTIONS, [f.name, f.schema]);
    const bad = rows[0];
    if (bad) {
      return `where calls ${bad.fn}, which is ${bad.retset ? 'set-returning' : 'VOLATILE (it may write, or answer differently on every row)'}; use only IMMUTABLE or STABLE functions that return one value`;
    }
  }
  return null;
}

/** The cleanup step. */
export const cleanup = {
  name: 'cleanup',
  purpose: 'move rows the new constraints would reject (and their dependents) to quarantine',
  async validate(ctx) {
    // A rule with broken or unsafe SQL must fail before anything is written: each configured rule is
    // checked against blue's catalog and EXPLAINed there, read-only, and nothing stays behind.
    const issues: ConfigIssue[] = [];
    await withEphemeralHelpers(ctx.blue, async () => {
      const unsafe = await unsafeRules(ctx, ctx.blue);
      issues.push(...unsafe.map((u) => u.issue));
      for (const [i, r] of ctx.config.cleanupRules.entries()) {
        if (unsafe.some((u) => u.index === i)) continue;
        const { schema, name } = splitTable(r.table);
        await ctx.blue.query('SAVEPOINT rule_check');
        try {
          await ruleQuery(ctx.blue, `EXPLAIN SELECT 1 FROM ${qualified(schema, name)} t WHERE ${r.where}`);
          await ctx.blue.query('RELEASE SAVEPOINT rule_check');
        } catch (err) {
          await ctx.blue.query('ROLLBACK TO SAVEPOINT rule_check');
          issues.push({ path: rulePath(ctx, i), message: `cleanup rule ${JSON.stringify(r.name)} does not run on blue: ${(err as Error).message}` });
        }
      }
    });
    if (issues.length) throw new ConfigError(ctx.config.file, issues, RULE_HINT);
  },
  async plan(ctx) {
    const { db, side } = await inspected(ctx);
    const pk = new Map((await listTables(db)).map((t) => [tableKey(t), t.primaryKey]));
    const evaluate = async (): Promise<Action[]> => {
      const actions: Action[] = [];
      for (const rule of await resolveRules(ctx, db)) {
        const found = await countRule(db, rule, pk.get(tableKey(rule.table)) ?? []);
        if (!found.rows) continue;
        actions.push({
          id: `rule:${rule.name}`,
          sentence: `quarantine ${found.rows} ${tableKey(rule.table)} row(s) and their dependents: ${rule.reason}`,
          side: 'green',
          sql: rule.where,
          facts: { table: tableKey(rule.table), rows: found.rows, sample: found.sample, countedOn: side },
        });
      }
      return actions;
    };
    // Rules may call our helpers (is_json); they are installed for the count and rolled back.
    const actions = await withEphemeralHelpers(db, evaluate);
    actions.push({ id: 'validate-foreign-keys', sentence: 'VALIDATE the foreign keys the copy left NOT VALID', side: 'green' });
    return actions;
  },
  async run(ctx, actions) {
    await installQuarantine(ctx.green);
    const rules = new Map((await resolveRules(ctx, ctx.green)).map((r) => [`rule:${r.name}`, r]));
    const done = await ctx.journal!.done('cleanup');
    const byReason: Record<string, number> = {};
    let total = 0;
    for (const action of actions) {
      const rule = rules.get(action.id);
      if (!rule) continue;
      const { detail } = await unitOnce(ctx, 'cleanup', action.id, async () => ({ moved: await quarantineRule(ctx.green, ctx.journal!.runId, rule.name, rule) }), done);
      const moved = Object.values(detail.moved as Record<string, number>).reduce((a, b) => a + b, 0);
      byReason[rule.name] = (byReason[rule.name] ?? 0) + moved;
      total += moved;
      ctx.progress(`${rule.name}: ${moved} row(s) quarantined`);
    }
    const validated = await unitOnce(ctx, 'cleanup', 'validate-foreign-keys', async () => {
      const names: string[] = [];
      for (const fk of (await listForeignKeys(ctx.green)).filter((f) => !f.validated)) {
        await query(ctx.green, `ALTER TABLE ${qualified(fk.child.schema, fk.child.name)} VALIDATE CONSTRAINT ${ident(fk.name)}`, [], { side: 'green' });
        names.push(fk.name);
      }
      return { validated: names };
    }, done);
    return { quarantined: total, byRule: byReason, validatedForeignKeys: validated.detail.validated };
  },
  async verify(ctx) {
    const invalid = (await listForeignKeys(ctx.green)).filter((f) => !f.validated);
    if (invalid.length) {
      throw new FindingsError(`foreign keys still NOT VALID on green: ${invalid.map((f) => f.name).join(', ')}`, 'add a cleanup rule for the violating rows and rerun with --resume');
    }
  },
} satisfies Step;
