// One lock for every command that writes: while another migrate command holds the run lock on blue,
// cutover, drain, rollback --yes and quarantine restore refuse at once (exit 3), name the holder, and
// change nothing; a read-only command (rollback without --yes) is not blocked by it.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitCode } from '../src/errors.ts';
import { guardedPair, runCli, writeConfig, type DbPair } from './harness.ts';

describe('the run lock', () => {
  let pair: DbPair;
  let expectUnchanged: () => Promise<void>;
  let holder: pg.Client;
  let holderPid: number;

  beforeAll(async () => {
    ({ pair, expectUnchanged } = await guardedPair('lock', { rows: 50, seed: 8, dirty: [] }));
    holder = new pg.Client({ connectionString: pair.blueDsn });
    await holder.connect();
    // What a running `migrate apply` looks like on blue: its session named, the advisory lock ('bg', 1) held.
    const { rows } = await holder.query<{ pid: number }>(`SELECT pg_backend_pid() AS pid, set_config('application_name', 'migrate apply', false), pg_advisory_lock(25191, 1)`);
    holderPid = rows[0]!.pid;
  });
  afterAll(async () => {
    await holder?.end();
    await pair?.drop();
  });

  for (const [command, args] of [
    ['cutover', ['cutover', '--yes']],
    ['drain', ['drain']],
    ['rollback', ['rollback', '--yes']],
    ['quarantine restore', ['quarantine', 'restore']],
  ] as const) {
    it(`refuses ${args.join(' ')} with exit 3 naming the holder while another command holds it`, async () => {
      const cfg = writeConfig(pair);
      const r = await runCli([...args, '--config', cfg.file], cfg.env);
      expect(r.code, r.stderr).toBe(ExitCode.state);
      expect(r.stderr).toContain(`${command} refused: the run lock on blue is held by migrate apply (backend pid ${holderPid}`);
      expect(r.stderr).toContain('hint: wait for that command to finish');
      await expectUnchanged();
    });
  }

  it('lets rollback without --yes show its plan while the lock is held (it writes nothing)', async () => {
    const cfg = writeConfig(pair);
    const r = await runCli(['rollback', '--config', cfg.file], cfg.env);
    expect(r.stderr).not.toContain('run lock');
    expect(r.stderr).toContain('there is no run to roll back');
    await expectUnchanged();
  });

  it('is free again once the holder ends, and the next command takes it', async () => {
    await holder.query('SELECT pg_advisory_unlock(25191, 1)');
    const cfg = writeConfig(pair);
    const r = await runCli(['quarantine', 'restore', '--config', cfg.file], cfg.env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('nothing to restore');
    await expectUnchanged();
  });
});
