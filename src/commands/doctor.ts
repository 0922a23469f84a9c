// `migrate doctor`: is this machine ready? Client binaries, Node, and (with --config) both
// databases and every preflight check. Says what to install when something is missing or too old.
// The stream's checks are shown even when stream.enabled is off (a failure is then informational),
// and every replication slot of ours on blue is listed: one no run reads keeps WAL on blue.

import { binaryVersion } from '../db/binaries.ts';
import { ExitCode, OperatorError, type ExitCodeValue } from '../errors.ts';
import { checkQueueConsumer } from '../queue/consumer-check.ts';
import { cleanup } from '../steps/cleanup.ts';
import { runChecks, streamChecks, type CheckResult } from '../steps/preflight.ts';
import type { StepContext } from '../steps/step.ts';
import { dropSlotHint, retainedText, streamStatus, type SlotState } from '../stream/readiness.ts';
import { table, type CommandResult } from './result.ts';
import { withContext } from './session.ts';

/** The pg_dump major the tool is tested with; older clients cannot dump newer servers. */
const MIN_PG_DUMP_MAJOR = 15;

/** A doctor check with the exit code its failure maps to (preflight failures are state, 3). */
type DoctorCheck = CheckResult & { exitCode?: ExitCodeValue };

/**
 * Which failure decides the exit code when several fail: the one to fix first. A config that does not
 * load hides everything behind it, an unreachable side hides its checks, and the rest is preflight.
 */
const EXIT_PRECEDENCE: readonly ExitCodeValue[] = [ExitCode.usage, ExitCode.config, ExitCode.source, ExitCode.target, ExitCode.state];

/** The exit code of a doctor run: 0 when every check passed, else the most fundamental failure's. */
export function doctorExitCode(checks: readonly DoctorCheck[]): ExitCodeValue {
  const failed = checks.filter((c) => !c.ok).map((c) => c.exitCode ?? ExitCode.state);
  if (!failed.length) return ExitCode.ok;
  return EXIT_PRECEDENCE.find((code) => failed.includes(code)) ?? failed[0]!;
}

/** The cleanup rules run on blue as written (read-only, stable functions only): what apply's validate checks. */
async function cleanupRulesCheck(ctx: StepContext): Promise<DoctorCheck> {
  try {
    await cleanup.validate(ctx);
    return { id: 'cleanup-rules', ok: true, detail: `${ctx.config.cleanupRules.length} cleanup rule(s) evaluate read-only on blue` };
  } catch (err) {
    if (!(err instanceof OperatorError)) throw err;
    return { id: 'cleanup-rules', ok: false, detail: err.message, hint: err.hint, exitCode: err.exitCode };
  }
}

/** The stream's checks as doctor shows them: with stream.enabled off a failure is informational (a warning). */
async function streamDoctorChecks(ctx: StepContext): Promise<DoctorCheck[]> {
  if (ctx.config.raw.stream.enabled) return []; // preflight's own checks include them
  return (await streamChecks(ctx)).map((c) => (c.ok ? c : { ...c, ok: true, warn: true, detail: `needed for stream.enabled: ${c.detail}` }));
}

/** A slot of ours as doctor lists it. */
type DoctorSlot = SlotState & { retained: string; leftBehind: boolean; why?: string };

/** Slots of ours on blue, and a warning naming those no live run reads (they keep WAL on blue). */
async function slotsOfOurs(ctx: StepContext): Promise<{ slots: DoctorSlot[]; check: DoctorCheck | null }> {
  const stream = await streamStatus(ctx.blue, { enabled: ctx.config.raw.stream.enabled });
  const left = stream.leftBehind.map((s) => ({ ...s, retained: retainedText(s), leftBehind: true }));
  const slots = [...(stream.slot ? [{ ...stream.slot, retained: retainedText(stream.slot), leftBehind: false }] : []), ...left];
  if (!left.length) return { slots, check: null };
  return {
    slots,
    check: {
      id: 'stream-left-behind',
      ok: true,
      warn: true,
      detail: `replication slot(s) of ours no live run reads, keeping WAL on blue: ${left.map((s) => `${s.name} (${s.why}; ${s.active ? 'active' : 'inactive'}, retains ${s.retained})`).join(', ')}`,
      hint: left.map((s) => dropSlotHint(s.name)).join('; '),
    },
  };
}

/** Runs `migrate doctor`; the exit code names the cause (2 config, 6 blue, 7 green, 3 a failed check). */
export async function doctorCommand(flags: { config?: string; json?: boolean }): Promise<CommandResult> {
  const checks: DoctorCheck[] = [];
  let slots: DoctorSlot[] = [];
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
        // Preflight checks pg_dump against blue's major too; the machine check above already listed it.
        const listed = new Set(checks.map((c) => c.id));
        checks.push(...(await runChecks(ctx)).map((c) => (listed.has(c.id) ? { ...c, id: `${c.id} (blue ${c.id === 'pg_dump' ? 'major' : 'server'})` } : c)));
        checks.push(...(await streamDoctorChecks(ctx)));
        const ours = await slotsOfOurs(ctx);
        slots = ours.slots;
        if (ours.check) checks.push(ours.check);
        checks.push(await cleanupRulesCheck(ctx));
        checks.push(...(await checkQueueConsumer(ctx.config)));
      });
    } catch (err) {
      if (!(err instanceof OperatorError)) throw err;
      const id = err.exitCode === ExitCode.config ? 'config' : err.exitCode === ExitCode.source ? 'blue' : err.exitCode === ExitCode.target ? 'green' : 'config-and-connect';
      checks.push({ id, ok: false, detail: err.message, hint: err.hint, exitCode: err.exitCode });
    }
  }
  const exitCode = doctorExitCode(checks);
  const ok = exitCode === ExitCode.ok;
  // A hint is advice for a failure or a warning; on a passing check it would read as a warning.
  const shown = checks.map(({ exitCode: _code, ...c }) => (c.ok && !c.warn ? { id: c.id, ok: c.ok, detail: c.detail } : c));
  const warnings = shown.filter((c) => c.ok && c.warn).length;
  const text = [
    table([['check', 'ok', 'detail'], ...shown.map((c) => [c.id, c.ok ? (c.warn ? 'warn' : 'yes') : 'NO', c.detail])]),
    ...shown.filter((c) => !c.ok && c.hint).map((c) => `fix ${c.id}: ${c.hint}`),
    ...shown.filter((c) => c.ok && c.warn && c.hint).map((c) => `note ${c.id}: ${c.hint}`),
    ...(slots.length
      ? [table([['slot on blue', 'active', 'retained WAL', 'wal_status', 'run'], ...slots.map((s) => [s.name, s.active ? 'yes' : 'no', s.retained, s.walStatus ?? '-', s.leftBehind ? 'LEFT BEHIND' : 'current'])])]
      : []),
    `${ok ? 'doctor: all checks passed' : 'doctor: some checks failed'}${warnings ? ` (${warnings} warning(s): read the notes)` : ''}`,
  ];
  return { exitCode, json: { ok, exitCode, checks: shown, ...(flags.config ? { slots } : {}) }, text: text.join('\n') };
}
