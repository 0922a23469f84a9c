// Quarantine round trip on a green paused right after cleanup: `quarantine restore` puts back rows
// and rewritten values (escaped pipe lists, replaced session text) byte-identical to blue's, and the
// v2 migrations pass on a cleaned green.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DIRTY_CLASSES } from '../support/fixture/seed.ts';
import { createDbPair, kill9, runCli, seedBlue, startCliUntil, tableChecksums, writeConfig, type DbPair } from './harness.ts';

describe('quarantine restore', () => {
  let pair: DbPair;
  let cfg: ReturnType<typeof writeConfig>;

  beforeAll(async () => {
    pair = await createDbPair('quarantine');
    await seedBlue(pair, { rows: 2000, seed: 9, dirty: DIRTY_CLASSES });
    cfg = writeConfig(pair);
    const { child } = await startCliUntil(['apply', '--config', cfg.file, '--drill-pause', 'before:migrate:*'], cfg.env, 'fault: paused before migrate:');
    await kill9(child);
  });
  afterAll(async () => pair?.drop());

  it('lists what cleanup moved and what it rewrote in place, by rule, with every dirty class present', async () => {
    const r = await runCli(['quarantine', 'list', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stderr).toBe(0);
    const listed = JSON.parse(r.stdout);
    const rules = new Set(listed.entries.map((e: { rule: string }) => e.rule));
    for (const rule of ['duplicate-consent', 'unhandled-login']) expect(rules.has(rule)).toBe(true);
    // Quoted lists and broken session JSON keep their rows: the values are rewritten, the old ones held for restore.
    const rewritten = new Set(listed.rewrites.map((e: { rule: string; table: string; column: string }) => `${e.rule} ${e.table}.${e.column}`));
    expect(rewritten).toContain('pipe-quote public.hydra_client.redirect_uris');
    expect(rewritten).toContain('invalid-json public.hydra_oauth2_consent_request_handled.session_access_token');
    for (const rule of ['pipe-quote', 'invalid-json']) expect(rules.has(rule)).toBe(false);
  });

  it('restores every quarantined row and every rewritten value byte-identical to blue', async () => {
    const r = await runCli(['quarantine', 'restore', '--config', cfg.file, '--json'], cfg.env);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).rows).toBeGreaterThan(0);
    const [blue, green] = await Promise.all([tableChecksums(pair.blueDsn), tableChecksums(pair.greenDsn)]);
    const userTables = Object.keys(blue).filter((t) => t.startsWith('public.'));
    expect(userTables.length).toBeGreaterThan(5);
    for (const t of userTables) expect(green[t], t).toBe(blue[t]);
  });
});
