// The TTL lever on a real journal: raise records the old value, raising again is a no-op, a raise
// whose verify fails restores at once (exit 8), a prepare that fails changes and restores nothing,
// a raise after a failed restore keeps the first value read, and restore after a failed cutover
// brings the old value back whether the lever is a SQL setting or a real command.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ActionEnv } from '../src/cutover/actions.ts';
import { twoPhaseCutover } from '../src/cutover/coordinator.ts';
import type { LeverSpec, TargetSpec } from '../src/cutover/schema.ts';
import { leverRecord } from '../src/cutover/state.ts';
import { connect, type Db } from '../src/db/connect.ts';
import { installState, Journal, openRun } from '../src/state/journal.ts';
import { LeverError, raiseLever, restoreLever } from '../src/steps/lever.ts';
import { createDbPair, withClient, type DbPair } from './harness.ts';

const sqlLever = (verifyExpect = '86400'): Extract<LeverSpec, { kind: 'sql' }> => ({
  kind: 'sql', database: 'green',
  prepare: { sql: `SELECT value FROM app_config WHERE key = 'token_ttl'`, params: [] },
  commit: { sql: `UPDATE app_config SET value = '86400' WHERE key = 'token_ttl'`, params: [] },
  verify: { sql: `SELECT value FROM app_config WHERE key = 'token_ttl'`, params: [], expect: verifyExpect },
  rollback: { sql: `UPDATE app_config SET value = $1 WHERE key = 'token_ttl'`, params: ['{{saved}}'] },
});

describe('the TTL lever', () => {
  let pair: DbPair;
  let blue: Db;
  let journal: Journal;
  let env: ActionEnv;
  const ttl = () => withClient(pair.greenDsn, async (c) => (await c.query(`SELECT value FROM app_config WHERE key = 'token_ttl'`)).rows[0].value);

  beforeAll(async () => {
    pair = await createDbPair('lever');
    await withClient(pair.greenDsn, (c) => c.query(`CREATE TABLE app_config (key text PRIMARY KEY, value text NOT NULL)`));
    blue = await connect('blue', pair.blueDsn);
    env = { blueDsn: pair.blueDsn, greenDsn: pair.greenDsn, kv: () => { throw new Error('no kv here'); }, env: {} };
  });
  beforeEach(async () => {
    await withClient(pair.greenDsn, (c) => c.query(`INSERT INTO app_config VALUES ('token_ttl', '3600') ON CONFLICT (key) DO UPDATE SET value = '3600'`));
    await installState(blue);
    const { run } = await openRun(blue, { mode: 'restart', configDigest: 'x', greenTarget: 'g' });
    journal = new Journal(blue, run.run_id);
  });
  afterAll(async () => {
    await blue?.end();
    await pair?.drop();
  });

  it('raises the TTL, records the old value in the journal, and a second raise changes nothing', async () => {
    expect(await raiseLever(sqlLever(), env, journal)).toEqual({ state: 'raised', saved: '3600' });
    expect(await ttl()).toBe('86400');
    expect(await leverRecord(journal)).toEqual({ state: 'raised', saved: '3600' });
    expect(await raiseLever(sqlLever(), env, journal)).toEqual({ state: 'raised', saved: '3600' });
    expect(await restoreLever(sqlLever(), env, journal)).toEqual({ state: 'restored', saved: '3600' });
    expect(await ttl()).toBe('3600');
  });

  it('restores at once and fails with exit 8 when the raised value does not verify', async () => {
    const err = await raiseLever(sqlLever('999'), env, journal).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LeverError);
    expect((err as LeverError).exitCode).toBe(8);
    expect(await ttl()).toBe('3600');
    expect((await leverRecord(journal))?.state).toBe('restored');
  });

  it('changes nothing, records nothing and claims no restore when its prepare fails', async () => {
    const err = await raiseLever({ ...sqlLever(), prepare: { sql: 'SELECT value FROM no_such_settings', params: [] } }, env, journal).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LeverError);
    expect(err).toMatchObject({ exitCode: 8, phase: 'prepare', after: null });
    expect((err as LeverError).message).toMatch(/^the TTL lever could not be raised: .*no_such_settings.*; nothing was cut over$/);
    expect((err as LeverError).hint).toContain('the TTL was never read or changed');
    expect(await leverRecord(journal)).toBeNull();
    expect(await ttl()).toBe('3600');
  });

  it('keeps the value it first read when raised again after a failed restore (the TTL is still high then)', async () => {
    await raiseLever(sqlLever(), env, journal);
    const broken = { ...sqlLever(), rollback: { sql: 'UPDATE no_such_settings SET value = $1', params: ['{{saved}}'] } };
    expect(await restoreLever(broken, env, journal)).toMatchObject({ state: 'restore-failed', saved: '3600' });
    expect(await ttl()).toBe('86400');
    expect(await raiseLever(sqlLever(), env, journal)).toEqual({ state: 'raised', saved: '3600' });
    expect(await restoreLever(sqlLever(), env, journal)).toEqual({ state: 'restored', saved: '3600' });
    expect(await ttl()).toBe('3600');
  });

  it('is restored after a cutover that rolled back', async () => {
    await raiseLever(sqlLever(), env, journal);
    const failing: TargetSpec = { name: 'broken', kind: 'sql', database: 'green', commit: { sql: 'SELECT 1/0', params: [] }, rollback: { sql: 'SELECT 1', params: [] } } as TargetSpec;
    const outcome = await twoPhaseCutover([failing], env, { timeoutMs: 10_000 });
    expect(outcome.failure).toMatchObject({ target: 'broken', phase: 'commit' });
    expect(await ttl()).toBe('86400');
    await restoreLever(sqlLever(), env, journal);
    expect(await ttl()).toBe('3600');
  });

  it('works through a real command too (argv, no shell)', async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-lever-')), 'ttl');
    fs.writeFileSync(file, '900');
    const node = process.execPath;
    const lever = {
      kind: 'command',
      prepare: { argv: [node, '-e', 'process.stdout.write(require("fs").readFileSync(process.argv[1], "utf8"))', file], timeoutSeconds: 10, env: {} },
      commit: { argv: [node, '-e', 'require("fs").writeFileSync(process.argv[1], "86400")', file], timeoutSeconds: 10, env: {} },
      rollback: { argv: [node, '-e', 'require("fs").writeFileSync(process.argv[1], process.argv[2])', file, '{{saved}}'], timeoutSeconds: 10, env: {} },
    } as LeverSpec;
    await raiseLever(lever, env, journal);
    expect(fs.readFileSync(file, 'utf8')).toBe('86400');
    await restoreLever(lever, env, journal);
    expect(fs.readFileSync(file, 'utf8')).toBe('900');
  });
});
