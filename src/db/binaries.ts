// Finds the Postgres client binaries we shell out to (pg_dump) and reads their versions. Always
// argv arrays, never a shell; the DSN goes in through PG* environment variables so no password
// appears in a process listing.

import { runProcess } from '../process.ts';

/** A binary found on PATH with its major version. */
export interface BinaryInfo {
  /** Binary name as looked up. */
  name: string;
  /** Full version string, e.g. "15.18". */
  version: string;
  /** Major version number. */
  major: number;
}

/** Runs `<name> --version`; null when the binary is missing or fails. */
export async function binaryVersion(name: string): Promise<BinaryInfo | null> {
  try {
    const { stdout } = await runProcess([name, '--version'], { timeoutMs: 10_000 });
    const found = parseVersion(stdout);
    return found && { name, ...found };
  } catch {
    return null;
  }
}

/**
 * The version in a `--version` banner: after the word "version" when there is one (pgcopydb prints
 * its build platform, and "x86_64" once read as version 86), else the first dotted number.
 */
export function parseVersion(banner: string): { version: string; major: number } | null {
  const match = /\bversion\s+v?(\d+(?:\.\d+)*)/i.exec(banner) ?? /(?<![\w.])(\d+(?:\.\d+)+)/.exec(banner) ?? /(?<![\w.])(\d+)(?![\w.])/.exec(banner);
  if (!match?.[1]) return null;
  return { version: match[1], major: Number(match[1].split('.')[0]) };
}

/** PG* environment variables for a DSN, so child processes get credentials without argv. */
export function pgEnv(dsn: string): Record<string, string> {
  const u = new URL(dsn);
  const env: Record<string, string> = {
    PGHOST: decodeURIComponent(u.hostname) || 'localhost',
    PGPORT: u.port || '5432',
    PGDATABASE: decodeURIComponent(u.pathname.replace(/^\//, '')) || 'postgres',
  };
  if (u.username) env.PGUSER = decodeURIComponent(u.username);
  if (u.password) env.PGPASSWORD = decodeURIComponent(u.password);
  const sslmode = u.searchParams.get('sslmode');
  if (sslmode) env.PGSSLMODE = sslmode;
  return env;
}
