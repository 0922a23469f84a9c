// `migrate demo`: the whole mission on throwaway parts: two embedded PostgreSQL clusters, the
// stand-in engine on each side, the edge router and consumer in workerd (Miniflare). Revocation
// traffic runs through the router during the window while `apply` copies, cleans and migrates;
// then the lever, a two-phase cutover of three targets, drain, validation, watch and metrics.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { resolveConfig } from '../../src/config/load.ts';
import { kvNamespaceStore } from '../../src/cutover/kv.ts';
import { runCutover } from '../../src/cutover/phase.ts';
import { cutoverWiring } from '../../src/cutover/wiring.ts';
import { watchSchema } from '../../src/cutover/schema.ts';
import { withDb, type Db } from '../../src/db/connect.ts';
import { startCluster, type LocalCluster } from '../embedded.ts';
import { comparePlanWithJournal, type PlannedStep } from '../plan-check.ts';
import { driveTraffic, planTraffic, type TrafficCursor } from './traffic.ts';
import { UsageError } from '../../src/errors.ts';
import { DIRTY_CLASSES, loadHydraV1Schema, seedHydraV1, type DirtyClass } from '../fixture/seed.ts';
import { startEdge } from '../edge.ts';
import { collectMetrics, metricsText } from '../../src/report/metrics.ts';
import type { ProgressSink } from '../../src/runner.ts';
import { Journal } from '../../src/state/journal.ts';
import { progressSink } from '../../src/report/progress.ts';
import { startStandin, type Standin } from '../standin/server.ts';
import { applyCommand } from '../../src/commands/apply.ts';
import { planCommand } from '../../src/commands/plan.ts';
import { DEMO_FAULTS } from '../../src/commands/demo-launcher.ts';
import type { CommandResult } from '../../src/commands/result.ts';
import { withContext } from '../../src/commands/session.ts';

const SQL_DIR = fileURLToPath(new URL('../../sql/fixtures/', import.meta.url));

/** Flags of `migrate demo`. */
export interface DemoFlags {
  /** Access-token rows to seed. */
  rows: number;
  /** PRNG seed. */
  seed: number;
  /** Seed dirty rows (default true). */
  dirty: boolean;
  /** Revocation requests sent through the router during the window. */
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

function demoConfig(migrations: string, greenStandinUrl: string, fault: DemoFlags['fault']): Record<string, unknown> {
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
        { name: 'router-kv', kind: 'kv', namespaceId: 'demo-routes', key: 'upstream', prepare: {}, commit: { put: greenStandinUrl }, verify: { expect: greenStandinUrl }, rollback: { put: '{{saved}}' } },
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
  };
}

