// `migrate demo`: the whole mission on throwaway parts: two embedded PostgreSQL clusters, the
// stand-in engine on each side, the edge router and consumer in workerd (Miniflare). Traffic that
// writes like an engine (grants, flows, clients, rotations, revocations) runs through the router
// during the window while `apply` copies, cleans and migrates and the stream carries every write
// into green; then the lever, a two-phase cutover of three targets, drain, validation, watch and
// metrics. Afterwards every row the window wrote on blue is checked on green in its new form
// (writes.ts), and every revocation is followed along both of its paths to green: the outbox replay
// and the stream.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { resolveConfig } from '../../src/config/load.ts';
import { runCutover } from '../../src/cutover/phase.ts';
import { cutoverWiring } from '../../src/cutover/wiring.ts';
import { watchSchema } from '../../src/cutover/schema.ts';
import { withDb, type Db } from '../../src/db/connect.ts';
import { startCluster, type LocalCluster } from '../embedded.ts';
import { comparePlanWithJournal, type PlannedStep } from '../plan-check.ts';
import { flipClientView } from './flip-clients.ts';
import { driveTraffic, newRecord, planTraffic, REVOCATION_KINDS, type TrafficCursor } from './traffic.ts';
import { checkWrites } from './writes.ts';
import { UsageError } from '../../src/errors.ts';
import { DIRTY_CLASSES, loadHydraV1Schema, seedHydraV1, type DirtyClass } from '../fixture/seed.ts';
import { startEdge } from '../edge.ts';
import { collectMetrics, metricsText } from '../../src/report/metrics.ts';
import type { ProgressSink } from '../../src/runner.ts';
import { Journal } from '../../src/state/journal.ts';
import { progressSink } from '../../src/report/progress.ts';
import { startStandin, type Standin, type StandinLogEntry } from '../standin/server.ts';
import { parseLsn } from '../../src/stream/lsn.ts';
import type { JournalRow } from '../../src/state/journal.ts';
import { applyCommand } from '../../src/commands/apply.ts';
import { planCommand } from '../../src/commands/plan.ts';
import { DEMO_FAULTS } from '../../src/commands/demo-launcher.ts';
import type { CommandResult } from '../../src/commands/result.ts';
import { withContext } from '../../src/commands/session.ts';

const SQL_DIR = fileURLToPath(new URL('../../sql/fixtures/', import.meta.url));

/** Pace of the clients through the cutover phase: steady traffic the flip must not fail (about the window's write rate). */
const CUTOVER_OPS_PER_SECOND = 40;

/** Flags of `migrate demo`. */
export interface DemoFlags {
  /** Access-token rows to seed. */
  rows: number;
  /** PRNG seed. */
  seed: number;
  /** Seed dirty rows (default true). */
  dirty: boolean;
  /** Access-removing requests sent through the router during the window (the engine's other writes come in proportion). */
  traffic: number;
  /** Inject a failure. */
  fault?: (typeof DEMO_FAULTS)[number];
  /** Print JSON. */
  json?: boolean;
  /** Progress sink override. */
  sink?: ProgressSink;
}

/** The internal database the demo cuts over besides the engine: a config table and a routing table. */
const INTERNAL_SCHEMA = `
  CREATE TABLE internal_config (key text PRIMARY KEY, value text NOT NULL);
  INSERT INTO internal_config VALUES ('token_ttl', '3600'), ('auth_database', 'blue');
  CREATE TABLE demo_routing (service text PRIMARY KEY, database text NOT NULL);
  INSERT INTO demo_routing VALUES ('standin', 'blue');`;

function migrationsDir(workdir: string, fault: DemoFlags['fault']): string {
  if (fault !== 'corrupt-migration') return path.join(SQL_DIR, 'hydra-v2-migrations');
  const dir = path.join(workdir, 'migrations');
  fs.cpSync(path.join(SQL_DIR, 'hydra-v2-migrations'), dir, { recursive: true });
  for (const f of fs.readdirSync(path.join(SQL_DIR, 'faults'))) fs.copyFileSync(path.join(SQL_DIR, 'faults', f), path.join(dir, f));
  return dir;
}

