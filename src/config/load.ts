// Reads the config file, checks it, resolves `env:NAME` secrets, and fills profile defaults.
// Nothing here touches a database: a bad config must fail before any connection is opened, with
// every problem (schema, unset variables, missing folders, unsafe SQL) reported in one round.

import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, type ConfigIssue } from '../errors.ts';
import { configSchema, type CaptureTable, type Config } from './schema.ts';
import { resolveEngine, type ResolvedEngine } from '../engines/index.ts';
import type { EngineCleanupRule } from '../engines/types.ts';
import { checkSqlFragment, SHAPE_HINT, type SqlShape } from './sql-fragment.ts';

/** A checked config with secrets resolved; `secrets` lists values that must never be printed. */
export interface ResolvedConfig {
  /** Absolute path of the file it came from. */
  file: string;
  /** The checked config as written. */
  raw: Config;
  /** Blue DSN, resolved. */
  blueDsn: string;
  /** Green DSN, resolved. */
  greenDsn: string;
  /** Migrations directory resolved against the config file's folder (when the source has one). */
  migrationsDir: string | null;
  /** Cleanup rules: the engine's (with their tie-breaks) then configured ones. */
  cleanupRules: EngineCleanupRule[];
  /** Capture tables: configured, or the profile's. */
  captureTables: CaptureTable[];
  /** Values to strip from any output. */
  secrets: string[];
  /** The engine named by `profile` (src/engines), resolved once. */
  engine: ResolvedEngine;
}

/** Loads and checks `file`; throws ConfigError listing every problem. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): ResolvedConfig {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = fs.readFileSync(abs, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(abs, [{ path: '', message: code === 'ENOENT' ? 'file not found' : `cannot read (${code})` }], `pass --config pointing at your config file (see README: Config)`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(abs, [{ path: '', message: `not valid JSON: ${(err as Error).message}` }]);
  }
  return resolveConfig(json, abs, env);
}

/** Checks an already-parsed config object (used by `demo` and tests). */
export function resolveConfig(json: unknown, file: string, env: NodeJS.ProcessEnv = process.env): ResolvedConfig {
  const parsed = configSchema.safeParse(json);
  // Everything below reads the raw JSON, so one round reports schema errors, unset variables,
  // missing folders and unsafe SQL together, even when zod has already refused the file.
  const issues: ConfigIssue[] = parsed.success ? [] : parsed.error.issues.map(issueOf);
  const secrets: string[] = [];
  const values = resolveEnvRefs(json, env, issues, secrets);
  const dsnOf = (side: 'blue' | 'green'): string => {
    const written = at(json, [side, 'dsn']);
    if (typeof written !== 'string') return '';
    if (!ENV_REF.test(written)) return written;
    const resolved = values.get(`${side}.dsn`) ?? '';
    if (resolved && !isUrl(resolved)) issues.push({ path: `${side}.dsn`, message: `environment variable ${written.slice(4)} does not hold a postgres:// URL` });
    return resolved;
  };
  const blueDsn = dsnOf('blue');
  const greenDsn = dsnOf('green');
  if (blueDsn && blueDsn === greenDsn) issues.push({ path: 'green.dsn', message: 'green must be a different database from blue' });
  const migrationsDir = checkMigrationsDir(json, file, issues);
  issues.push(...sqlIssues(json));
  if (!parsed.success || issues.length) {
    const unset = issues.some((i) => i.message.startsWith('environment variable'));
    throw new ConfigError(file, issues, unset ? `export the named environment variables and fix the listed keys in ${file}, then run the command again` : undefined);
  }

  const raw = parsed.data;
  const engine = resolveEngine(raw.profile, raw.replay.profile);
  return {
    file,
    raw,
    blueDsn,
    greenDsn,
    migrationsDir,
    cleanupRules: [...engine.cleanupRules.map((r) => ({ ...r })), ...raw.cleanup.rules],
    captureTables: raw.capture.tables ?? [...engine.capture.blue],
    secrets,
    engine,
  };
}

const ENV_REF = /^env:[A-Za-z_][A-Za-z0-9_]*$/;

/** The value at `keys` inside raw JSON, or undefined. */
function at(json: unknown, keys: readonly (string | number)[]): unknown {
  let node = json;
  for (const k of keys) {
    if (!node || typeof node !== 'object') return undefined;
    node = (node as Record<string | number, unknown>)[k];
  }
  return node;
}

