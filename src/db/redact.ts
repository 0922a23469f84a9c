// Secrets must never reach a terminal, a log or a JSON report. DSN passwords are the usual leak:
// they appear in connection strings, in pg's error messages and in child process arguments.

const URL_PASSWORD = /(postgres(?:ql)?:\/\/[^:/?#@\s]*:)([^@\s]*)(@)/gi;
const KEYWORD_PASSWORD = /(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)/gi;

/** Replaces the password in every DSN (URL or keyword form) found in `text` with `***`. */
export function redact(text: string): string {
  return text.replace(URL_PASSWORD, '$1***$3').replace(KEYWORD_PASSWORD, '$1***');
}

/** Removes every occurrence of the given secret values (e.g. a password read from the environment). */
export function redactValues(text: string, secrets: readonly string[]): string {
  let out = redact(text);
  for (const s of secrets) if (s.length >= 3) out = out.split(s).join('***');
  return out;
}

/** A DSN safe to print: user, host, port and database, never the password. */
export function describeDsn(dsn: string): string {
  try {
    const u = new URL(dsn);
    const user = u.username ? `${decodeURIComponent(u.username)}@` : '';
    return `${u.protocol}//${user}${u.hostname}${u.port ? `:${u.port}` : ''}${u.pathname}`;
  } catch {
    return redact(dsn);
  }
}
