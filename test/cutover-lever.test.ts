// Issue K defect 9 (cutover half): the TTL lever is raised before any target commits, so a lever that
// cannot be raised stops `migrate cutover` with nothing cut over (exit 8, as for a target whose
// prepare fails). The report never says "committed" then, and never claims the TTL was restored
// when it was never read; when the raise itself failed after reading, the value read is put back.
import fs from 'node:fs';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyCommand } from '../src/commands/apply.ts';
import { plainSink } from '../src/report/progress.ts';
import { createDbPair, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

/** A port nobody listens on: connecting fails at once with ECONNREFUSED. */
const DEAD_DSN = 'postgres://ops@127.0.0.1:1/ops';

describe('a TTL lever that cannot be raised stops the cutover before any target', () => {
  let pair: DbPair;
  let cfg: ReturnType<typeof writeConfig>;
  const state = () => withClient(pair.greenDsn, async (c) => (await c.query(`SELECT key, value FROM app_config ORDER BY key`)).rows.map((r) => `${r.key}=${r.value}`).join(','));
  /** The config with `lever` swapped in (the run is the same: cutover reads the journal). */
  const withLever = (lever: Record<string, unknown>): string => {
    const file = cfg.file.replace(/\.json$/, `.${Math.random().toString(36).slice(2)}.json`);
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg.file, 'utf8')), lever }));
    return file;
  };
  const sqlLever = (over: Record<string, unknown> = {}) => ({
    kind: 'sql', database: 'env:OPS_DSN',
    prepare: { sql: `SELECT value FROM app_config WHERE key = 'token_ttl'` },
    commit: { sql: `UPDATE app_config SET value = '86400' WHERE key = 'token_ttl'` },
    verify: { sql: `SELECT value FROM app_config WHERE key = 'token_ttl'`, expect: '86400' },
    rollback: { sql: `UPDATE app_config SET value = $1 WHERE key = 'token_ttl'`, params: ['{{saved}}'] },
    ...over,
  });

  beforeAll(async () => {
    pair = await createDbPair('lever_cut');
    await seedBlue(pair, { rows: 200, seed: 4, dirty: [] });
    cfg = writeConfig(pair, {
      cutover: {
        timeoutSeconds: 30,
        targets: [{
          name: 'config-table', kind: 'sql', database: 'green',
          prepare: { sql: `SELECT value FROM app_config WHERE key = 'upstream'` },
          commit: { sql: `UPDATE app_config SET value = 'green' WHERE key = 'upstream'` },
          rollback: { sql: `UPDATE app_config SET value = $1 WHERE key = 'upstream'`, params: ['{{saved}}'] },
        }],
      },
    });
    Object.assign(process.env, cfg.env);
    const applied = await applyCommand({ config: cfg.file, json: true, sink: plainSink(new PassThrough()) });
    expect(applied.exitCode, applied.text).toBe(0);
    await withClient(pair.greenDsn, (c) => c.query(`CREATE TABLE app_config (key text PRIMARY KEY, value text NOT NULL); INSERT INTO app_config VALUES ('upstream', 'blue'), ('token_ttl', '3600')`));
  });
  afterAll(async () => pair?.drop());

  it('exits 8 with "nothing was cut over" when the lever\'s database cannot be reached, and never says committed or restored', async () => {
    const res = await runCli(['cutover', '--config', withLever(sqlLever()), '--yes'], { ...cfg.env, OPS_DSN: DEAD_DSN });
    expect(res.code, res.stderr).toBe(8);
    const out = res.stdout + res.stderr;
    expect(out).toContain('error: the TTL lever could not be raised: cannot connect to env:OPS_DSN at postgres://ops@127.0.0.1:1/ops (ECONNREFUSED); nothing was cut over');
    expect(out).toContain('; nothing was cut over');
    expect(out).toContain('hint: the TTL was never read or changed and blue kept serving; fix lever.prepare');
    expect(out).not.toContain('committed');
    expect(out).not.toMatch(/\brestored\b/);
    // The report's verdict line (the whole report goes to stderr when the command fails).
    expect(res.stderr.split('\n')).toContain('nothing was cut over');
    expect(await state()).toBe('token_ttl=3600,upstream=blue');
  });

  it('stops the same way when the lever\'s prepare fails in a reachable database (a table that does not exist)', async () => {
    const res = await runCli(['cutover', '--config', withLever(sqlLever({ prepare: { sql: `SELECT value FROM no_such_settings` } })), '--yes', '--json'], { ...cfg.env, OPS_DSN: pair.greenDsn });
    expect(res.code, res.stderr).toBe(8);
    const doc = JSON.parse(res.stdout);
    expect(doc.error).toMatchObject({ name: 'LeverError', exitCode: 8, lever: { phase: 'prepare', after: null } });
    expect(doc.error.message).toMatch(/^the TTL lever could not be raised: .*no_such_settings.*; nothing was cut over$/);
    expect(doc.cutover).toMatchObject({ rolledBack: false, targets: [{ name: 'config-table', status: 'pending' }] });
    expect(res.stdout + res.stderr).not.toContain('committed');
    expect(await state()).toBe('token_ttl=3600,upstream=blue');
  });

  it('puts back the value it read when the raise does not verify, and still cuts nothing over', async () => {
    const res = await runCli(['cutover', '--config', withLever(sqlLever({ verify: { sql: `SELECT value FROM app_config WHERE key = 'token_ttl'`, expect: '999' } })), '--yes'], { ...cfg.env, OPS_DSN: pair.greenDsn });
    expect(res.code, res.stderr).toBe(8);
    const out = res.stdout + res.stderr;
    expect(out).toContain('the TTL lever could not be raised: the first value was "86400", expected "999"; nothing was cut over');
    expect(out).toContain('hint: the TTL was set back to "3600" and blue kept serving; fix lever.verify');
    expect(out).not.toContain('committed');
    expect(await state()).toBe('token_ttl=3600,upstream=blue');
  });
});
