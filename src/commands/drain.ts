// `migrate drain`: replay the captured revocations (outbox on the source side, plus the queue when
// one is configured) into the live side. Safe to run any number of times: it resumes from its
// high-water mark and replay is deduplicated by event id.

import { loadConfig, type ResolvedConfig } from '../config/load.ts';
import { connect, moreConnections, type Db } from '../db/connect.ts';
import { redactValues } from '../db/redact.ts';
import { ConfigError, ExitCode, StateError } from '../errors.ts';
import { HttpQueue } from '../queue/http.ts';
import type { RevocationQueue } from '../queue/queue.ts';
import type { ReplayProfile } from '../replay/semantics.ts';
import { drain, type DrainStats } from '../steps/drain.ts';
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

/** The queue from config, with its secrets resolved from the environment; null when none is configured. */
export function queueFromConfig(config: ResolvedConfig, env: NodeJS.ProcessEnv = process.env): { queue: RevocationQueue; hmacKey: string; visibilityTimeoutMs: number; secrets: string[] } | null {
  const q = config.raw.queue;
  if (q.kind === 'none') return null;
  const issues: { path: string; message: string }[] = [];
  const secret = (key: 'token' | 'hmacKey'): string => {
    const name = q[key].slice(4);
    const value = env[name];
    if (!value) issues.push({ path: `queue.${key}`, message: `environment variable ${name} is not set` });
    return value ?? '';
  };
  const token = secret('token');
  const hmacKey = secret('hmacKey');
  if (issues.length) throw new ConfigError(config.file, issues, 'export the named variables (the queue token and the router HMAC key) and run `migrate drain` again');
  return {
    queue: new HttpQueue({ accountId: q.accountId, queueId: q.queueId, token, ...(q.baseUrl ? { baseUrl: q.baseUrl } : {}) }),
    hmacKey,
    visibilityTimeoutMs: q.visibilityTimeoutMs,
    secrets: [token, hmacKey],
  };
}

async function hasOutbox(db: Db): Promise<boolean> {
  const { rows } = await db.query<{ ok: boolean }>("SELECT to_regclass('bluegreen.outbox') IS NOT NULL AS ok");
  return rows[0]?.ok === true;
}

function text(s: DrainStats, into: string): string {
  const rejected = Object.entries(s.rejected).map(([k, v]) => `${k} ${v}`).join(', ') || 'none';
  return [
    `drained into ${into}: ${s.applied} applied, ${s.duplicates} already applied (duplicates)`,
    `outbox: ${s.outboxRead} events read, high-water mark ${s.outboxMark}`,
    `queue: ${s.queueRead} messages applied; rejected (left for the dead-letter queue): ${rejected}`,
  ].join('\n');
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
      if (!(await hasOutbox(source))) {
        throw new StateError(`no revocation outbox on ${from}`, from === 'blue' ? 'run `migrate apply` first (its capture step installs the outbox)' : 'capture on green is installed by cutover; run `migrate cutover` before draining into blue');
      }
      moreTargets.push(...(await moreConnections(into, targetDsn, (flags.jobs ?? config.raw.replay.jobs) - 1)));
      const stats = await drain({ source, sourceSide: from, target, moreTargets, profile, queue: queue ?? undefined, ...(flags.batchSize ? { batchSize: flags.batchSize } : {}), progress: (line) => process.stderr.write(`${redactValues(line, secrets)}\n`) });
      return { exitCode: ExitCode.ok, json: { ok: true, exitCode: ExitCode.ok, into, from, profile, drain: stats }, text: text(stats, into) };
    } finally {
      await Promise.all([target, ...moreTargets].map((c) => c.end().catch(() => {})));
    }
  } finally {
    await source.end().catch(() => {});
  }
}
