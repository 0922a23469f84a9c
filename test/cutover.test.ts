// The all-or-nothing cutover against real things: a Postgres table, a local HTTP server, a real
// child process and Miniflare KV. Two-phase rollback runs newest commit first; the overall timeout
// kills a hung command's process group; through the CLI a failing target exits 8 with every target
// rolled back and the lever restored, and `migrate rollback` undoes a committed cutover precisely.
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Miniflare } from 'miniflare';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ActionEnv } from '../src/cutover/actions.ts';
import { rollbackTargets, twoPhaseCutover, type TargetRecord } from '../src/cutover/coordinator.ts';
import { miniflareKv } from '../src/cutover/kv-env.ts';
import { kvNamespaceStore, type KvStore } from '../src/cutover/kv.ts';
import type { TargetSpec } from '../src/cutover/schema.ts';
import { PassThrough } from 'node:stream';
import { applyCommand } from '../src/commands/apply.ts';
import { cutoverCommand } from '../src/commands/cutover.ts';
import { rollbackCommand } from '../src/commands/rollback.ts';
import { statusCommand } from '../src/commands/status.ts';
import { plainSink } from '../src/report/progress.ts';
import { createDbPair, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

/** A tiny upstream switch: GET /upstream, PUT /upstream (body); `failPut` makes flipping to green fail. */
function startSwitch(): Promise<{ url: string; state: { upstream: string; failPut: boolean; log: string[] }; close: () => Promise<void> }> {
  const state = { upstream: 'blue', failPut: false, log: [] as string[] };
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      state.log.push(`${req.method} ${body}`);
      if (req.method === 'PUT' && state.failPut && body === 'green') return void res.writeHead(500).end('broken');
      if (req.method === 'PUT') state.upstream = body;
      res.writeHead(200).end(state.upstream);
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/upstream`, state, close: () => new Promise((r) => server.close(() => r())) })),
  );
}

const writer = (file: string, value: string): string[] => [process.execPath, '-e', 'require("fs").writeFileSync(process.argv[1], process.argv[2])', file, value];
const reader = (file: string): string[] => [process.execPath, '-e', 'process.stdout.write(require("fs").readFileSync(process.argv[1], "utf8"))', file];

function targets(opts: { switchUrl: string; file: string }): TargetSpec[] {
  return [
    {
      name: 'config-table', kind: 'sql', database: 'green',
      prepare: { sql: `SELECT value FROM app_config WHERE key = 'upstream'`, params: [] },
      commit: { sql: `UPDATE app_config SET value = 'green' WHERE key = 'upstream'`, params: [] },
      verify: { sql: `SELECT value FROM app_config WHERE key = 'upstream'`, params: [], expect: 'green' },
      rollback: { sql: `UPDATE app_config SET value = $1 WHERE key = 'upstream'`, params: ['{{saved}}'] },
    },
    {
      name: 'router-kv', kind: 'kv', namespaceId: 'routes', key: 'upstream',
      commit: { put: 'green' }, verify: { expect: 'green' }, rollback: { put: '{{saved}}' },
    },
    {
      name: 'sidecar-file', kind: 'command',
      prepare: { argv: reader(opts.file), timeoutSeconds: 10, env: {} },
      commit: { argv: writer(opts.file, 'green'), timeoutSeconds: 10, env: {} },
      verify: { argv: reader(opts.file), timeoutSeconds: 10, env: {}, expect: 'green' },
      rollback: { argv: writer(opts.file, '{{saved}}'), timeoutSeconds: 10, env: {} },
    },
    {
      name: 'edge-switch', kind: 'http',
      prepare: { method: 'GET', url: opts.switchUrl, status: 200, timeoutSeconds: 5, headers: {} },
      commit: { method: 'PUT', url: opts.switchUrl, status: 200, timeoutSeconds: 5, headers: {}, body: 'green' },
      verify: { method: 'GET', url: opts.switchUrl, status: 200, timeoutSeconds: 5, headers: {}, expect: 'green' },
      rollback: { method: 'PUT', url: opts.switchUrl, status: 200, timeoutSeconds: 5, headers: {}, body: '{{saved}}' },
    },
  ] as TargetSpec[];
}

describe('two-phase cutover of real targets', () => {
  let pair: DbPair;
  let mf: Miniflare;
  let kv: KvStore;
  let sw: Awaited<ReturnType<typeof startSwitch>>;
  let file: string;
  let env: ActionEnv;
  const upstreams = async () => ({
    sql: await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT value FROM app_config WHERE key = 'upstream'`)).rows[0].value),
    kv: await kv.get('upstream'),
    file: fs.readFileSync(file, 'utf8'),
    http: sw.state.upstream,
  });

  beforeAll(async () => {
    pair = await createDbPair('cutover');
    await withClient(pair.greenDsn, (c) => c.query(`CREATE TABLE app_config (key text PRIMARY KEY, value text NOT NULL)`));
    mf = new Miniflare({ modules: true, script: 'export default {fetch(){return new Response()}}', kvNamespaces: ['ROUTES'] });
    kv = kvNamespaceStore(await mf.getKVNamespace('ROUTES'));
    sw = await startSwitch();
    file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cutover-')), 'upstream');
    env = { blueDsn: pair.blueDsn, greenDsn: pair.greenDsn, kv: () => kv, env: {} };
  });
  beforeEach(async () => {
    await withClient(pair.greenDsn, (c) => c.query(`INSERT INTO app_config VALUES ('upstream', 'blue') ON CONFLICT (key) DO UPDATE SET value = 'blue'`));
    await kv.put('upstream', 'blue');
    fs.writeFileSync(file, 'blue');
    Object.assign(sw.state, { upstream: 'blue', failPut: false, log: [] });
  });
  afterAll(async () => {
    await sw?.close();
    await mf?.dispose();
    await pair?.drop();
  });

  it('commits and verifies every kind of target, and rollback restores each to what prepare read', async () => {
    const ts = targets({ switchUrl: sw.url, file });
    const outcome = await twoPhaseCutover(ts, env, { timeoutMs: 20_000 });
    expect(outcome.failure).toBeNull();
    expect(outcome.targets.map((t) => t.state)).toEqual(['committed', 'committed', 'committed', 'committed']);
    expect(await upstreams()).toEqual({ sql: 'green', kv: 'green', file: 'green', http: 'green' });
    const records = new Map<string, TargetRecord>(outcome.targets.map((t) => [t.name, t]));
    const failures = await rollbackTargets(ts, records, ts.map((t) => t.name).reverse(), env, async () => {});
    expect(failures).toEqual([]);
    expect(await upstreams()).toEqual({ sql: 'blue', kv: 'blue', file: 'blue', http: 'blue' });
  });

  it('rolls back every touched target newest first when one commit fails, and says which', async () => {
    sw.state.failPut = true;
    const logged: string[] = [];
    const outcome = await twoPhaseCutover(targets({ switchUrl: sw.url, file }), env, { timeoutMs: 20_000, log: async (r) => void logged.push(`${r.name}:${r.state}`) });
    expect(outcome.rolledBack).toBe(true);
    expect(outcome.failure).toMatchObject({ target: 'edge-switch', phase: 'commit' });
    expect(outcome.failure!.message).toContain('answered 500, expected 200');
    expect(outcome.rollbackOrder).toEqual(['edge-switch', 'sidecar-file', 'router-kv', 'config-table']);
    expect(logged.filter((l) => l.endsWith(':rolled-back'))).toEqual(['edge-switch:rolled-back', 'sidecar-file:rolled-back', 'router-kv:rolled-back', 'config-table:rolled-back']);
    expect(await upstreams()).toEqual({ sql: 'blue', kv: 'blue', file: 'blue', http: 'blue' });
  });

  it('restores a KV key that did not exist before by deleting it', async () => {
    await kv.delete('upstream');
    const ts = [targets({ switchUrl: sw.url, file })[1]!, { ...targets({ switchUrl: sw.url, file })[3]!, commit: { method: 'PUT', url: sw.url, status: 201, timeoutSeconds: 5, headers: {}, body: 'x' } } as TargetSpec];
    const outcome = await twoPhaseCutover(ts, env, { timeoutMs: 20_000 });
    expect(outcome.rollbackOrder).toEqual(['edge-switch', 'router-kv']);
    expect(await kv.get('upstream')).toBeNull();
  });

  it('stops at the overall timeout, kills the hung command\'s process group and rolls back what was committed', async () => {
    const pidFile = `${file}.pid`;
    const hung: TargetSpec = {
      name: 'hung-deploy', kind: 'command',
      commit: { argv: [process.execPath, '-e', 'require("fs").writeFileSync(process.argv[1], String(process.pid)); setInterval(() => {}, 1000)', pidFile], timeoutSeconds: 300, env: {} },
      rollback: { argv: [process.execPath, '-e', ''], timeoutSeconds: 10, env: {} },
    } as TargetSpec;
    const ts = [targets({ switchUrl: sw.url, file })[0]!, hung];
    const started = Date.now();
    const outcome = await twoPhaseCutover(ts, env, { timeoutMs: 1500 });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(outcome.failure).toMatchObject({ target: 'hung-deploy', phase: 'timeout' });
    expect(outcome.rollbackOrder).toEqual(['hung-deploy', 'config-table']);
    expect((await upstreams()).sql).toBe('blue');
    const pid = Number(fs.readFileSync(pidFile, 'utf8'));
    expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
  });
});

