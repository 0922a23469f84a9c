// `migrate follow` keeps green caught up between apply and cutover: on a run built with stream.enabled
// (apply through the CLI), it stages and maps blue's writes round after round while they happen, holds
// the run lock (cutover beside it is refused, naming follow, with the hint to stop it), stops cleanly
// on SIGTERM (exit 0, summary, slot released) or by itself with --until-caught-up, and refuses (exit 3)
// when there is nothing to follow: no stream, no run, or an apply short of its stream step.
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitCode } from '../src/errors.ts';
import { issueTokens } from './blue-writes.ts';
import { createDbPair, kill9, runCli, seedBlue, startCliUntil, withClient, writeConfig, type DbPair } from './harness.ts';

/** Green's mapped mark: how far the change log is applied to the new schema. */
async function mappedMark(dsn: string): Promise<{ lsn: string; changes: number }> {
  return withClient(dsn, async (c) => (await c.query<{ lsn: string; changes: number }>('SELECT applied_lsn::text AS lsn, changes::int AS changes FROM bluegreen_green.mapped_mark')).rows[0] ?? { lsn: '0/0', changes: 0 });
}

/** Polls `fn` until it returns true (every 200 ms, at most `ms`). */
async function eventually(fn: () => Promise<boolean>, ms: number): Promise<boolean> {
  for (const until = Date.now() + ms; Date.now() < until; await new Promise((resolve) => setTimeout(resolve, 200))) {
    if (await fn()) return true;
  }
  return fn();
}

/** Waits for the child's exit, with what it writes on stdout from now on (follow prints its document at the end). */
function exited(child: ChildProcess): Promise<{ code: number | null; stdout: string }> {
  let out = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout: out })));
}

interface FollowDoc {
  ok: boolean;
  stopped: string;
  signal: string | null;
  rounds: number;
  staged: number;
  mapped: number;
  slot: string;
  lag: { lagBytes: number; eta: string };
  guardrail: { id: string; ok: boolean } | null;
}

