// `migrate doctor`: is this machine ready? Client binaries, Node, and (with --config) both
// databases and every preflight check. Says what to install when something is missing or too old.

import { binaryVersion } from '../db/binaries.ts';
import { ExitCode, OperatorError } from '../errors.ts';
import { runChecks, type CheckResult } from '../steps/preflight.ts';
import { table, type CommandResult } from './result.ts';
import { withContext } from './session.ts';

/** The pg_dump major the tool is tested with; older clients cannot dump newer servers. */
const MIN_PG_DUMP_MAJOR = 15;

/** Runs `migrate doctor`; exit 3 when a check fails. */
export async function doctorCommand(flags: { config?: string; json?: boolean }): Promise<CommandResult> {
  const checks: CheckResult[] = [];
  const nodeMajor = Number(process.versions.node.split('.')[0]);
  checks.push({ id: 'node', ok: nodeMajor >= 20, detail: `node ${process.versions.node}`, hint: 'install Node.js 20.19 or newer' });
  const dump = await binaryVersion('pg_dump');
  checks.push(
    dump
      ? { id: 'pg_dump', ok: dump.major >= MIN_PG_DUMP_MAJOR, detail: `pg_dump ${dump.version}`, hint: `pg_dump ${dump.version} is too old: install postgresql-client-${MIN_PG_DUMP_MAJOR} or newer` }
      : { id: 'pg_dump', ok: false, detail: 'pg_dump not found on PATH', hint: `install the PostgreSQL client (Debian: apt-get install postgresql-client-${MIN_PG_DUMP_MAJOR})` },
  );
  const pgcopydb = await binaryVersion('pgcopydb');
  checks.push({ id: 'pgcopydb', ok: true, detail: pgcopydb ? `pgcopydb ${pgcopydb.version} (benchmark anchor)` : 'pgcopydb not installed (optional: only the benchmark compares against it)' });
  if (flags.config) {
    try {
      await withContext({ config: flags.config }, async (ctx) => {
        checks.push({ id: 'connect', ok: true, detail: 'blue and green reachable' });
        checks.push(...(await runChecks(ctx)));
      });
    } catch (err) {
      if (!(err instanceof OperatorError)) throw err;
      checks.push({ id: 'config-and-connect', ok: false, detail: err.message, hint: err.hint });
    }
  }
  const ok = checks.every((c) => c.ok);
  const exitCode = ok ? ExitCode.ok : ExitCode.state;
  const text = [
    table([['check', 'ok', 'detail'], ...checks.map((c) => [c.id, c.ok ? 'yes' : 'NO', c.detail])]),
    ...checks.filter((c) => !c.ok && c.hint).map((c) => `fix ${c.id}: ${c.hint}`),
    ok ? 'doctor: all checks passed' : 'doctor: some checks failed',
  ];
  return { exitCode, json: { ok, exitCode, checks }, text: text.join('\n') };
}