function demoConfig(migrations: string, greenStandinUrl: string, routerUrl: string, fault: DemoFlags['fault']): Record<string, unknown> {
  const internalTarget = (name: string, commit: string, rollback: string) => ({
    name,
    kind: 'sql',
    database: 'env:DEMO_INTERNAL_DSN',
    commit: { sql: commit, params: [] },
    rollback: { sql: rollback, params: ['blue'] },
  });
  return {
    blue: { dsn: 'env:DEMO_BLUE_DSN' },
    green: { dsn: 'env:DEMO_GREEN_DSN' },
    profile: 'hydra',
    migrations: { kind: 'pop', dir: migrations },
    lever: {
      kind: 'sql',
      database: 'env:DEMO_INTERNAL_DSN',
      prepare: { sql: "SELECT value FROM internal_config WHERE key = 'token_ttl'", params: [] },
      commit: { sql: "UPDATE internal_config SET value = '86400' WHERE key = 'token_ttl'", params: [] },
      rollback: { sql: "UPDATE internal_config SET value = $1 WHERE key = 'token_ttl'", params: ['{{saved}}'] },
    },
    cutover: {
      timeoutSeconds: 30,
      targets: [
        internalTarget('standin-db', "UPDATE demo_routing SET database = 'green' WHERE service = 'standin'", "UPDATE demo_routing SET database = $1 WHERE service = 'standin'"),
        // The edge router's fenced flip (issue H): prepared and committed last whatever its place here.
        { name: 'router', kind: 'route', url: routerUrl, token: 'env:DEMO_ROUTE_TOKEN', holdMs: 5000, drainMs: 2500, commit: { upstream: greenStandinUrl } },
        internalTarget(
          'internal-config',
          fault === 'target-fails'
            ? "UPDATE internal_config SET value = 'green' WHERE key = 'auth_database' AND 1 / 0 = 1"
            : "UPDATE internal_config SET value = 'green' WHERE key = 'auth_database'",
          "UPDATE internal_config SET value = $1 WHERE key = 'auth_database'",
        ),
      ],
    },
    // The demo drains the outbox right before the flip, so the backlog guardrail only sees the tail.
    guardrails: { maxDrainBacklog: 100000 },
    // The lossless window: every write blue takes after the snapshot is streamed into green.
    stream: { enabled: true },
  };
}

/** Tokens blue revoked: inactive rows, and rows its capture saw removed (deleted tokens leave only the outbox row). */
async function revokedSignatures(blue: Db): Promise<Set<string>> {
  const { rows } = await blue.query<{ signature: string }>(
    `SELECT signature FROM hydra_oauth2_access WHERE NOT active UNION ALL SELECT signature FROM hydra_oauth2_refresh WHERE NOT active
     UNION ALL SELECT row_key ->> 'signature' FROM bluegreen.outbox WHERE table_name IN ('public.hydra_oauth2_access', 'public.hydra_oauth2_refresh')`,
  );
  return new Set(rows.map((r) => r.signature));
}

async function activeSignatures(db: Db): Promise<Set<string>> {
  const { rows } = await db.query<{ signature: string }>('SELECT signature FROM hydra_oauth2_access WHERE active UNION ALL SELECT signature FROM hydra_oauth2_refresh WHERE active');
  return new Set(rows.map((r) => r.signature));
}

/** How the window's revocations reached green: replayed from blue's outbox, streamed through the change log, and whether the two paths agree. */
export interface RevocationPaths {
  /** Access-removing requests that wrote (their rows as the engine's write log names them). */
  requests: number;
  /** Of those, committed after the slot's consistent point (the stream must carry them). */
  afterSnapshot: number;
  /** Requests whose every captured removal was replayed from the outbox (event outbox-blue-<seq> on green). */
  viaReplay: number;
  /** Requests whose every removal is in green's change log and mapped (below the mapped mark). */
  viaStream: number;
  /** Every request after the snapshot came both ways, and nothing came by the stream alone. */
  agree: boolean;
  /** The first requests that did not (up to 5). */
  disagreements: { request: string; kind: string; afterSnapshot: boolean; viaReplay: boolean; viaStream: boolean }[];
}

