// Cleanup: years-old dirty rows make the new migrations fail (orphans under a re-added foreign
// key, text that will not cast, duplicates a merge cannot hold). Find them with one query per rule,
// move them and their dependents to quarantine, and validate the foreign keys the copy left NOT VALID.

import { parseSync } from 'libpg-query';
import type pg from 'pg';
import { checkSqlFragment, SHAPE_HINT } from '../config/sql-fragment.ts';
import type { CleanupRule } from '../config/schema.ts';
import { listForeignKeys, listTables, type ForeignKey, type TableInfo } from '../db/catalog.ts';
import { query, toPostgresError, type Db } from '../db/connect.ts';
import { readMarker } from '../db/green.ts';
import { moveStatements, QUARANTINE_SCHEMA, QUARANTINE_SETUP_SQL, rewriteStatements, runRuleStatements, withEphemeralHelpers, type MoveStep, type RuleStatement } from '../db/quarantine.ts';
import { ident, qualified, tableKey, type TableRef } from '../db/sql.ts';
import { accessChanges, type AccessChange } from '../engines/access.ts';
import { explainChoices, tieBreakOrder, type TieChoice } from '../engines/tie-break.ts';
import type { ColumnRewrite, EngineCleanupRule, NullRewrite, TieBreak } from '../engines/types.ts';
import { ConfigError, FindingsError, StateError, type ConfigIssue } from '../errors.ts';
import { derivedRules, excludingEarlier } from '../lint/preflight.ts';
import { findNodes, tableOf } from '../lint/parse.ts';
import type { Action, Step, StepContext, StepInputs } from './step.ts';

/** A rule ready to evaluate: its name and the move it starts. */
export interface ResolvedRule extends MoveStep {
  /** Rule name (configured, `fk-orphans:<constraint>`, or `null-dangling:<constraint>`). */
  name: string;
  /** Set when the rule resolves duplicates: which row of a group stays (the engine's declaration). */
  tieBreak?: TieBreak;
  /**
   * Set when the rows stay and values are rewritten instead (each old value recorded for restore):
   * a dangling reference set to NULL as the engine's migration does, or a value made convertible.
   */
  rewrite?: { key: string[]; columns: ColumnRewrite[]; says: string };
}