describe('migrate cutover and migrate rollback through the CLI', () => {
  let pair: DbPair;
  let sw: Awaited<ReturnType<typeof startSwitch>>;
  let cfg: ReturnType<typeof writeConfig>;
  let kvDir: string;
  const state = async () => {
    const local = await miniflareKv(kvDir);
    try {
      return {
        sql: await withClient(pair.greenDsn, async (c) => (await c.query(`SELECT key, value FROM app_config ORDER BY key`)).rows.map((r) => `${r.key}=${r.value}`).join(',')),
        kv: await local.store.get('upstream'),
        http: sw.state.upstream,
      };
    } finally {
      await local.dispose();
    }
  };

  beforeAll(async () => {
    pair = await createDbPair('cutover_cli');
    await seedBlue(pair, { rows: 300, seed: 5, dirty: [] });
    sw = await startSwitch();
    kvDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-kv-'));
    const local = await miniflareKv(kvDir);
    await local.store.put('upstream', 'blue');
    await local.dispose();
    const all = targets({ switchUrl: sw.url, file: '/unused' });
    cfg = writeConfig(pair, {
      cutover: { timeoutSeconds: 30, targets: [all[0], all[1], all[3]] },
      lever: {
        kind: 'sql', database: 'green',
        prepare: { sql: `SELECT value FROM app_config WHERE key = 'token_ttl'` },
        commit: { sql: `UPDATE app_config SET value = '86400' WHERE key = 'token_ttl'` },
        verify: { sql: `SELECT value FROM app_config WHERE key = 'token_ttl'`, expect: '86400' },
        rollback: { sql: `UPDATE app_config SET value = $1 WHERE key = 'token_ttl'`, params: ['{{saved}}'] },
      },
    });
    cfg.env.BLUEGREEN_KV_PERSIST = kvDir;
    // In-process where the exit code is not the point: each CLI start costs seconds on a busy machine.
    Object.assign(process.env, cfg.env);
    const applied = await applyCommand({ config: cfg.file, json: true, sink: plainSink(new PassThrough()) });
    expect(applied.exitCode, applied.text).toBe(0);
    await withClient(pair.greenDsn, (c) => c.query(`CREATE TABLE app_config (key text PRIMARY KEY, value text NOT NULL); INSERT INTO app_config VALUES ('upstream', 'blue'), ('token_ttl', '3600')`));
  });
  afterAll(async () => {
    await sw?.close();
    await pair?.drop();
  });

  it('exits 8 when one target fails, with every target rolled back in reverse order and the lever restored', async () => {
    sw.state.failPut = true;
    const res = await runCli(['cutover', '--config', cfg.file, '--yes', '--json'], cfg.env);
    expect(res.code, res.stderr).toBe(8);
    const out = JSON.parse(res.stdout);
    expect(out.cutover).toMatchObject({ rolledBack: true, rollbackOrder: ['edge-switch', 'router-kv', 'config-table'], failure: { target: 'edge-switch', phase: 'commit' } });
    expect(out.cutover.targets.map((t: { status: string }) => t.status)).toEqual(['rolled-back', 'rolled-back', 'rolled-back']);
    expect(out.lever).toEqual({ raised: true, restored: true, saved: '3600' });
    expect(out.error.exitCode).toBe(8);
    expect(await state()).toEqual({ sql: 'token_ttl=3600,upstream=blue', kv: 'blue', http: 'blue' });
    expect(sw.state.log).toContain('PUT blue');
  });

  it('commits a cutover, shows it live in status, and rollback undoes it precisely', async () => {
    sw.state.failPut = false;
    const res = await cutoverCommand({ config: cfg.file, yes: true, json: true });
    expect(res.exitCode, res.text).toBe(0);
    expect(res.text.split('\n')).toContain('cutover committed');
    const out = res.json as { cutover: { targets: unknown[] }; invariants: { passed: boolean }[] };
    expect(out.cutover.targets).toEqual([{ name: 'config-table', status: 'committed' }, { name: 'router-kv', status: 'committed' }, { name: 'edge-switch', status: 'committed' }]);
    expect(out.invariants.every((i: { passed: boolean }) => i.passed)).toBe(true);
    expect(await state()).toEqual({ sql: 'token_ttl=3600,upstream=green', kv: 'green', http: 'green' });
    const status = await statusCommand({ config: cfg.file });
    expect(status.text).toContain('live on green: config-table, router-kv, edge-switch');
    const shown = await rollbackCommand({ config: cfg.file });
    expect(shown.json.plan).toEqual([
      'roll back edge-switch (committed, saved "blue")',
      'roll back router-kv (committed, saved "blue")',
      'roll back config-table (committed, saved "blue")',
    ]);
    expect(await state()).toMatchObject({ kv: 'green' });
    const undone = await rollbackCommand({ config: cfg.file, yes: true });
    expect(undone.exitCode, undone.text).toBe(0);
    expect((undone.json.targets as { status: string }[]).map((t) => t.status)).toEqual(['rolled-back', 'rolled-back', 'rolled-back']);
    expect(await state()).toEqual({ sql: 'token_ttl=3600,upstream=blue', kv: 'blue', http: 'blue' });
  });

  it('refuses without --yes when there is no terminal, changing nothing', async () => {
    const res = await runCli(['cutover', '--config', cfg.file], cfg.env);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('--yes');
    expect(await state()).toEqual({ sql: 'token_ttl=3600,upstream=blue', kv: 'blue', http: 'blue' });
  });
});