function isUrl(value: string): boolean {
  try {
    new URL(value);
    return true;
  } catch {
    return false;
  }
}

/**
 * Every `env:NAME` string anywhere in the file (targets, lever, probes, queue, ...), found by walking
 * the JSON rather than a list of paths that would miss the next section someone adds. Unset or empty
 * is an issue at its dotted path; a set value is returned by path and remembered for redaction.
 */
function resolveEnvRefs(json: unknown, env: NodeJS.ProcessEnv, issues: ConfigIssue[], secrets: string[]): Map<string, string> {
  const values = new Map<string, string>();
  const visit = (node: unknown, path: string): void => {
    if (typeof node === 'string') {
      if (!ENV_REF.test(node)) return;
      const name = node.slice(4);
      const value = env[name];
      if (!value) return void issues.push({ path, message: `environment variable ${name} is ${value === undefined ? 'not set' : 'empty'}; export it before running migrate` });
      values.set(path, value);
      secrets.push(...secretsIn(value));
    } else if (Array.isArray(node)) {
      node.forEach((v, i) => visit(v, path ? `${path}.${i}` : String(i)));
    } else if (node && typeof node === 'object') {
      for (const [k, v] of Object.entries(node)) visit(v, path ? `${path}.${k}` : k);
    }
  };
  visit(json, '');
  return values;
}

/** What of an environment value must never be printed: a URL's password (its host may be shown), else the whole value (a token or key). */
function secretsIn(value: string): string[] {
  try {
    const password = new URL(value).password;
    return password ? [decodeURIComponent(password)] : [];
  } catch {
    return [value];
  }
}

/** The migrations folder resolved against the config file's folder; an issue when it is missing. */
function checkMigrationsDir(json: unknown, file: string, issues: ConfigIssue[]): string | null {
  const kind = at(json, ['migrations', 'kind']);
  const dir = at(json, ['migrations', 'dir']);
  if (kind === 'command' || typeof dir !== 'string' || dir === '') return null;
  const abs = path.resolve(path.dirname(file), dir);
  if (!fs.existsSync(abs) || !fs.statSync(abs).isDirectory()) issues.push({ path: 'migrations.dir', message: `folder ${abs} does not exist` });
  return abs;
}

/** SQL the config contributes to read-only queries, checked with the real parser (src/config/sql-fragment.ts). */
function sqlIssues(json: unknown): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  const check = (value: unknown, where: string, shape: SqlShape, what: string): void => {
    if (typeof value !== 'string' || value.trim() === '') return;
    const verdict = checkSqlFragment(value, shape);
    if (!verdict.ok) out.push({ path: where, message: `${what} ${verdict.problem}; ${SHAPE_HINT[shape]}` });
  };
  const list = (keys: readonly (string | number)[]): unknown[] => {
    const v = at(json, keys);
    return Array.isArray(v) ? v : [];
  };
  list(['cleanup', 'rules']).forEach((r, i) => check(at(r, ['where']), `cleanup.rules.${i}.where`, 'predicate', `cleanup rule ${JSON.stringify(at(r, ['name']) ?? i)}: where`));
  list(['invariants']).forEach((inv, i) => {
    const name = JSON.stringify(at(inv, ['name']) ?? i);
    for (const side of ['blue', 'green']) check(at(inv, [side]), `invariants.${i}.${side}`, 'query', `invariant ${name}: the ${side} query`);
    list(['invariants', i, 'quarantine']).forEach((q, k) => check(at(q, ['key']), `invariants.${i}.quarantine.${k}.key`, 'expression', `invariant ${name}: quarantine key`));
    list(['invariants', i, 'removedOnGreen']).forEach((q, k) => check(at(q, ['key']), `invariants.${i}.removedOnGreen.${k}.key`, 'expression', `invariant ${name}: removedOnGreen key`));
  });
  list(['watch', 'probes']).forEach((p, i) => {
    if (at(p, ['kind']) === 'sql') check(at(p, ['sql']), `watch.probes.${i}.sql`, 'query', `watch probe ${JSON.stringify(at(p, ['name']) ?? i)}: sql`);
  });
  return out;
}

function issueOf(issue: { path: PropertyKey[]; message: string; code: string; keys?: string[] }): ConfigIssue {
  const where = issue.path.map(String).join('.');
  if (issue.code === 'unrecognized_keys' && issue.keys) {
    return { path: where, message: `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')} (check the spelling; see migrate.schema.json)` };
  }
  return { path: where, message: issue.message };
}
