// `migrate finish` removes everything migrate installed (capture triggers, state schemas, replication
// objects) and keeps the quarantine; it refuses while a rollback may still need the capture, and an
// upgrade abandoned before any target went live leaves blue exactly as it was before migrate touched it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DIRTY_CLASSES } from '../support/fixture/seed.ts';
import { ExitCode } from '../src/errors.ts';
import { createDbPair, fingerprint, runCli, seedBlue, withClient, writeConfig, type DbPair } from './harness.ts';

describe('migrate finish', () => {
  let pair: DbPair;
  let cfg: ReturnType<typeof writeConfig>;
  let blueBefore: string;

  beforeAll(async () => {
    pair = await createDbPair('finish');
    await seedBlue(pair, { rows: 400, seed: 21, dirty: DIRTY_CLASSES });
    blueBefore = await fingerprint(pair.blueDsn);
    cfg = writeConfig(pair);
    const applied = await runCli(['apply', '--config', cfg.file, '--json'], cfg.env);
    expect(applied.code, applied.stderr).toBe(0);
  });
  afterAll(async () => pair?.drop());

  it('refuses with exit 3 before a cutover passed its watch, naming --abandon, and removes nothing', async () => {
    const before = { blue: await fingerprint(pair.blueDsn), green: await fingerprint(pair.greenDsn) };
    const r = await runCli(['finish', '--config', cfg.file, '--yes'], cfg.env);
    expect(r.code).toBe(ExitCode.state);
    expect(r.stderr).toContain('has no cutover that passed its watch window');
    expect(r.stderr).toContain('migrate finish --abandon --yes');
    expect(await fingerprint(pair.blueDsn)).toBe(before.blue);
    expect(await fingerprint(pair.greenDsn)).toBe(before.green);
  });

  it('lists what it would remove without --yes, and the quarantine it keeps', async () => {
    const r = await runCli(['finish', '--config', cfg.file, '--abandon', '--json'], cfg.env);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as { done: boolean; remove: { id: string; sql: string }[]; kept: { table: string; rows: number }[] };
    expect(doc.done).toBe(false);
    const ids = doc.remove.map((a) => a.id);
    expect(ids).toContain('blue:schema:bluegreen');
    expect(ids).toContain('green:schema:bluegreen_green');
    expect(ids.some((id) => id.startsWith('blue:trigger:bluegreen_capture_delete:'))).toBe(true);
    expect(doc.kept.length).toBeGreaterThan(0);
  });

  it('leaves blue exactly as it was before migrate, and green with only the data and the quarantine', async () => {
    const r = await runCli(['finish', '--config', cfg.file, '--abandon', '--yes'], cfg.env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('removed:');
    expect(r.stdout).toContain('kept on green');
    expect(await fingerprint(pair.blueDsn)).toBe(blueBefore);
    const green = await withClient(pair.greenDsn, async (c) => ({
      schemas: (await c.query<{ n: string }>(`SELECT nspname AS n FROM pg_namespace WHERE nspname LIKE 'bluegreen%' ORDER BY 1`)).rows.map((x) => x.n),
      triggers: Number((await c.query<{ n: string }>(`SELECT count(*) AS n FROM pg_trigger WHERE tgname LIKE 'bluegreen%'`)).rows[0]!.n),
      quarantined: Number((await c.query<{ n: string }>(`SELECT count(*) AS n FROM bluegreen_quarantine.hydra_oauth2_access`)).rows[0]!.n),
    }));
    expect(green.schemas).toEqual(['bluegreen_quarantine']);
    expect(green.triggers).toBe(0);
    expect(green.quarantined).toBeGreaterThan(0);
  });

  it('is idempotent: a second finish finds nothing left', async () => {
    const r = await runCli(['finish', '--config', cfg.file, '--abandon', '--yes'], cfg.env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('nothing of migrate is left on blue or green');
  });
});
