// Watch: real probes against a local HTTP server. A server that starts answering 500 breaches the
// error rate; a slow one breaches latency; and inside the cutover phase a breach rolls every target
// back automatically, replays green-side revocations into blue and restores the lever (exit 8).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { Miniflare } from 'miniflare';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyCommand } from '../src/commands/apply.ts';
import { withContext } from '../src/commands/session.ts';
import { kvNamespaceStore, type KvStore } from '../src/cutover/kv.ts';
import { watchSchema } from '../src/cutover/schema.ts';
import { plainSink } from '../src/report/progress.ts';
import { Journal, latestRun } from '../src/state/journal.ts';
import { runCutover } from '../src/cutover/phase.ts';
import { cutoverWiring } from '../src/cutover/wiring.ts';
import { watchWindow } from '../src/steps/watch.ts';
import { createDbPair, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

/** Answers 200 until `failAfter` requests were served, then 500; `delayMs` slows every answer. */
function startService(opts: { failAfter?: number; delayMs?: number }): Promise<{ url: string; served: () => number; close: () => Promise<void> }> {
  let served = 0;
  const server = http.createServer((_req, res) => {
    served += 1;
    const status = opts.failAfter !== undefined && served > opts.failAfter ? 500 : 200;
    setTimeout(() => res.writeHead(status).end(status === 200 ? 'ok' : 'boom'), opts.delayMs ?? 0);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/health`, served: () => served, close: () => new Promise((r) => server.close(() => r())) })),
  );
}

const env = { blueDsn: '', greenDsn: '', kv: () => { throw new Error('no kv in this test'); }, env: {} };
/** Thresholds for tests about errors, not latency: a loaded CI machine must not turn them into latency breaches. */
const ERRORS_ONLY = { thresholds: { maxErrorRate: 0.2, maxLatencyMs: 5000, minSamples: 3 } };
const spec = (url: string, extra: Record<string, unknown> = {}) =>
  watchSchema.parse({ windowSeconds: 3, intervalSeconds: 0.1, probes: [{ name: 'auth', kind: 'http', url, timeoutSeconds: 2 }], thresholds: { maxErrorRate: 0.2, maxLatencyMs: 150, minSamples: 3 }, ...extra });

describe('watch', () => {
  it('ends early on an error-rate breach once the service starts answering 500', async () => {
    const svc = await startService({ failAfter: 4 });
    try {
      const result = await watchWindow(spec(svc.url, ERRORS_ONLY), env);
      expect(result.breach).toMatchObject({ probe: 'auth', kind: 'error-rate' });
      expect(result.breach!.reason).toContain('answered 500, expected 200');
      expect(result.probes[0]!.errors).toBeGreaterThan(0);
      expect(result.ms).toBeLessThan(3000);
    } finally {
      await svc.close();
    }
  });

  it('breaches on latency when the mean of the last samples exceeds the threshold', async () => {
    const svc = await startService({ delayMs: 250 });
    try {
      const result = await watchWindow(spec(svc.url), env);
      expect(result.breach).toMatchObject({ probe: 'auth', kind: 'latency' });
      expect(result.probes[0]!.meanMs).toBeGreaterThanOrEqual(250);
    } finally {
      await svc.close();
    }
  });

  it('passes a clean window after probing it every interval', async () => {
    const svc = await startService({});
    try {
      const result = await watchWindow(spec(svc.url, { windowSeconds: 0.6, intervalSeconds: 0.1, ...ERRORS_ONLY }), env);
      expect(result.breach).toBeNull();
      expect(result.rounds).toBeGreaterThanOrEqual(3);
      expect(svc.served()).toBe(result.rounds);
    } finally {
      await svc.close();
    }
  });

  describe('inside the cutover phase', () => {
    let pair: DbPair;
    let mf: Miniflare;
    let kv: KvStore;
    let svc: Awaited<ReturnType<typeof startService>>;
    beforeAll(async () => {
      pair = await createDbPair('watch');
      await seedBlue(pair, { rows: 200, seed: 3, dirty: [] });
      const cfg = writeConfig(pair);
      Object.assign(process.env, cfg.env);
      const applied = await applyCommand({ config: cfg.file, json: true, sink: plainSink(new PassThrough()) });
      expect(applied.exitCode, applied.text).toBe(0);
      await withClient(pair.greenDsn, (c) => c.query(`CREATE TABLE app_config (key text PRIMARY KEY, value text NOT NULL); INSERT INTO app_config VALUES ('upstream', 'blue'), ('token_ttl', '3600')`));
      mf = new Miniflare({ modules: true, script: 'export default {fetch(){return new Response()}}', kvNamespaces: ['ROUTES'] });
      kv = kvNamespaceStore(await mf.getKVNamespace('ROUTES'));
      await kv.put('upstream', 'blue');
      svc = await startService({ failAfter: 2 });
      process.env.WATCH_CFG = cfg.file;
    });
    afterAll(async () => {
      await svc?.close();
      await mf?.dispose();
      await pair?.drop();
    });

    it('rolls every target back automatically on a breach, replays green revocations into blue and restores the lever', async () => {
      const result = await withContext({ config: process.env.WATCH_CFG! }, async (ctx) => {
        ctx.journal = new Journal(ctx.blue, (await latestRun(ctx.blue))!.run_id);
        ctx.config.raw.lever = {
          kind: 'sql', database: 'green',
          prepare: { sql: `SELECT value FROM app_config WHERE key = 'token_ttl'`, params: [] },
          commit: { sql: `UPDATE app_config SET value = '86400' WHERE key = 'token_ttl'`, params: [] },
          rollback: { sql: `UPDATE app_config SET value = $1 WHERE key = 'token_ttl'`, params: ['{{saved}}'] },
        };
        ctx.cutover = cutoverWiring(ctx.config, {
          kv: () => kv,
          targets: [
            { name: 'config-table', kind: 'sql', database: 'green', prepare: { sql: `SELECT value FROM app_config WHERE key = 'upstream'`, params: [] }, commit: { sql: `UPDATE app_config SET value = 'green' WHERE key = 'upstream'`, params: [] }, rollback: { sql: `UPDATE app_config SET value = $1 WHERE key = 'upstream'`, params: ['{{saved}}'] } },
            { name: 'router-kv', kind: 'kv', namespaceId: 'routes', key: 'upstream', commit: { put: 'green' }, rollback: { put: '{{saved}}' } },
          ],
          watch: spec(svc.url, { windowSeconds: 5 }),
        });
        return runCutover(ctx, { yes: true, sink: plainSink(new PassThrough()) });
      });
      expect(result.error?.exitCode).toBe(8);
      expect(result.cutover).toMatchObject({ rolledBack: true, rollbackOrder: ['router-kv', 'config-table'], failure: { target: 'auth', phase: 'watch' } });
      expect(result.cutover.targets.map((t) => t.status)).toEqual(['rolled-back', 'rolled-back']);
      expect(result.watch!.breach!.kind).toBe('error-rate');
      // The steps ran in order up to the breach; the rollback replayed green's outbox (nothing revoked there) into blue.
      expect(result.steps.map((s) => `${s.name}:${s.status}`)).toEqual(['lever:done', 'cutover:done', 'drain:done', 'recheck:done', 'watch:failed', 'restore-ttl:not-run']);
      expect(result.replayedToBlue).toBe(0);
      expect(result.lever).toEqual({ raised: true, restored: true, saved: '3600' });
      expect(await kv.get('upstream')).toBe('blue');
      const rows = await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT key, value FROM app_config ORDER BY key`)).rows);
      expect(rows).toEqual([{ key: 'token_ttl', value: '3600' }, { key: 'upstream', value: 'blue' }]);
    });
  });
});