async function activeSignatures(db: Db): Promise<Set<string>> {
  const { rows } = await db.query<{ signature: string }>('SELECT signature FROM hydra_oauth2_access WHERE active UNION ALL SELECT signature FROM hydra_oauth2_refresh WHERE active');
  return new Set(rows.map((r) => r.signature));
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

    // Green's engine only gets traffic once the router's KV points at it.
    const greenStandin = await startStandin({ dsn: green.dsn('hydra'), profile: 'hydra-v2' });
    services.push(greenStandin);
    const env = { DEMO_BLUE_DSN: blue.dsn('hydra'), DEMO_GREEN_DSN: green.dsn('hydra'), DEMO_INTERNAL_DSN: blue.dsn('internal') };
    const config = resolveConfig(demoConfig(migrationsDir(workdir, flags.fault), greenStandin.url, flags.fault), path.join(workdir, 'demo.config.json'), env);

    config.raw.watch = watchSchema.parse({ windowSeconds: 4, intervalSeconds: 1, probes: [{ name: 'router', kind: 'http', url: `${edge.url}/health/ready` }], thresholds: { maxErrorRate: 0.2, maxLatencyMs: 2000, minSamples: 3 } });
    // What apply and cutover will run, planned before either starts; checked against the journal at the end.
    const planned = await planCommand({ config, json: true, through: 'cutover' });
    const plannedSteps = (planned.json.steps ?? []) as PlannedStep[];
    const plan = await withDb('blue', blue.dsn('hydra'), (db) => planTraffic(db, flags.traffic));
    const cursor: TrafficCursor = { next: 0, ok: 0 };
    say(`window: apply runs while ${plan.ops.length} revocation requests go through the router`);
    let applyDone = false;
    const [applied] = await Promise.all([
      applyCommand({ config, json: flags.json, ...(flags.sink ? { sink: flags.sink } : {}) }).finally(() => {
        applyDone = true;
      }),
      driveTraffic(edge.url, plan, cursor, { stop: () => applyDone && cursor.next > plan.ops.length / 2 }),
    ]);
    await driveTraffic(edge.url, plan, cursor);
    const base = { ...applied.json, demo: { rows: flags.rows, seed: flags.seed, dirtyRowsSeeded: seeded.dirty.length, tokens: seeded.tokens, fault: flags.fault ?? null } };
    if (applied.exitCode !== 0) {
      say('apply failed: nothing is cut over, blue keeps serving');
      return { exitCode: applied.exitCode, json: { ...base, cutover: null }, text: applied.text };
    }

    const outcome = await withContext({ config }, async (ctx) => {
      ctx.journal = new Journal(ctx.blue, String(applied.json.runId));
      // The same steps `migrate cutover` runs; the demo only supplies its local KV, probes and consumer.
      ctx.cutover = cutoverWiring(ctx.config, { kv: () => kvNamespaceStore(edge.routes), env: { ...process.env, ...env }, beforeDrain: () => edge.resumeConsumer() });
      const phase = await runCutover(ctx, { yes: true, sink: flags.sink ?? progressSink(!!flags.json) });
      const metrics = await collectMetrics(ctx, { probesBefore: phase.probesBefore, probesAfter: phase.watch?.probes ?? [] });
      const captured = Number((await ctx.blue.query<{ n: string }>('SELECT count(*) AS n FROM bluegreen.outbox')).rows[0]?.n ?? 0);
      const replayed = Number((await ctx.green.query<{ n: string }>('SELECT count(*) AS n FROM bluegreen_green.replayed')).rows[0]?.n ?? 0);
      const live = phase.error ? ctx.blue : ctx.green;
      const liveActive = await activeSignatures(live);
      const blueActive = await activeSignatures(ctx.blue);
      const lost = plan.mustBeInactive.filter((s) => liveActive.has(s)).length;
      const resurrected = [...liveActive].filter((s) => !blueActive.has(s) && !s.startsWith('ory_')).length;
      const upstream = await edge.routes.get('upstream', 'text');
      const planCheck = comparePlanWithJournal(plannedSteps, await ctx.journal.rows());
      return { phase, metrics, planCheck, revocations: { requests: plan.ops.length, succeeded: cursor.ok, captured, replayed, lost, resurrected }, upstream };
    });
    const { phase, metrics, revocations, planCheck } = outcome;
    const exitCode = phase.error?.exitCode ?? 0;
    const json = {
      ...base,
      steps: [...(applied.json.steps as { name: string; status: string; ms: number }[]), ...phase.steps.map(({ name, status, ms }) => ({ name, status, ms }))],
      ok: exitCode === 0 && revocations.lost === 0 && revocations.resurrected === 0,
      exitCode,
      revocations,
      cutover: { targets: phase.cutover.targets, rolledBack: phase.cutover.rolledBack, failure: phase.cutover.failure, rollbackOrder: phase.cutover.rollbackOrder },
      planCheck,
      servingSide: outcome.upstream === greenStandin.url ? 'green' : 'blue',
      lever: phase.lever,
      metrics,
      ...(phase.error ? { error: phase.error.toJSON() } : {}),
    };
    const text = [
      `demo: blue seeded with ${seeded.tokens} tokens and ${seeded.dirty.length} dirty rows (seed ${flags.seed})`,
      applied.text,
      `revocations: ${revocations.requests} requests through the router, ${revocations.captured} captured in the outbox, ${revocations.replayed} replayed, ${revocations.lost} lost, ${revocations.resurrected} resurrected`,
      `cutover: ${phase.cutover.targets.map((t) => `${t.name}=${t.status}`).join(', ')}${phase.cutover.rolledBack ? ' (ROLLED BACK)' : ''}; serving: ${json.servingSide}`,
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
