// Every `env:NAME` in the config is checked when it loads, wherever it sits (targets, lever, probes,
// queue), and the schema errors, unset variables and missing folders come back in ONE round, so an
// operator never learns of the second problem only after fixing the first (issue K, defect 9).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveConfig } from '../src/config/load.ts';
import { ConfigError } from '../src/errors.ts';
import { guardedPair, runCli, V2_MIGRATIONS, writeConfig, type DbPair } from './harness.ts';

const opsTarget = {
  name: 'ops-table', kind: 'sql', database: 'env:OPS_DSN',
  commit: { sql: `UPDATE app_config SET value = 'green' WHERE key = 'upstream'` },
  rollback: { sql: `UPDATE app_config SET value = 'blue' WHERE key = 'upstream'` },
};
const opsLever = {
  kind: 'sql', database: 'env:OPS_DSN',
  prepare: { sql: `SELECT value FROM app_config WHERE key = 'token_ttl'` },
  commit: { sql: `UPDATE app_config SET value = '86400' WHERE key = 'token_ttl'` },
  rollback: { sql: `UPDATE app_config SET value = $1 WHERE key = 'token_ttl'`, params: ['{{saved}}'] },
};

describe('env: references outside the two DSNs', () => {
  let pair: DbPair;
  let expectUnchanged: () => Promise<void>;

  beforeAll(async () => {
    ({ pair, expectUnchanged } = await guardedPair('cfgenv', { rows: 30, seed: 4, dirty: [] }));
  });
  afterAll(async () => pair?.drop());

  it.each(['doctor', 'cutover --yes'])('makes migrate %s exit 2 naming OPS_DSN at every path that uses it, before any database changes', async (cmd) => {
    const cfg = writeConfig(pair, { cutover: { targets: [opsTarget] }, lever: opsLever });
    const r = await runCli([...cmd.split(' '), '--config', cfg.file], cfg.env);
    const out = r.stdout + r.stderr;
    expect(r.code, out).toBe(2);
    expect(out).toContain('cutover.targets.0.database: environment variable OPS_DSN is not set; export it before running migrate');
    expect(out).toContain('lever.database: environment variable OPS_DSN is not set');
    expect(out).not.toContain('committed');
    await expectUnchanged();
  });

  it('reports a schema error, an unset variable and a missing migrations folder together in one run', async () => {
    const cfg = writeConfig(pair, { migrations: { kind: 'pop', dir: 'no-such-folder' }, snapshot: { jobs: 0 }, queue: { kind: 'cloudflare-http', accountId: 'a', queueId: 'q', token: 'env:QUEUE_TOKEN_UNSET', hmacKey: 'env:QUEUE_HMAC_UNSET' } });
    const r = await runCli(['plan', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stderr).toBe(2);
    const issues = (JSON.parse(r.stdout) as { error: { issues: { path: string; message: string }[] } }).error.issues;
    expect(issues).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ path: 'snapshot.jobs' }),
        { path: 'queue.token', message: 'environment variable QUEUE_TOKEN_UNSET is not set; export it before running migrate' },
        { path: 'queue.hmacKey', message: 'environment variable QUEUE_HMAC_UNSET is not set; export it before running migrate' },
        { path: 'migrations.dir', message: `folder ${cfg.dir}/no-such-folder does not exist` },
      ]),
    );
    expect(JSON.parse(r.stdout).error.hint).toContain('export the named environment variables');
    await expectUnchanged();
  });
});

describe('resolving env: references', () => {
  const env = { B: 'postgres://u:blue-pw@127.0.0.1:5432/blue', G: 'postgres://u:green-pw@127.0.0.1:5433/green', OPS_DSN: 'postgres://ops:ops-pw@127.0.0.1:5434/ops', TOKEN: 'cf-token-value', HMAC: 'hmac-key-value', EMPTY: '' };
  const good = { blue: { dsn: 'env:B' }, green: { dsn: 'env:G' }, migrations: { kind: 'pop', dir: V2_MIGRATIONS } };

  it('remembers every resolved secret for redaction: DSN passwords, and tokens and keys whole', () => {
    const c = resolveConfig({ ...good, lever: opsLever, queue: { kind: 'cloudflare-http', accountId: 'a', queueId: 'q', token: 'env:TOKEN', hmacKey: 'env:HMAC' } }, '/x/c.json', env);
    expect(c.secrets).toEqual(expect.arrayContaining(['blue-pw', 'green-pw', 'ops-pw', 'cf-token-value', 'hmac-key-value']));
    expect(c.secrets.join(' ')).not.toContain('127.0.0.1');
  });

  it('finds env: names in places no list names, such as a watch probe, and calls an empty variable empty', () => {
    const probe = { name: 'ops', kind: 'sql', database: 'env:EMPTY', sql: 'SELECT 1' };
    try {
      resolveConfig({ ...good, watch: { probes: [probe] } }, '/x/c.json', env);
      throw new Error('expected a ConfigError');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).issues).toEqual([{ path: 'watch.probes.0.database', message: 'environment variable EMPTY is empty; export it before running migrate' }]);
      expect((err as ConfigError).message).not.toContain('blue-pw');
    }
  });

  it('never prints the value of a variable that is set', () => {
    try {
      resolveConfig({ ...good, colour: 'blue', lever: opsLever }, '/x/c.json', env);
    } catch (err) {
      expect(JSON.stringify((err as ConfigError).toJSON())).not.toMatch(/ops-pw|blue-pw/);
      return;
    }
    throw new Error('expected a ConfigError');
  });
});