/** True for a request committed after the slot's consistent point (journal record snapshot/slot): the stream must carry it. */
function afterSnapshotOf(journal: readonly JournalRow[]): (r: StandinLogEntry) => boolean {
  const consistentPoint = journal.find((r) => r.step === 'snapshot' && r.unit === 'slot')?.detail.consistentPoint;
  return (r) => typeof consistentPoint === 'string' && parseLsn(r.lsn) >= parseLsn(consistentPoint);
}

/** Follows each access-removing request of the window to green along both paths (see RevocationPaths). */
async function revocationPaths(blue: Db, green: Db, requests: readonly StandinLogEntry[], after: (r: StandinLogEntry) => boolean, captured: ReadonlySet<string>): Promise<RevocationPaths> {
  const keyOf = (table: string, key: Record<string, unknown>): string => `${table}\u0000${String(key.signature ?? key.challenge)}`;
  const outbox = new Map<string, string[]>();
  for (const r of (await blue.query<{ seq: string; table_name: string; row_key: Record<string, unknown> }>('SELECT seq::text, table_name, row_key FROM bluegreen.outbox')).rows) {
    outbox.set(keyOf(r.table_name, r.row_key), [...(outbox.get(keyOf(r.table_name, r.row_key)) ?? []), r.seq]);
  }
  const replayed = new Set((await green.query<{ id: string }>(`SELECT event_id AS id FROM bluegreen_green.replayed WHERE event_id LIKE 'outbox-blue-%'`)).rows.map((r) => r.id));
  // A removal in the change log: a delete, or an update turning `active` off; mapped once at or below the mapped mark.
  const streamed = new Set(
    (await green.query<{ relation: string; k: Record<string, unknown> }>(
      `SELECT c.relation, coalesce(c.key, c.row) AS k FROM bluegreen_green.change_log c, bluegreen_green.mapped_mark m
        WHERE (c.op = 'D' OR (c.op = 'U' AND c.row ->> 'active' = 'f')) AND (c.lsn, c.seq) <= (m.applied_lsn, m.applied_seq)`,
    )).rows.map((r) => keyOf(r.relation, r.k)),
  );
  const out: RevocationPaths = { requests: 0, afterSnapshot: 0, viaReplay: 0, viaStream: 0, agree: true, disagreements: [] };
  for (const r of requests) {
    if (!REVOCATION_KINDS.has(r.kind)) continue;
    const removals = r.writes.filter((w) => w.op === 'delete' || w.op === 'deactivate');
    const inOutbox = removals.filter((w) => captured.has(w.table));
    const viaReplay = inOutbox.length > 0 && inOutbox.every((w) => (outbox.get(keyOf(w.table, w.key)) ?? []).some((seq) => replayed.has(`outbox-blue-${seq}`)));
    const viaStream = removals.length > 0 && removals.every((w) => streamed.has(keyOf(w.table, w.key)));
    const afterSnapshot = after(r);
    out.requests++;
    if (afterSnapshot) out.afterSnapshot++;
    if (viaReplay) out.viaReplay++;
    if (viaStream) out.viaStream++;
    if ((afterSnapshot && !(viaReplay && viaStream)) || (viaStream && !viaReplay)) {
      out.agree = false;
      if (out.disagreements.length < 5) out.disagreements.push({ request: r.request, kind: r.kind, afterSnapshot, viaReplay, viaStream });
    }
  }
  return out;
}

function ignoreTeardownReset(err: NodeJS.ErrnoException): void {
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE') return;
  process.stderr.write(`error: ${err.stack ?? err.message}\n`);
  process.exit(70);
}

