// Issue K defect 8: a rehearsal (`apply --dry-run`) into one green must never be cut over, neither to
// its own green nor to another one, and a real run must never be cut over (or rolled back) while
// green.dsn names a database other than the one it copied. Each refusal is exit 3, names both greens
// and the fix, and touches nothing: the cutover target's table and every database stay as they were.
import { PassThrough } from 'node:stream';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { applyCommand } from '../src/commands/apply.ts';
import { rollbackCommand } from '../src/commands/rollback.ts';
import { statusCommand } from '../src/commands/status.ts';
import { connect, type Db } from '../src/db/connect.ts';
import { describeDsn } from '../src/db/redact.ts';
import { OperatorError } from '../src/errors.ts';
import { plainSink } from '../src/report/progress.ts';
import { installState, latestRun, openRun } from '../src/state/journal.ts';
import { createDbPair, fingerprint, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

/** The switch a cutover would flip: a table on blue in a schema of its own (never part of a copy's checks). */
const SWITCH = `SELECT value FROM ops_switch.upstream`;

describe('a rehearsal is never the run to cut over', () => {
  let pair: DbPair;
  let greenA: string;
  let cfg: ReturnType<typeof writeConfig>;
  let rehearsalId: string;
  let rehearsalGuardrails: { id: string; ok: boolean }[];
  const greenB = () => pair.greenDsn;
  const as = (green: string) => ({ ...cfg.env, TEST_GREEN_DSN: green });
  const inProcess = <T>(green: string, fn: () => Promise<T>): Promise<T> => {
    process.env.TEST_GREEN_DSN = green;
    return fn();
  };
  const switchValue = () => withClient(pair.blueDsn, async (c) => (await c.query(SWITCH)).rows[0].value as string);
  const fingerprints = async () => ({ blue: await fingerprint(pair.blueDsn), a: await fingerprint(greenA), b: await fingerprint(greenB()) });
  const dropA = async () => withClient(inject('greenAdminDsn'), (c) => c.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(`${pair.name}_a`)} WITH (FORCE)`));

  beforeAll(async () => {
    pair = await createDbPair('identity');
    await withClient(inject('greenAdminDsn'), (c) => c.query(`CREATE DATABASE ${pg.escapeIdentifier(`${pair.name}_a`)}`));
    const url = new URL(pair.greenDsn);
    url.pathname = `/${pair.name}_a`;
    greenA = url.toString();
    await seedBlue(pair, { rows: 200, seed: 8, dirty: [] });
    cfg = writeConfig(pair, {
      cutover: {
        timeoutSeconds: 30,
        targets: [{
          name: 'upstream', kind: 'sql', database: 'blue',
          prepare: { sql: SWITCH },
          commit: { sql: `UPDATE ops_switch.upstream SET value = 'green'` },
          rollback: { sql: `UPDATE ops_switch.upstream SET value = $1`, params: ['{{saved}}'] },
        }],
      },
    });
    Object.assign(process.env, cfg.env);
    const rehearsal = await inProcess(greenA, () => applyCommand({ config: cfg.file, json: true, dryRun: true, sink: plainSink(new PassThrough()) }));
    expect(rehearsal.exitCode, rehearsal.text).toBe(0);
    rehearsalId = String(rehearsal.json.runId);
    rehearsalGuardrails = rehearsal.json.guardrails as { id: string; ok: boolean }[];
    // Created after the copy so the rehearsal did not carry it into green.
    await withClient(pair.blueDsn, (c) => c.query(`CREATE SCHEMA ops_switch; CREATE TABLE ops_switch.upstream (value text NOT NULL); INSERT INTO ops_switch.upstream VALUES ('blue')`));
  });
  afterAll(async () => {
    await dropA().catch(() => {});
    await pair?.drop();
  });

  it('marks the dry run as a rehearsal and lists "real-run: NO" among the guardrails it prints', async () => {
    const runs = await withClient(pair.blueDsn, async (c) => (await c.query(`SELECT run_id, mode, green_target FROM bluegreen.run`)).rows);
    expect(runs).toEqual([{ run_id: rehearsalId, mode: 'rehearsal', green_target: describeDsn(greenA) }]);
    expect(rehearsalGuardrails.filter((g) => !g.ok).map((g) => g.id)).toEqual(['real-run']);
  });

  it('refuses to cut the rehearsal over to another green: exit 3, both greens and the fix named, nothing touched', async () => {
    const before = await fingerprints();
    const res = await runCli(['cutover', '--config', cfg.file, '--yes'], as(greenB()));
    expect(res.code, res.stderr).toBe(3);
    expect(res.stderr).toContain(`run ${rehearsalId} is a rehearsal`);
    expect(res.stderr).toContain(describeDsn(greenA));
    expect(res.stderr).toContain(`green.dsn names ${describeDsn(greenB())}`);
    expect(res.stderr).toContain(`run \`migrate apply\` (without --dry-run) into ${describeDsn(greenB())}`);
    expect(res.stdout + res.stderr).not.toContain('committed');
    expect(await switchValue()).toBe('blue');
    expect(await fingerprints()).toEqual(before);
  });

  it('refuses to cut the rehearsal over to its own green too, because it is a rehearsal', async () => {
    const before = await fingerprints();
    const res = await runCli(['cutover', '--config', cfg.file, '--yes', '--json'], as(greenA));
    expect(res.code, res.stderr).toBe(3);
    const doc = JSON.parse(res.stdout);
    expect(doc.error.message).toContain('a rehearsal is never cut over');
    expect(doc.error.guardrails.filter((g: { ok: boolean }) => !g.ok).map((g: { id: string }) => g.id)).toEqual(['real-run']);
    expect(await switchValue()).toBe('blue');
    expect(await fingerprints()).toEqual(before);
  });

  it('shows no real run in status, only one line naming the rehearsal', async () => {
    const status = await inProcess(greenA, () => statusCommand({ config: cfg.file }));
    expect(status.json.run).toBeNull();
    expect(status.text).toContain('no run yet');
    expect(status.text).toContain(`rehearsal run ${rehearsalId} (dry run) into ${describeDsn(greenA)}: done`);
  });

  it('resumes only a rehearsal with `apply --dry-run --resume`, and a real `apply --resume` never picks the rehearsal up', async () => {
    const dry = await inProcess(greenA, () => applyCommand({ config: cfg.file, dryRun: true, resume: true, sink: plainSink(new PassThrough()) }).catch((e: unknown) => e));
    expect(dry).toBeInstanceOf(OperatorError);
    expect((dry as OperatorError).message).toBe('there is no unfinished rehearsal to resume');
    const real = await inProcess(greenA, () => applyCommand({ config: cfg.file, resume: true, sink: plainSink(new PassThrough()) }).catch((e: unknown) => e));
    expect((real as OperatorError).message).toBe('there is no unfinished run to resume');
  });

  describe('after a real run into green B', () => {
    let realId: string;
    beforeAll(async () => {
      const real = await inProcess(greenB(), () => applyCommand({ config: cfg.file, json: true, sink: plainSink(new PassThrough()) }));
      expect(real.exitCode, real.text).toBe(0);
      realId = String(real.json.runId);
    });

    it('refuses to cut the real run over while green.dsn names the rehearsal\'s green: exit 3, nothing touched', async () => {
      const before = await fingerprints();
      const res = await runCli(['cutover', '--config', cfg.file, '--yes'], as(greenA));
      expect(res.code, res.stderr).toBe(3);
      expect(res.stderr).toContain(`green-is-run-target: green.dsn names ${describeDsn(greenA)}, but run ${realId} copied into ${describeDsn(greenB())}`);
      expect(res.stderr).toContain(`green-marker: green ${describeDsn(greenA)} carries the marker of run ${rehearsalId}`);
      expect(res.stderr).toContain(`point green.dsn back at ${describeDsn(greenB())}`);
      expect(await switchValue()).toBe('blue');
      expect(await fingerprints()).toEqual(before);
    });

    it('refuses when green.dsn names the run\'s green but its marker names another run', async () => {
      await withClient(greenB(), (c) => c.query(`UPDATE bluegreen_green.copy SET run_id = 'someone-else'`));
      try {
        const before = await fingerprints();
        const res = await runCli(['cutover', '--config', cfg.file, '--yes'], as(greenB()));
        expect(res.code, res.stderr).toBe(3);
        expect(res.stderr).toContain(`green-marker: green ${describeDsn(greenB())} carries the marker of run someone-else, not of run ${realId}`);
        expect(res.stderr).toContain(`does not hold run ${realId}'s copy`);
        expect(await switchValue()).toBe('blue');
        expect(await fingerprints()).toEqual(before);
      } finally {
        await withClient(greenB(), (c) => c.query(`UPDATE bluegreen_green.copy SET run_id = $1`, [realId]));
      }
    });

    it('refuses `migrate rollback` against the wrong green with exit 3', async () => {
      const err = await inProcess(greenA, () => rollbackCommand({ config: cfg.file, yes: true }).catch((e: unknown) => e));
      expect(err).toBeInstanceOf(OperatorError);
      expect((err as OperatorError).exitCode).toBe(3);
      expect((err as OperatorError).message).toContain(`but run ${realId} copied into ${describeDsn(greenB())}`);
      expect(await switchValue()).toBe('blue');
    });

    it('shows the real run in status, not the older rehearsal', async () => {
      const status = await inProcess(greenB(), () => statusCommand({ config: cfg.file }));
      expect((status.json.run as { run_id: string }).run_id).toBe(realId);
      expect(status.text).toContain(`run ${realId}: done`);
      expect(status.text).not.toContain('rehearsal run');
    });

    it('mentions a newer rehearsal in one line but still shows the real run', async () => {
      const again = await inProcess(greenA, () => applyCommand({ config: cfg.file, json: true, dryRun: true, restart: true, sink: plainSink(new PassThrough()) }));
      expect(again.exitCode, again.text).toBe(0);
      const status = await inProcess(greenB(), () => statusCommand({ config: cfg.file }));
      expect((status.json.run as { run_id: string }).run_id).toBe(realId);
      expect(status.text.split('\n').filter((l) => l.includes('rehearsal run'))).toEqual([`rehearsal run ${String(again.json.runId)} (dry run) into ${describeDsn(greenA)}: done`]);
      const runs = await withClient(pair.blueDsn, async (c) => (await c.query<{ run_id: string; status: string }>(`SELECT run_id, status FROM bluegreen.run WHERE run_id = $1`, [realId])).rows);
      expect(runs).toEqual([{ run_id: realId, status: 'done' }]);
    });

    it('continues an unfinished rehearsal with `apply --dry-run --resume`, leaving the real run alone', async () => {
      const newest = await withClient(pair.blueDsn, async (c) => (await c.query<{ run_id: string }>(`UPDATE bluegreen.run SET status = 'failed' WHERE run_id = (SELECT run_id FROM bluegreen.run WHERE mode = 'rehearsal' ORDER BY started_at DESC LIMIT 1) RETURNING run_id`)).rows[0]!.run_id);
      const resumed = await inProcess(greenA, () => applyCommand({ config: cfg.file, json: true, dryRun: true, resume: true, sink: plainSink(new PassThrough()) }));
      expect(resumed.exitCode, resumed.text).toBe(0);
      expect(resumed.json).toMatchObject({ runId: newest, resumed: true });
      const status = await inProcess(greenB(), () => statusCommand({ config: cfg.file }));
      expect((status.json.run as { run_id: string; status: string })).toMatchObject({ run_id: realId, status: 'done' });
    });
  });
});

