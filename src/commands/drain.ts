// `migrate drain`: replay the captured revocations (outbox on the source side, plus the queue when
// one is configured) into the live side. Safe to run any number of times: it resumes from its
// high-water mark and replay is deduplicated by event id.

import { loadConfig } from '../config/load.ts';
import { connect, moreConnections, type Db } from '../db/connect.ts';
import { redactValues } from '../db/redact.ts';
import { ExitCode, FindingsError, StateError } from '../errors.ts';
import { queueFromConfig } from '../queue/from-config.ts';
import type { ReplayProfile } from '../replay/semantics.ts';
import { drain, type DrainStats } from '../replay/drain.ts';
import { acquireRunLock, latestRun } from '../state/journal.ts';
import { assertGreenIdentity, identityGuardrails, identityRefusal } from '../cutover/guardrails.ts';
import type { CommandResult } from './result.ts';

/** Flags of `migrate drain`. */
export interface DrainFlags {
  /** Config file. */
  config: string;
  /** JSON output. */
  json?: boolean;
  /** The live side to replay into (default green; `blue` after a rollback replays green's outbox). */
  into?: 'blue' | 'green';
  /** Replay profile override (default: config `replay.profile`, or hydra-v1 when draining into blue). */
  profile?: ReplayProfile;
  /** Outbox events per batch. */
  batchSize?: number;
  /** Connections to the live side each outbox batch is split over (default: config `replay.jobs`). */
  jobs?: number;
}

async function hasOutbox(db: Db): Promise<boolean> {
  const { rows } = await db.query<{ ok: boolean }>("SELECT to_regclass('bluegreen.outbox') IS NOT NULL AS ok");
  return rows[0]?.ok === true;
}

const counts = (c: Partial<Record<string, number>>): string => Object.entries(c).map(([k, v]) => `${k} ${v}`).join(', ') || 'none';

function text(s: DrainStats, into: string, deadLetterQueue: boolean): string {
  const d = s.deadLetters;
  return [
    `drained into ${into}: ${s.applied} applied, ${s.duplicates} already applied (duplicates)`,
    `outbox: ${s.outboxRead} events read, high-water mark ${s.outboxMark}`,
    `queue: ${s.queueRead} messages applied; rejected (left for the dead-letter queue): ${counts(s.rejected)}`,
    deadLetterQueue ? `dead-letter queue: ${d.read} read, ${d.replayed} replayed and acked, kept on the queue: ${counts(d.kept)}` : '',
    ...d.keptMessages.map((k) => `  kept ${k.id}: ${k.reason}${k.workerReason ? ` (consumer Worker said ${k.workerReason})` : ''}: ${k.detail}`),
  ].filter(Boolean).join('\n');
}

/** Exit 5 when dead letters were kept: everything else was replayed, but an operator must look at them. */
function keptFindings(s: DrainStats): FindingsError | null {
  const n = s.deadLetters.keptMessages.length;
  if (!n) return null;
  return new FindingsError(
    `${n} dead letter(s) do not verify and were kept on the dead-letter queue (${counts(s.deadLetters.kept)}); everything else was replayed`,
    'they are listed above by id and reason and stay on the dead-letter queue (drain never acks them); a bad-signature letter is an incident: find who holds the router HMAC key; never purge the dead-letter queue before they are reviewed (runbooks/revocation-queue.md, "Dead letters")',
    { kept: s.deadLetters.keptMessages.map(({ id, reason }) => ({ id, reason })) },
  );
}

/**
 * The green a drain writes to (or reads from, into blue) must be the one the newest real run copied:
 * draining a rehearsal's green, or a green the run never touched, would replay revocations where no
 * traffic goes. Without any run (an outbox installed by hand) there is nothing to compare.
 */
async function assertDrainGreen(blue: Db, green: Db, greenDsn: string): Promise<void> {
  const run = await latestRun(blue, { kind: 'real' });
  if (run) return assertGreenIdentity('drain', green, run, greenDsn);
  const rehearsal = await latestRun(blue, { kind: 'rehearsal' });
  if (rehearsal) throw identityRefusal('drain', rehearsal, greenDsn, await identityGuardrails(green, rehearsal, greenDsn));
}

/** Runs `migrate drain`. */
export async function drainCommand(flags: DrainFlags): Promise<CommandResult> {
  const config = loadConfig(flags.config);
  const into = flags.into ?? 'green';
  const from = into === 'green' ? 'blue' : 'green';
  const profile = flags.profile ?? (into === 'blue' ? 'hydra-v1' : config.raw.replay.profile);
  const queue = into === 'green' ? queueFromConfig(config) : null;
  const secrets = [...config.secrets, ...(queue?.secrets ?? [])];
  const source = await connect(from, from === 'blue' ? config.blueDsn : config.greenDsn);
  try {
    const targetDsn = into === 'blue' ? config.blueDsn : config.greenDsn;
    const target = await connect(into, targetDsn);
    const moreTargets: Db[] = [];
    try {
      const [blue, green] = from === 'blue' ? [source, target] : [target, source];
      await acquireRunLock(blue, 'drain');
      await assertDrainGreen(blue, green, config.greenDsn);
      if (!(await hasOutbox(source))) {
        throw new StateError(`no revocation outbox on ${from}`, from === 'blue' ? 'run `migrate apply` first (its capture step installs the outbox)' : 'capture on green is installed by cutover; run `migrate cutover` before draining into blue');
      }
      moreTargets.push(...(await moreConnections(into, targetDsn, (flags.jobs ?? config.raw.replay.jobs) - 1)));
      const stats = await drain({ source, sourceSide: from, target, moreTargets, profile, queue: queue ?? undefined, ...(flags.batchSize ? { batchSize: flags.batchSize } : {}), progress: (line) => process.stderr.write(`${redactValues(line, secrets)}\n`) });
      const kept = keptFindings(stats);
      const report = text(stats, into, !!queue?.deadLetters);
      if (kept) return { exitCode: kept.exitCode, json: { ok: false, exitCode: kept.exitCode, into, from, profile, drain: stats, error: kept.toJSON() }, text: `${report}\nerror: ${kept.message}\nhint: ${kept.hint}` };
      return { exitCode: ExitCode.ok, json: { ok: true, exitCode: ExitCode.ok, into, from, profile, drain: stats }, text: report };
    } finally {
      await Promise.all([target, ...moreTargets].map((c) => c.end().catch(() => {})));
    }
  } finally {
    await source.end().catch(() => {});
  }
}