/** Runs `migrate demo`. */
export async function demoCommand(flags: DemoFlags): Promise<CommandResult> {
  if (!Number.isInteger(flags.rows) || flags.rows < 1000) throw new UsageError(`--rows must be a whole number of at least 1000 (got ${flags.rows})`, 'for example --rows 20000');
  if (!Number.isInteger(flags.seed)) throw new UsageError(`--seed must be a whole number (got ${flags.seed})`, 'for example --seed 42');
  if (flags.fault && !DEMO_FAULTS.includes(flags.fault)) throw new UsageError(`unknown --fault ${flags.fault}`, `use one of: ${DEMO_FAULTS.join(', ')}`);
  const say = (text: string): void => void process.stderr.write(`demo: ${text}\n`);
  const workdir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-demo-'));
  fs.chmodSync(workdir, 0o755);
  const clusters: LocalCluster[] = [];
  const services: { stop(): Promise<void> }[] = [];
  try {
    say('starting two PostgreSQL 15 clusters (blue, green)');
    const [blue, green] = await Promise.all([startCluster({ name: 'blue', baseDir: workdir }), startCluster({ name: 'green', baseDir: workdir })]);
    clusters.push(blue, green);
    await withDb('blue', blue.dsn(), async (db) => {
      await db.query('CREATE DATABASE hydra');
      await db.query('CREATE DATABASE internal');
    });
    await withDb('green', green.dsn(), (db) => db.query('CREATE DATABASE hydra'));
    await withDb('blue', blue.dsn('internal'), (db) => db.query(INTERNAL_SCHEMA));
    const dirty: DirtyClass[] = flags.dirty ? [...DIRTY_CLASSES] : [];
    say(`seeding blue: ${flags.rows} token rows, seed ${flags.seed}, dirty classes: ${dirty.join(', ') || 'none'}`);
    const seeded = await withDb('blue', blue.dsn('hydra'), async (db) => {
      await loadHydraV1Schema(db);
      return seedHydraV1(db, { rows: flags.rows, seed: flags.seed, dirty });
    });

    say('starting the stand-in engine on blue and the edge router + consumer in workerd');
    const blueStandin: Standin = await startStandin({ dsn: blue.dsn('hydra'), profile: 'hydra-v1' });
    services.push(blueStandin);
    const hmacKey = crypto.randomBytes(32).toString('hex');
    const edge = await startEdge({ upstreamUrl: blueStandin.url, greenDsn: green.dsn('hydra'), hmacKey, profile: 'hydra-v2', onLog: () => {} });
    services.push(edge);
    await edge.pauseConsumer(); // delivery is paused for the window (runbooks/revocation-queue.md)

    // Green's engine only gets traffic once the router's route points at it.
    const greenStandin = await startStandin({ dsn: green.dsn('hydra'), profile: 'hydra-v2' });
    services.push(greenStandin);
    const env = { DEMO_BLUE_DSN: blue.dsn('hydra'), DEMO_GREEN_DSN: green.dsn('hydra'), DEMO_INTERNAL_DSN: blue.dsn('internal'), DEMO_ROUTE_TOKEN: edge.routeAdmin.token };
    const config = resolveConfig(demoConfig(migrationsDir(workdir, flags.fault), greenStandin.url, edge.routeAdmin.url, flags.fault), path.join(workdir, 'demo.config.json'), env);

    config.raw.watch = watchSchema.parse({ windowSeconds: 4, intervalSeconds: 1, probes: [{ name: 'router', kind: 'http', url: `${edge.url}/health/ready` }], thresholds: { maxErrorRate: 0.2, maxLatencyMs: 2000, minSamples: 3 } });
    // What apply and cutover will run, planned before either starts; checked against the journal at the end.
    const planned = await planCommand({ config, json: true, through: 'cutover' });
    const plannedSteps = (planned.json.steps ?? []) as PlannedStep[];
    const plan = await withDb('blue', blue.dsn('hydra'), (db) => planTraffic(db, flags.traffic));
    const cursor: TrafficCursor = { next: 0, ok: 0 };
    const record = newRecord((request) => blueStandin.writesOf(request));
    say(`window: apply runs while ${plan.ops.length} operations (revocations, grants, code flows, clients) go through the router`);
    let applyDone = false;
    // A fifth of the ops is kept for the cutover phase: clients keep calling while the flip runs (issue H).
    const windowOps = plan.ops.length - Math.floor(plan.ops.length / 5);
    const windowStarted = Date.now();
    const [applied] = await Promise.all([
      applyCommand({ config, json: flags.json, ...(flags.sink ? { sink: flags.sink } : {}) }).finally(() => {
        applyDone = true;
      }),
      driveTraffic(edge.url, plan, cursor, { stop: () => applyDone && cursor.next > plan.ops.length / 2, record, limit: windowOps }),
    ]);
    const duringApply = cursor.next;
    await driveTraffic(edge.url, plan, cursor, { record, limit: windowOps });
    say(`window: ${cursor.next} operations (${duringApply} during apply), ${cursor.ok} succeeded, ${record.requests.length} requests wrote ${record.requests.reduce((n, r) => n + r.writes.length, 0)} rows on blue, in ${((Date.now() - windowStarted) / 1000).toFixed(1)} s`);
    const base = { ...applied.json, demo: { rows: flags.rows, seed: flags.seed, dirtyRowsSeeded: seeded.dirty.length, tokens: seeded.tokens, fault: flags.fault ?? null } };
    if (applied.exitCode !== 0) {
      say('apply failed: nothing is cut over, blue keeps serving');
      return { exitCode: applied.exitCode, json: { ...base, cutover: null }, text: applied.text };
    }

    const outcome = await withContext({ config }, async (ctx) => {
      ctx.journal = new Journal(ctx.blue, String(applied.json.runId));
      // The same steps `migrate cutover` runs; the demo only supplies its local router, probes and consumer.
      ctx.cutover = cutoverWiring(ctx.config, { env: { ...process.env, ...env }, beforeDrain: () => edge.resumeConsumer() });
      // The clients' side of the flip: paced traffic through the router for the whole phase, the flip's window from the runner's hooks.
      let flip: { startedAt: number; endedAt: number } | null = null;
      let flipStarted = 0;
      ctx.hooks = {
        beforeUnit: async (step, unit) => {
          if (step === 'cutover' && unit === 'flip') flipStarted = Date.now();
        },
        afterUnit: async (step, unit) => {
          if (step === 'cutover' && unit === 'flip') flip = { startedAt: flipStarted, endedAt: Date.now() };
        },
      };
      const flipRecord = newRecord(record.writesOf);
      let phaseDone = false;
      const flipTraffic = driveTraffic(edge.url, plan, cursor, { record: flipRecord, opsPerSecond: CUTOVER_OPS_PER_SECOND, stop: () => phaseDone });
      const phase = await runCutover(ctx, { yes: true, sink: flags.sink ?? progressSink(!!flags.json) }).finally(() => {
        phaseDone = true;
      });
      await flipTraffic;
      if (flipStarted && !flip) flip = { startedAt: flipStarted, endedAt: Date.now() }; // the flip failed: its window ends with the phase
      const clients = flipClientView(flipRecord.timings, flip);
      // The rest of the ops go to whichever side serves now; every planned revocation is sent.
      await driveTraffic(edge.url, plan, cursor, { record: flipRecord });
      // The writes and both-paths checks cover the window (the copy and the stream carry it); the cutover
      // phase's requests count for the revocations, checked on whichever side serves at the end.
      record.mustBeInactive.push(...flipRecord.mustBeInactive);
      record.revocations.sent += flipRecord.revocations.sent;
      record.revocations.ok += flipRecord.revocations.ok;
      const metrics = await collectMetrics(ctx, { probesBefore: phase.probesBefore, probesAfter: phase.watch?.probes ?? [] });
      const captured = Number((await ctx.blue.query<{ n: string }>('SELECT count(*) AS n FROM bluegreen.outbox')).rows[0]?.n ?? 0);
      const replayed = Number((await ctx.green.query<{ n: string }>('SELECT count(*) AS n FROM bluegreen_green.replayed')).rows[0]?.n ?? 0);
      const live = phase.error ? ctx.blue : ctx.green;
      const liveActive = await activeSignatures(live);
      const blueRevoked = await revokedSignatures(ctx.blue);
      const lost = [...plan.mustBeInactive, ...record.mustBeInactive].filter((s) => liveActive.has(s)).length;
      // Tokens green issued after the flip are not on blue at all; a resurrection is a token blue revoked that serves again.
      const resurrected = [...liveActive].filter((s) => blueRevoked.has(s)).length;
      const upstream = (await edge.route()).upstream;
      const journal = await ctx.journal.rows();
      const planCheck = comparePlanWithJournal(plannedSteps, journal);
      // Every row the window wrote on blue, checked on green in its new form; every revocation followed along both paths.
      const after = afterSnapshotOf(journal);
      const checked = await checkWrites(ctx.blue, ctx.green, record.requests.flatMap((r) => r.writes.map((w) => ({ kind: r.kind, table: w.table, key: w.key }))));
      // All of the window's writes are checked; those after the snapshot are the ones only the stream could carry.
      const writes = { ...checked, afterSnapshot: record.requests.filter(after).reduce((n, r) => n + r.writes.length, 0) };
      const bothPaths = await revocationPaths(ctx.blue, ctx.green, record.requests, after, new Set(ctx.config.engine.capture.blue.map((t) => t.table)));
      const revocations = { requests: record.revocations.sent, succeeded: record.revocations.ok, captured, replayed, lost, resurrected, bothPaths };
      return { phase, metrics, planCheck, revocations, writes, upstream, clients };
    });
    const { phase, metrics, revocations, planCheck, writes, clients } = outcome;
    const exitCode = phase.error?.exitCode ?? 0;
    const json = {
      ...base,
      steps: [...(applied.json.steps as { name: string; status: string; ms: number }[]), ...phase.steps.map(({ name, status, ms }) => ({ name, status, ms }))],
      ok: exitCode === 0 && revocations.lost === 0 && revocations.resurrected === 0 && writes.lost === 0 && revocations.bothPaths.agree,
      exitCode,
      revocations,
      writes,
      cutover: {
        targets: phase.cutover.targets,
        rolledBack: phase.cutover.rolledBack,
        failure: phase.cutover.failure,
        rollbackOrder: phase.cutover.rollbackOrder,
        flipMs: phase.cutover.ms,
        blackoutMs: clients.blackoutMs,
        failedRequests: clients.failedRequests,
        heldRequests: clients.heldRequests,
        latency: clients.latency,
      },
      planCheck,
      servingSide: outcome.upstream === greenStandin.url ? 'green' : 'blue',
      lever: phase.lever,
      metrics,
      ...(phase.error ? { error: phase.error.toJSON() } : {}),
    };
    const text = [
      `demo: blue seeded with ${seeded.tokens} tokens and ${seeded.dirty.length} dirty rows (seed ${flags.seed})`,
      applied.text,
      `revocations: ${revocations.requests} requests through the router, ${revocations.captured} captured in the outbox, ${revocations.replayed} replayed, ${revocations.lost} lost, ${revocations.resurrected} resurrected; both paths: ${revocations.bothPaths.viaReplay} by replay, ${revocations.bothPaths.viaStream} by the stream (${revocations.bothPaths.afterSnapshot} after the snapshot), ${revocations.bothPaths.agree ? 'they agree' : 'THEY DISAGREE'}`,
      `writes: ${writes.made} made on blue during the window (${writes.afterSnapshot} after the snapshot), ${writes.present} present on green in the new schema, ${writes.lost} lost (${Object.entries(writes.byKind).map(([k, f]) => `${k} ${f.present}/${f.made}`).join(', ')})`,
      `cutover: ${phase.cutover.targets.map((t) => `${t.name}=${t.status}`).join(', ')}${phase.cutover.rolledBack ? ' (ROLLED BACK)' : ''}; serving: ${json.servingSide}`,
      `clients during the flip (${phase.cutover.ms} ms): longest hold or outage ${clients.blackoutMs} ms, ${clients.heldRequests} requests held by the router's fence, ${clients.failedRequests} failed; latency p50/p99 before ${clients.latency.before.p50Ms}/${clients.latency.before.p99Ms} ms, during ${clients.latency.during.p50Ms}/${clients.latency.during.p99Ms} ms, after ${clients.latency.after.p50Ms}/${clients.latency.after.p99Ms} ms`,
      metricsText(metrics),
      ...(phase.error ? [`error: ${phase.error.message}`, `hint: ${phase.error.hint}`] : []),
    ].join('\n');
    return { exitCode, json, text };
  } finally {
    say('stopping services and clusters, removing temp files');
    // Miniflare's local Hyperdrive proxy pipes sockets without an error listener; stopping the
    // clusters under it resets them. Those resets are expected here and nowhere else.
    process.on('uncaughtException', ignoreTeardownReset);
    for (const s of services.reverse()) await s.stop().catch(() => {});
    await Promise.all(clusters.map((c) => c.stop()));
    fs.rmSync(workdir, { recursive: true, force: true });
  }
}
