// Node-side launcher for the demo, the end-to-end tests and the chaos test: bundles the router,
// consumer and DLQ sink with wrangler (cached by source hash) and runs all three in ONE Miniflare
// instance with the revocations queue and its DLQ, Durable Objects for the route fence and for
// coalescing, and Hyperdrive pointing at green. The route lives in the router's RouteFence object,
// seeded with EdgeOptions.upstreamUrl and flipped through the admin endpoint (a cutover `route`
// target: url = LocalEdge.url, token = LocalEdge.routeAdmin.token). Miniflare cannot pause queue
// delivery, so pausing sets a flag in the consumer's control KV: while set it re-queues each batch
// with a delay (never spending retry attempts).

import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Miniflare } from 'miniflare';
import { DEAD_LETTER_PREFIX, PAUSE_KEY, type DeadLetter } from '../src/queue-consumer/control.ts';
import { fencedFlip, routeAdminCall, type RouteAdmin, type RouteStateView } from '../src/cutover/route.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const WRANGLER = path.join(ROOT, 'node_modules/.bin/wrangler');
const CACHE = path.join(ROOT, 'node_modules/.cache/bluegreen-edge');
const COMPAT_DATE = '2026-04-20';
const QUEUE = 'bluegreen-revocations';
const DLQ = 'bluegreen-revocations-dlq';
/** Sources whose change invalidates the cached bundles. */
const SOURCES = ['src/queue-consumer', 'src/replay', 'src/db/sql.ts', 'wrangler.router.jsonc', 'wrangler.consumer.jsonc', 'node_modules/wrangler/package.json'];

/** Options for {@link startEdge}. */
export interface EdgeOptions {
  /** Origin of the auth engine the router proxies to first (seeds the route object). */
  upstreamUrl: string;
  /** The router's ROUTE_ADMIN_TOKEN (default: random per edge; read it from LocalEdge.routeAdmin). */
  routeAdminToken?: string;
  /** Green's DSN; Hyperdrive's local connection string (it must contain a password). */
  greenDsn: string;
  /** Shared HMAC secret for revocation messages. */
  hmacKey: string;
  /** Replay semantics of green's schema. */
  profile: 'hydra-v1' | 'hydra-v2';
  /** Messages per consumer batch (default 100, the Queues maximum). */
  batchSize?: number;
  /** Seconds the queue waits to fill a batch (default 0.2). */
  batchTimeoutSeconds?: number;
  /** Refresh coalescing window in seconds (default 30). */
  coalesceWindowSeconds?: number;
  /** Receives the Workers' log output (default: stderr lines go to process.stderr, stdout is dropped). */
  onLog?: (line: string) => void;
}

/** A running local edge: router URL and handles on the queue, DLQ and upstream. */
export interface LocalEdge {
  /** Base URL of the router (http://127.0.0.1:<port>). */
  url: string;
  /** Points the router at another engine through a fenced flip (raise, commit), as a cutover `route` target does. */
  setUpstream(url: string): Promise<void>;
  /** The router's admin endpoint, for a cutover `route` target (url = the router's base URL). */
  routeAdmin: { url: string; token: string };
  /** The route object's state (upstream, epoch, fence, held and in-flight requests). */
  route(): Promise<RouteStateView>;
  /** Holds deliveries back (they are re-queued until resumed). */
  pauseConsumer(): Promise<void>;
  /** Lets deliveries through again. */
  resumeConsumer(): Promise<void>;
  /** Puts raw bodies on the revocations queue, e.g. duplicates or forged messages. */
  enqueue(bodies: unknown[]): Promise<void>;
  /** Every dead letter so far. */
  dlq(): Promise<DeadLetter[]>;
  /** Stops Miniflare. */
  stop(): Promise<void>;
}

function sourceHash(): string {
  const h = crypto.createHash('sha256');
  const walk = (p: string): void => {
    const abs = path.join(ROOT, p);
    if (!fs.existsSync(abs)) return;
    if (fs.statSync(abs).isDirectory()) for (const f of fs.readdirSync(abs).sort()) walk(path.join(p, f));
    else if (abs !== fileURLToPath(import.meta.url)) h.update(p).update(fs.readFileSync(abs));
  };
  SOURCES.forEach(walk);
  return h.digest('hex').slice(0, 16);
}

function run(argv: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(argv[0]!, argv.slice(1), { cwd: ROOT, env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CI: 'true' }, maxBuffer: 16 * 1024 * 1024 }, (err, _stdout, stderr) =>
      err ? reject(new Error(`${path.basename(argv[0]!)} ${argv.slice(1, 3).join(' ')} failed: ${stderr || err.message}`)) : resolve(),
    );
  });
}

/** Bundles one Worker with `wrangler deploy --dry-run` into a cache dir (atomic rename) and returns the script path. */
async function bundle(name: string, args: string[], hash: string): Promise<string> {
  const dir = path.join(CACHE, `${name}-${hash}`);
  if (!fs.existsSync(dir)) {
    fs.mkdirSync(CACHE, { recursive: true });
    const tmp = fs.mkdtempSync(path.join(CACHE, `${name}-tmp-`));
    await run([WRANGLER, 'deploy', '--dry-run', '--outdir', tmp, ...args]);
    try {
      fs.renameSync(tmp, dir);
    } catch {
      fs.rmSync(tmp, { recursive: true, force: true }); // a concurrent run got there first
    }
    // Bundles of older sources are never used again.
    for (const old of fs.readdirSync(CACHE)) {
      if (old.startsWith(`${name}-`) && !old.startsWith(`${name}-tmp-`) && old !== path.basename(dir)) fs.rmSync(path.join(CACHE, old), { recursive: true, force: true });
    }
  }
  const script = fs.readdirSync(dir).find((f) => f.endsWith('.js'));
  if (!script) throw new Error(`wrangler produced no script for ${name} in ${dir}`);
  return path.join(dir, script);
}

