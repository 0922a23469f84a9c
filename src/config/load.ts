// Reads the config file, checks it, resolves `env:NAME` secrets, and fills profile defaults.
// Nothing here touches a database: a bad config must fail before any connection is opened.

import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, type ConfigIssue } from '../errors.ts';
import { configSchema, type CaptureTable, type CleanupRule, type Config } from './schema.ts';
import { profileDefaults } from './profiles.ts';

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
  /** Cleanup rules: profile defaults then configured ones. */
  cleanupRules: CleanupRule[];
  /** Capture tables: configured, or the profile's. */
  captureTables: CaptureTable[];
  /** Values to strip from any output. */
  secrets: string[];
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
  if (!parsed.success) {
    throw new ConfigError(file, parsed.error.issues.map(issueOf));
  }
  const raw = parsed.data;
  const issues: ConfigIssue[] = [];
  const secrets: string[] = [];
  const resolveDsn = (side: 'blue' | 'green'): string => {
    const value = raw[side].dsn;
    if (!value.startsWith('env:')) return value;
    const name = value.slice(4);
    const resolved = env[name];
    if (!resolved) {
      issues.push({ path: `${side}.dsn`, message: `environment variable ${name} is not set` });
      return '';
    }
    try {
      const pw = new URL(resolved).password;
      if (pw) secrets.push(decodeURIComponent(pw));
    } catch {
      issues.push({ path: `${side}.dsn`, message: `environment variable ${name} does not hold a postgres:// URL` });
    }
    return resolved;
  };
  const blueDsn = resolveDsn('blue');
  const greenDsn = resolveDsn('green');
  if (blueDsn && blueDsn === greenDsn) issues.push({ path: 'green.dsn', message: 'green must be a different database from blue' });

  const base = path.dirname(file);
  let migrationsDir: string | null = null;
  if (raw.migrations.kind !== 'command') {
    migrationsDir = path.resolve(base, raw.migrations.dir);
    if (!fs.existsSync(migrationsDir) || !fs.statSync(migrationsDir).isDirectory()) {
      issues.push({ path: 'migrations.dir', message: `folder ${migrationsDir} does not exist` });
    }
  }
  if (issues.length) throw new ConfigError(file, issues);

  const defaults = profileDefaults(raw.profile);
  return {
    file,
    raw,
    blueDsn,
    greenDsn,
    migrationsDir,
    cleanupRules: [...defaults.cleanupRules, ...raw.cleanup.rules],
    captureTables: raw.capture.tables ?? defaults.captureTables,
    secrets,
  };
}

function issueOf(issue: { path: PropertyKey[]; message: string; code: string; keys?: string[] }): ConfigIssue {
  const where = issue.path.map(String).join('.');
  if (issue.code === 'unrecognized_keys' && issue.keys) {
    return { path: where, message: `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')} (check the spelling; see migrate.schema.json)` };
  }
  return { path: where, message: issue.message };
}
