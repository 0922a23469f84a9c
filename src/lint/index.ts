// One entry point for `migrate lint` and `migrate plan`: parse every migration once, run the lock
// rules on each, and the SELECT * check against the application's queries when a file is given.

import fs from 'node:fs';
import path from 'node:path';
import { configSchema } from '../config/schema.ts';
import { SourceError } from '../errors.ts';
import { checkAll } from '../sources/check.ts';
import { DISABLE_TRANSACTION } from '../sources/postgres-migrations.ts';
import type { Migration } from '../sources/types.ts';
import { parseMigration, type ParsedFile } from './parse.ts';
import { lintFile, type Finding } from './rules.ts';
import { changedTables, selectStarFindings } from './select-star.ts';

/** Lint options. */
export interface LintOptions {
  /** Rule ids not to report. */
  ignore?: readonly string[];
  /** The application's queries file, for the SELECT * check. */
  queriesFile?: string;
  /** Rows per backfill batch shown in rewrites (`inPlace.backfillBatchRows`; default: the config's default). */
  batchRows?: number;
}

/** The config's default `inPlace.backfillBatchRows`, for `migrate lint FILE...` without a config. */
export const DEFAULT_BATCH_ROWS: number = configSchema.shape.inPlace.parse(undefined).backfillBatchRows;

/** Lint result: every finding, and the parsed files (for the pre-flight and the rewriter). */
export interface LintReport {
  /** Findings in file order. */
  findings: Finding[];
  /** Parsed migrations. */
  files: ParsedFile[];
}

/** Lints migrations (syntax errors are reported first, all at once, as SQLSTATE 42601). */
export async function lintMigrations(ms: readonly Migration[], opts: LintOptions = {}): Promise<LintReport> {
  await checkAll([...ms]);
  const files: ParsedFile[] = [];
  for (const m of ms) files.push(await parseMigration(m));
  const findings = files.flatMap((pf) => lintFile(pf, { ignore: opts.ignore ?? [], batchRows: opts.batchRows ?? DEFAULT_BATCH_ROWS }));
  if (opts.queriesFile && !(opts.ignore ?? []).includes('select-star')) {
    let text: string;
    try {
      text = fs.readFileSync(opts.queriesFile, 'utf8');
    } catch (err) {
      throw new SourceError(`cannot read the queries file ${opts.queriesFile} (${(err as NodeJS.ErrnoException).code ?? String(err)})`, 'check --queries or lint.queriesFile');
    }
    findings.push(...(await selectStarFindings(opts.queriesFile, text, changedTables(files))));
  }
  return { findings, files };
}

/** A lone migration file as the sources would see it: pop `.autocommit` and postgres-migrations' marker run outside a transaction. */
export function migrationFromFile(file: string): Migration {
  const abs = path.resolve(file);
  let sql: string;
  try {
    sql = fs.readFileSync(abs, 'utf8');
  } catch (err) {
    throw new SourceError(`cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)})`, 'pass existing migration files to `migrate lint`');
  }
  const base = path.basename(abs);
  const outside = /\.autocommit\.up\.sql$/.test(base) || sql.includes(DISABLE_TRANSACTION);
  const pop = /^\d{20}_/.test(base);
  return { id: base, name: base, file: abs, sql, transaction: outside ? 'none' : pop ? 'serializable' : 'default' };
}

/** Findings as text lines: `file:line [rule] why`, the statement, and the safe rewrite. */
export function findingLines(findings: readonly Finding[], root = process.cwd()): string[] {
  return findings.flatMap((f) => [
    `${path.relative(root, f.file) || f.file}:${f.line} [${f.rule}] ${f.why}`,
    `    ${f.statement}`,
    `    safe: ${f.rewrite}`,
  ]);
}