/** Bundles (or reuses) the three Workers. */
export async function bundleEdge(): Promise<{ router: string; consumer: string; sink: string }> {
  const hash = sourceHash();
  const [router, consumer, sink] = await Promise.all([
    bundle('router', ['-c', 'wrangler.router.jsonc'], hash),
    bundle('consumer', ['-c', 'wrangler.consumer.jsonc'], hash),
    bundle('sink', ['--name', 'bluegreen-dlq-sink', '--compatibility-date', COMPAT_DATE, 'src/queue-consumer/dlq-sink.ts'], hash),
  ]);
  return { router, consumer, sink };
}

/** Starts router, consumer and DLQ sink in one Miniflare instance. */
export async function startEdge(opts: EdgeOptions): Promise<LocalEdge> {
  const scripts = await bundleEdge();
  const log = opts.onLog;
  const adminToken = opts.routeAdminToken ?? crypto.randomBytes(24).toString('hex');
  const mf = new Miniflare({
    host: '127.0.0.1',
    port: 0,
    handleRuntimeStdio(stdout: Readable, stderr: Readable) {
      stdout.on('data', (b: Buffer) => log?.(b.toString()));
      stderr.on('data', (b: Buffer) => (log ? log(b.toString()) : process.stderr.write(b)));
    },
    workers: [
      {
        name: 'router',
        modules: true,
        scriptPath: scripts.router,
        compatibilityDate: COMPAT_DATE,
        queueProducers: { REVOCATIONS: { queueName: QUEUE } },
        durableObjects: { COALESCER: { className: 'RefreshCoalescer', useSQLite: true }, ROUTE: { className: 'RouteFence', useSQLite: true } },
        bindings: { REVOCATION_HMAC_KEY: opts.hmacKey, ROUTE_ADMIN_TOKEN: adminToken, COALESCE_WINDOW_SECONDS: String(opts.coalesceWindowSeconds ?? 30) },
      },
      {
        name: 'consumer',
        modules: true,
        scriptPath: scripts.consumer,
        compatibilityDate: COMPAT_DATE,
        compatibilityFlags: ['nodejs_compat'],
        hyperdrives: { GREEN: opts.greenDsn },
        kvNamespaces: { CONTROL: 'routes' },
        queueProducers: { DLQ: { queueName: DLQ }, REVOCATIONS: { queueName: QUEUE } },
        queueConsumers: { [QUEUE]: { maxBatchSize: opts.batchSize ?? 100, maxBatchTimeout: opts.batchTimeoutSeconds ?? 0.2, maxRetries: 100, retryDelay: 1, deadLetterQueue: DLQ } },
        bindings: { REVOCATION_HMAC_KEY: opts.hmacKey, REPLAY_PROFILE: opts.profile },
      },
      {
        name: 'dlq-sink',
        modules: true,
        scriptPath: scripts.sink,
        compatibilityDate: COMPAT_DATE,
        kvNamespaces: { DEAD_LETTERS: 'dead-letters' },
        queueConsumers: { [DLQ]: { maxBatchSize: 100, maxBatchTimeout: 0.2 } },
      },
    ],
  });
  const url = (await mf.ready).toString().replace(/\/$/, '');
  const control = await mf.getKVNamespace('CONTROL', 'consumer');
  const deadLetters = await mf.getKVNamespace('DEAD_LETTERS', 'dlq-sink');
  const producer = await mf.getQueueProducer('REVOCATIONS', 'router');
  const admin: RouteAdmin = { url, token: adminToken, timeoutMs: 10_000 };
  try {
    await routeAdminCall(admin, 'init', { upstream: opts.upstreamUrl });
  } catch (err) {
    await mf.dispose();
    throw err;
  }
  return {
    url,
    setUpstream: async (u) => void (await fencedFlip(admin, u, { holdMs: 10_000, drainMs: 5_000 })),
    routeAdmin: { url, token: adminToken },
    route: () => routeAdminCall<RouteStateView>(admin, 'state'),
    pauseConsumer: () => control.put(PAUSE_KEY, '1'),
    resumeConsumer: () => control.delete(PAUSE_KEY),
    enqueue: async (bodies) => {
      for (let i = 0; i < bodies.length; i += 100) await producer.sendBatch(bodies.slice(i, i + 100).map((body) => ({ body, contentType: 'json' as const })));
    },
    dlq: async () => {
      const out: DeadLetter[] = [];
      let cursor: string | undefined;
      do {
        const page = await deadLetters.list({ prefix: DEAD_LETTER_PREFIX, ...(cursor ? { cursor } : {}) });
        for (const k of page.keys) out.push(JSON.parse((await deadLetters.get(k.name)) ?? 'null') as DeadLetter);
        cursor = page.list_complete ? undefined : page.cursor;
      } while (cursor);
      return out;
    },
    stop: () => mf.dispose(),
  };
}
