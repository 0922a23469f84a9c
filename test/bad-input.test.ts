// Bad input gets a clear error naming the fix, its documented exit code, and no change to either database.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { guardedPair, runCli, V2_MIGRATIONS, writeConfig, type DbPair } from './harness.ts';

describe('bad input changes nothing', () => {
  let pair: DbPair;
  let expectUnchanged: () => Promise<void>;

  beforeAll(async () => {
    ({ pair, expectUnchanged } = await guardedPair('bad', { rows: 200, seed: 1, dirty: [] }));
  });
  afterAll(async () => pair?.drop());

  it('rejects malformed JSON config with exit 2 and names the file', async () => {
    const cfg = writeConfig(pair);
    fs.writeFileSync(cfg.file, '{ "blue": { "dsn": "env:TEST_BLUE_DSN" ,, }');
    const r = await runCli(['apply', '--config', cfg.file], cfg.env);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`config ${cfg.file} is invalid`);
    expect(r.stderr).toContain('not valid JSON');
    await expectUnchanged();
  });

  it('rejects an unknown key with exit 2, its path, and a --json error document', async () => {
    const cfg = writeConfig(pair, { snapshot: { jobs: 2, parallelism: 4 } });
    const r = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code).toBe(2);
    const doc = JSON.parse(r.stdout);
    expect(doc).toMatchObject({ ok: false, exitCode: 2, error: { name: 'ConfigError' } });
    expect(doc.error.issues).toEqual([expect.objectContaining({ path: 'snapshot', message: expect.stringContaining('"parallelism"') })]);
    await expectUnchanged();
  });

  it('reports an unreachable blue with exit 6 and never echoes the password', async () => {
    const cfg = writeConfig(pair);
    const r = await runCli(['apply', '--config', cfg.file], { ...cfg.env, TEST_BLUE_DSN: 'postgres://app:TopSecret-42@127.0.0.1:1/nowhere' });
    expect(r.code).toBe(6);
    expect(r.stderr).toContain('cannot reach blue at postgres://app@127.0.0.1:1/nowhere');
    expect(r.stderr).toContain('hint:');
    expect(r.stdout + r.stderr).not.toContain('TopSecret-42');
    await expectUnchanged();
  });

  it('reports an unreachable green with exit 7', async () => {
    const cfg = writeConfig(pair);
    const r = await runCli(['apply', '--config', cfg.file, '--json'], { ...cfg.env, TEST_GREEN_DSN: 'postgres://app:TopSecret-42@127.0.0.1:1/green' });
    expect(r.code).toBe(7);
    expect(r.stdout).not.toContain('TopSecret-42');
    await expectUnchanged();
  });

  it('stops on a migration with a syntax error before anything runs: exit 4, file, line and SQLSTATE', async () => {
    const cfg = writeConfig(pair);
    const dir = path.join(cfg.dir, 'migrations');
    fs.cpSync(V2_MIGRATIONS, dir, { recursive: true });
    const broken = path.join(dir, '20211011000099000000_broken.postgres.up.sql');
    fs.writeFileSync(broken, '-- a typo on line 3\nALTER TABLE hydra_client ADD COLUMN x int;\nALTER TABLE hydra_client ADD COLUMNN y int;\n');
    fs.writeFileSync(cfg.file, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg.file, 'utf8')), migrations: { kind: 'pop', dir } }));
    const r = await runCli(['apply', '--config', cfg.file], cfg.env);
    expect(r.code).toBe(4);
    expect(r.stderr).toContain(`${broken}:3:`);
    expect(r.stderr).toContain('SQLSTATE 42601');
    expect(r.stderr).toContain('nothing has been run');
    await expectUnchanged();
  });

  it('rejects contradictory flags with exit 1', async () => {
    const cfg = writeConfig(pair);
    const r = await runCli(['apply', '--config', cfg.file, '--resume', '--restart'], cfg.env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--resume and --restart exclude each other');
    const jobs = await runCli(['apply', '--config', cfg.file, '--jobs', '0'], cfg.env);
    expect(jobs.code).toBe(1);
    await expectUnchanged();
  });

  it('refuses --resume when there is nothing to resume, with exit 3', async () => {
    const cfg = writeConfig(pair);
    const r = await runCli(['apply', '--config', cfg.file, '--resume'], cfg.env);
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('no unfinished run');
    await expectUnchanged();
  });
});