describe('real runs and rehearsals in the journal', () => {
  let pair: DbPair;
  let blue: Db;
  beforeAll(async () => {
    pair = await createDbPair('runkinds');
    blue = await connect('blue', pair.blueDsn);
    await installState(blue);
    // Every statement of the state schema is re-runnable on an existing schema.
    await installState(blue);
  });
  afterAll(async () => {
    await blue?.end();
    await pair?.drop();
  });

  it('keeps the two lines apart: a real run abandons an unfinished rehearsal, a rehearsal never touches a real run', async () => {
    const opts = { configDigest: 'x', greenTarget: 'postgres://g/a' };
    const r1 = (await openRun(blue, { ...opts, mode: 'fresh', rehearsal: true })).run;
    const again = await openRun(blue, { ...opts, mode: 'fresh', rehearsal: true }).catch((e: unknown) => e);
    expect((again as OperatorError).message).toBe(`rehearsal ${r1.run_id} is unfinished (running)`);
    expect((again as OperatorError).hint).toContain('`migrate apply --dry-run --resume`');
    const real = (await openRun(blue, { ...opts, mode: 'fresh', greenTarget: 'postgres://g/b' })).run;
    expect(real.mode).toBe('bluegreen');
    expect(await latestRun(blue)).toMatchObject({ run_id: real.run_id, status: 'running' });
    expect(await latestRun(blue, { kind: 'rehearsal' })).toMatchObject({ run_id: r1.run_id, status: 'abandoned' });
    const r2 = (await openRun(blue, { ...opts, mode: 'fresh', rehearsal: true })).run;
    expect(await latestRun(blue, { kind: 'any' })).toMatchObject({ run_id: r2.run_id, mode: 'rehearsal' });
    expect(await latestRun(blue)).toMatchObject({ run_id: real.run_id, status: 'running' });
  });
});