/** A rule that does not apply to this database: a table it reads does not exist (yet). */
export interface SkippedRule {
  /** Rule name. */
  name: string;
  /** Why, for the plan and progress. */
  why: string;
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

/** Tables a rule reads: its own and every table its `where` names (unqualified: public). */
function tablesRead(rule: CleanupRule): string[] {
  const tree = parseSync(`SELECT 1 FROM bluegreen_check t WHERE ${rule.where}`);
  const named = findNodes(tree, 'RangeVar').map(tableOf).filter((t) => t.name !== 'bluegreen_check').map(tableKey);
  return [...new Set([rule.table, ...named])];
}

/**
 * A configured rule as it applies to this database. An engine rule (not one from the file) that
 * reads a table `tables` lacks is skipped, with why; an engine rewrite keeps only the columns the
 * table has (one declaration serves every release of the old version) and needs a primary key to
 * restore by.
 */
function applicableRule(ctx: StepContext, index: number, tables: ReadonlyMap<string, TableInfo>): { rule: EngineCleanupRule } | { skip: SkippedRule } {
  const fromEngine = ctx.config.cleanupRules.length - ctx.config.raw.cleanup.rules.length;
  const rule = ctx.config.cleanupRules[index]!;
  if (index >= fromEngine) return { rule };
  const engine = ctx.config.engine;
  const missing = tablesRead(rule).filter((t) => !tables.has(t));
  if (missing.length) return { skip: { name: rule.name, why: `${missing.join(', ')} ${missing.length > 1 ? 'do' : 'does'} not exist here (yet); the ${engine.name} rule is for its ${engine.versions ?? ''} tables` } };
  if (!rule.rewrite) return { rule };
  const table = tables.get(rule.table)!;
  const columns = rule.rewrite.columns.filter((c) => table.columns.includes(c.column));
  if (!columns.length) return { skip: { name: rule.name, why: `${rule.table} has none of the columns ${rule.rewrite.columns.map((c) => c.column).join(', ')}` } };
  if (!table.primaryKey.length) return { skip: { name: rule.name, why: `${rule.table} has no primary key to restore rewritten values by` } };
  return { rule: { ...rule, where: columns.map((c) => `(${c.where})`).join(' OR '), rewrite: { ...rule.rewrite, columns } } };
}

/**
 * A foreign key whose dangling rows the engine's migration keeps with the reference set to NULL
 * becomes a rewrite rule (when the column is nullable and the table has a primary key to restore by).
 */
function rewriteOf(fk: ForeignKey, rewrites: readonly NullRewrite[], tables: ReadonlyMap<string, TableInfo>, nullable: ReadonlySet<string>): ResolvedRule | null {
  const [column] = fk.childColumns;
  const rw = rewrites.find((r) => r.table === tableKey(fk.child) && r.column === column);
  const key = tables.get(tableKey(fk.child))?.primaryKey ?? [];
  if (!rw || !column || fk.childColumns.length !== 1 || !nullable.has(`${tableKey(fk.child)}.${column}`) || !key.length) return null;
  const orphans = foreignKeyRules([fk])[0]!;
  const rewrite = { key, columns: [{ column, where: orphans.where, set: 'NULL' }], says: 'set to NULL' };
  return { ...orphans, name: `null-dangling:${fk.name}`, reason: `${orphans.reason}; ${rw.reason}`, rewrite };
}

async function nullableColumns(db: Db, rewrites: readonly NullRewrite[]): Promise<Set<string>> {
  if (!rewrites.length) return new Set();
  const { rows } = await query<{ col: string }>(
    db,
    `SELECT n.nspname || '.' || c.relname || '.' || a.attname AS col FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE a.attnum > 0 AND NOT a.attisdropped AND NOT a.attnotnull AND (n.nspname || '.' || c.relname || '.' || a.attname) = ANY ($1::text[])`,
    [rewrites.map((r) => `${r.table}.${r.column}`)],
  );
  return new Set(rows.map((r) => r.col));
}

/**
 * Configured rules first (the engine's, then the file's: they remove whole objects with
 * dependents), then foreign-key orphans (or, where the engine's migration sets a dangling reference
 * to NULL, a rewrite in their place), then the constraints the pending migrations' DDL adds
 * (src/lint/constraints.ts). A DDL-derived rule leaves out rows an earlier rule on the same table
 * already takes, so no row class is listed twice. An engine rule whose tables do not exist on `db`
 * (a version pair this database is not at, e.g. an empty database the migrations will fill) is
 * skipped and said so; a rule from the file never is (a typo must not pass silently).
 */
export async function resolveRuleSet(ctx: StepContext, db: Db): Promise<{ rules: ResolvedRule[]; skipped: SkippedRule[] }> {
  // Every evaluation starts here (plan, in-place pre-flight, the moves on green), so a rule that
  // slipped past validate (in place has no cleanup step) is still refused before it runs.
  const unsafe = await unsafeRules(ctx, db);
  if (unsafe.length) throw new ConfigError(ctx.config.file, unsafe.map((u) => u.issue), RULE_HINT);
  const tables = new Map((await listTables(db)).map((t) => [tableKey(t), t]));
  const skipped: SkippedRule[] = [];
  const configured: ResolvedRule[] = [];
  for (const i of ctx.config.cleanupRules.keys()) {
    const here = applicableRule(ctx, i, tables);
    if ('skip' in here) {
      skipped.push(here.skip);
      continue;
    }
    const r = here.rule;
    const rewrite = r.rewrite ? { rewrite: { key: tables.get(r.table)!.primaryKey, columns: [...r.rewrite.columns], says: r.rewrite.says } } : {};
    configured.push({ name: r.name, table: splitTable(r.table), where: r.where, reason: r.reason, ...(r.tieBreak ? { tieBreak: r.tieBreak } : {}), ...(r.detach ? { detach: r.detach } : {}), ...rewrite });
  }
  const rewrites = ctx.config.engine.rewrites;
  const nullable = await nullableColumns(db, rewrites);
  const fkRules = (await listForeignKeys(db)).map((fk) => rewriteOf(fk, rewrites, tables, nullable) ?? foreignKeyRules([fk])[0]!);
  const earlier = [...configured, ...fkRules];
  return { rules: [...earlier, ...excludingEarlier(earlier, await derivedRules(ctx, db))], skipped };
}

/** The rules of {@link resolveRuleSet}; skipped ones are said on the progress line. */
export async function resolveRules(ctx: StepContext, db: Db): Promise<ResolvedRule[]> {
  const { rules, skipped } = await resolveRuleSet(ctx, db);
  for (const s of skipped) ctx.progress(`cleanup rule ${s.name} skipped: ${s.why}`);
  return rules;
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

/** The choice a tie-break rule makes, for the plan: the order in words and, for each sampled row (up to five), which row of its group stays. */
async function tieBreakFacts(db: Db, table: TableRef, tb: TieBreak, sample: readonly Record<string, unknown>[]): Promise<{ order: string; choices: TieChoice[]; sentence: string }> {
  const keys = sample.map((k) => k[tb.keyColumn]).filter((k) => k !== undefined && k !== null).map(String);
  const choices = await explainChoices(db, table, tb, keys);
  const order = tieBreakOrder(tb);
  const said = choices.length ? `: ${choices.map((c) => c.sentence).join('; ')}` : '';
  return { order, choices, sentence: `per ${tb.groupNoun} it keeps the ${tb.noun} that grants access (${order})${said}` };
}

/**
 * How a rule's action runs. Its statements are made now, from the catalog plan reads (blue and green
 * have the same schema until migrate), and are its `sql`; `execute` runs exactly them on green in one
 * transaction. The run id is not in their text: they read it from a setting `execute` sets
 * (RUN_ID_SETTING in src/db/quarantine.ts), so `plan --json`, before any run exists, prints what the
 * journal records. A detach the engine declared that cannot be recorded fails the rule when it runs.
 */
function ruleRun(rule: ResolvedRule, fks: readonly ForeignKey[], pk: ReadonlyMap<string, string[]>): Pick<Action, 'sql' | 'execute'> {
  let statements: RuleStatement[];
  try {
    statements = rule.rewrite ? rewriteStatements(rule.name, { ...rule, columns: rule.rewrite.columns, key: rule.rewrite.key }) : moveStatements(rule.name, rule, fks, pk);
  } catch (err) {
    if (!(err instanceof StateError)) throw err;
    return {
      execute: async () => {
        throw err;
      },
    };
  }
  return {
    sql: statements.map((s) => s.sql).join(';\n'),
    execute: async ({ ctx, lane }) => {
      const runId = ctx.journal!.runId;
      if (rule.rewrite) {
        const { rewritten } = await runRuleStatements(lane.green, runId, statements);
        ctx.progress(`${rule.name}: ${rewritten} value(s) ${rule.rewrite.says}, rows kept`);
        return { rewritten };
      }
      // What the move takes away is counted on green just before it, so the report says what users lost.
      const access = await accessChanges(lane.green, rule, fks, ctx.config.engine.accessCarriers, pk);
      const { moved } = await runRuleStatements(lane.green, runId, statements);
      ctx.progress(`${rule.name}: ${Object.values(moved).reduce((a, b) => a + b, 0)} row(s) quarantined`);
      return { moved, access };
    },
  };
}

/** The cleanup step. */
export const cleanup = {
  name: 'cleanup',
  purpose: 'move rows the new constraints would reject (and their dependents) to quarantine',
  async validate(ctx) {
    // A rule with broken or unsafe SQL must fail before anything is written: each configured rule is
    // checked against blue's catalog and EXPLAINed there, read-only, and nothing stays behind.
    const issues: ConfigIssue[] = [];
    const tables = new Map((await listTables(ctx.blue)).map((t) => [tableKey(t), t]));
    await withEphemeralHelpers(ctx.blue, async () => {
      const unsafe = await unsafeRules(ctx, ctx.blue);
      issues.push(...unsafe.map((u) => u.issue));
      for (const i of ctx.config.cleanupRules.keys()) {
        const here = applicableRule(ctx, i, tables);
        if (unsafe.some((u) => u.index === i) || 'skip' in here) continue;
        const r = here.rule;
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
    const fks = await listForeignKeys(db);
    const evaluate = async (): Promise<Action[]> => {
      const { rules, skipped } = await resolveRuleSet(ctx, db);
      const actions: Action[] = skipped.map((s) => ({ id: `skip:${s.name}`, sentence: `skip rule ${s.name}: ${s.why}`, side: 'none', facts: { skipped: s.why }, execute: async () => ({ skipped: s.why }) }));
      for (const rule of rules) {
        const found = await countRule(db, rule, pk.get(tableKey(rule.table)) ?? []);
        if (!found.rows) continue;
        const facts = { table: tableKey(rule.table), rows: found.rows, sample: found.sample, countedOn: side };
        if (rule.rewrite) {
          const columns = rule.rewrite.columns.map((c) => c.column);
          const sentence = `keep ${found.rows} ${tableKey(rule.table)} row(s) with ${columns.join(', ')} ${rule.rewrite.says} where needed (old values recorded for \`quarantine restore\`): ${rule.reason}`;
          actions.push({ id: `rule:${rule.name}`, sentence, side: 'green', facts: { ...facts, rewrite: columns.join(', ') }, ...ruleRun(rule, fks, pk) });
          continue;
        }
        const access = await accessChanges(db, rule, fks, ctx.config.engine.accessCarriers, pk);
        const choice = rule.tieBreak ? await tieBreakFacts(db, rule.table, rule.tieBreak, found.sample) : null;
        actions.push({
          id: `rule:${rule.name}`,
          sentence: `quarantine ${found.rows} ${tableKey(rule.table)} row(s) and their dependents: ${rule.reason}${choice ? `; ${choice.sentence}` : ''}`,
          side: 'green',
          facts: { ...facts, accessChanges: access, ...(choice ? { tieBreak: choice.order, choices: choice.choices } : {}) },
          ...ruleRun(rule, fks, pk),
        });
      }
      return actions;
    };
    // Rules may call our helpers (is_json); they are installed for the count and rolled back.
    const actions = await withEphemeralHelpers(db, evaluate);
    return [
      { id: 'quarantine-schema', sentence: `install the quarantine schema ${QUARANTINE_SCHEMA} on green (idempotent): moved rows and rewritten values are kept there`, side: 'green', sql: QUARANTINE_SETUP_SQL },
      ...actions,
      {
        id: 'validate-foreign-keys',
        sentence: 'VALIDATE the foreign keys the copy left NOT VALID',
        side: 'green',
        // Which keys are NOT VALID is known only on green after the copy (plan may read blue): listed as it runs.
        execute: async ({ lane }) => {
          const names: string[] = [];
          for (const fk of (await listForeignKeys(lane.green)).filter((f) => !f.validated)) {
            await query(lane.green, `ALTER TABLE ${qualified(fk.child.schema, fk.child.name)} VALIDATE CONSTRAINT ${ident(fk.name)}`, [], { side: 'green' });
            names.push(fk.name);
          }
          return { validated: names };
        },
      },
    ];
  },
  async summarize(_ctx, details) {
    const byRule: Record<string, number> = {};
    const rewritten: Record<string, number> = {};
    const lost: AccessChange[] = [];
    for (const [id, d] of details) {
      if (!id.startsWith('rule:')) continue;
      const name = id.slice('rule:'.length);
      if (d.rewritten !== undefined) rewritten[name] = Number(d.rewritten);
      if (d.moved) byRule[name] = Object.values(d.moved as Record<string, number>).reduce((a, b) => a + b, 0);
      lost.push(...((d.access as AccessChange[] | undefined) ?? []));
    }
    const quarantined = Object.values(byRule).reduce((a, b) => a + b, 0);
    return { quarantined, byRule, rewritten, accessChanges: lost, validatedForeignKeys: details.get('validate-foreign-keys')?.validated ?? [] };
  },
  async inputs(ctx): Promise<StepInputs> {
    // Resolved on blue, where the copy started: green's catalog and pending set change as migrations
    // run. A new or changed rule runs again on resume (it only moves more rows), then the FK check.
    // A DDL-derived rule is stamped with its own predicate: the exclusion of rows a new earlier rule
    // takes only narrows it, and re-judging it on a half-migrated green would be meaningless.
    const rules = await resolveRules(ctx, ctx.blue);
    const own = new Map((await derivedRules(ctx, ctx.blue)).map((r) => [r.name, r.where]));
    return {
      units: new Map(rules.map((r) => {
        const where = own.get(r.name) ?? r.where;
        return [`rule:${r.name}`, { value: { table: tableKey(r.table), where, tieBreak: r.tieBreak, rewrite: r.rewrite }, summary: `${tableKey(r.table)} WHERE ${where}`, whenChanged: 'rerun' as const }];
      })),
      dependents: ['validate-foreign-keys'],
      whenAdded: 'run',
      whenRemoved: 'keep',
      reopenable: async () => {
        const tables = [...new Set(ctx.config.raw.cleanup.rules.map((r) => r.table))];
        const { rows } = await query<{ t: string }>(ctx.green, `SELECT t FROM unnest($1::text[]) t WHERE to_regclass(t) IS NULL`, [tables]);
        return rows.length ? `the migrations already run on green dropped ${rows.map((r) => r.t).join(', ')}, which configured rules read` : null;
      },
    };
  },
  async verify(ctx) {
    const invalid = (await listForeignKeys(ctx.green)).filter((f) => !f.validated);
    if (invalid.length) {
      throw new FindingsError(`foreign keys still NOT VALID on green: ${invalid.map((f) => f.name).join(', ')}`, 'add a cleanup rule for the violating rows and rerun with --resume');
    }
  },
} satisfies Step;