describe('migrate follow', () => {
  let pair: DbPair;
  let cfg: ReturnType<typeof writeConfig>;

  beforeAll(async () => {
    pair = await createDbPair('follow');
    await seedBlue(pair, { rows: 400, seed: 5, dirty: [] });
    cfg = writeConfig(pair, { stream: { enabled: true, batchChanges: 100 } });
    const r = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
  }, 120_000);
  afterAll(async () => {
    // A slot left by a failed test would keep WAL on the shared cluster.
    if (cfg) await runCli(['finish', '--config', cfg.file, '--abandon', '--yes'], cfg.env).catch(() => {});
    await pair?.drop();
  });

  it('maps blue\'s writes while they happen, refuses cutover beside it, and stops on SIGTERM with exit 0, a summary and the slot released', async () => {
    let done = false;
    const writer = issueTokens(pair.blueDsn, () => done, 'follow', { max: 3000, pauseMs: 5 });
    let issued: string[] = [];
    const { child, stderr } = await startCliUntil(['follow', '--config', cfg.file, '--json', '--interval-ms', '200'], cfg.env, 'follow: round 1:');
    const result = exited(child);
    try {
      const first = await mappedMark(pair.greenDsn);
      // Green's mapped mark moves on while blue keeps writing.
      const advanced = await eventually(async () => {
        const now = await mappedMark(pair.greenDsn);
        return now.changes > first.changes && now.lsn !== first.lsn;
      }, 20_000);
      expect(advanced, stderr().slice(-2000)).toBe(true);
      expect(stderr()).toMatch(/follow: round \d+: [1-9]\d* staged, [1-9]\d* mapped .*stream: lag /);

      // Cutover beside it: refused by the run lock, naming follow, with the hint to stop it first.
      const cut = await runCli(['cutover', '--config', cfg.file, '--yes', '--json'], cfg.env);
      expect(cut.code).toBe(ExitCode.state);
      const refusal = JSON.parse(cut.stdout) as { error: { name: string; message: string; hint: string } };
      expect(refusal.error.name).toBe('LockHeldError');
      expect(refusal.error.message).toContain('cutover refused: the run lock on blue is held by migrate follow');
      expect(refusal.error.hint).toContain('before `migrate cutover`');
    } finally {
      done = true;
      issued = await writer;
      child.kill('SIGTERM');
    }
    const { code, stdout } = await result;
    expect(code, stderr().slice(-2000)).toBe(0);
    expect(stderr()).toContain('SIGTERM received: finishing the current round');
    const doc = JSON.parse(stdout) as FollowDoc;
    expect(doc).toMatchObject({ ok: true, stopped: 'signal', signal: 'SIGTERM', guardrail: null });
    expect(doc.rounds).toBeGreaterThanOrEqual(2);
    expect(doc.staged).toBeGreaterThan(0);
    expect(doc.mapped).toBeGreaterThan(0);
    expect(doc.lag.lagBytes).toBeGreaterThanOrEqual(0);
    expect(issued.length).toBeGreaterThan(10);
    // Nobody reads the slot once follow is gone.
    const released = await eventually(
      () => withClient(pair.blueDsn, async (c) => (await c.query<{ active: boolean }>('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [doc.slot])).rows[0]?.active === false),
      5000,
    );
    expect(released).toBe(true);
  }, 60_000);

  it('with --until-caught-up stops by itself once green is within the stream-caught-up allowance, every write mapped', async () => {
    const late = await issueTokens(pair.blueDsn, ((n) => () => n++ >= 20)(0), 'late');
    const r = await runCli(['follow', '--config', cfg.file, '--until-caught-up', '--json'], cfg.env);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const doc = JSON.parse(r.stdout) as FollowDoc;
    expect(doc).toMatchObject({ ok: true, stopped: 'caught-up', signal: null, guardrail: { id: 'stream-caught-up', ok: true } });
    const onGreen = await withClient(pair.greenDsn, async (c) => (await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM hydra_oauth2_access WHERE signature = ANY ($1::text[]) AND nid IS NOT NULL`, [late])).rows[0]!.n);
    expect(onGreen).toBe(late.length);
  }, 30_000);

  it('refuses a run without a stream with exit 3 and a hint', async () => {
    const off = writeConfig(pair);
    const r = await runCli(['follow', '--config', off.file, '--json'], off.env);
    expect(r.code).toBe(ExitCode.state);
    const doc = JSON.parse(r.stdout) as { error: { message: string; hint: string } };
    expect(doc.error.message).toContain('stream.enabled is false');
    expect(doc.error.hint).toContain('"stream": { "enabled": true } before `migrate apply`');
  });
});

describe('migrate follow before apply reached the stream step', () => {
  let pair: DbPair;
  let cfg: ReturnType<typeof writeConfig>;
  beforeAll(async () => {
    pair = await createDbPair('follownost');
    await seedBlue(pair, { rows: 100, seed: 6, dirty: [] });
    cfg = writeConfig(pair, { stream: { enabled: true } });
  });
  afterAll(async () => {
    if (cfg) await runCli(['finish', '--config', cfg.file, '--abandon', '--yes'], cfg.env).catch(() => {});
    await pair?.drop();
  });

  it('refuses with exit 3 when there is no run, and when apply stopped before its stream step', async () => {
    const none = await runCli(['follow', '--config', cfg.file, '--json'], cfg.env);
    expect(none.code).toBe(ExitCode.state);
    expect((JSON.parse(none.stdout) as { error: { message: string } }).error.message).toContain('there is no run on blue');
    const paused = await startCliUntil(['apply', '--config', cfg.file, '--drill-pause', 'before:stream:catch-up'], cfg.env, 'fault: paused before stream:catch-up');
    await kill9(paused.child);
    const r = await runCli(['follow', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code).toBe(ExitCode.state);
    const doc = JSON.parse(r.stdout) as { error: { message: string; hint: string } };
    expect(doc.error.message).toContain('has not finished its stream step yet');
    expect(doc.error.hint).toContain('`migrate apply --resume`');
  }, 60_000);
});
