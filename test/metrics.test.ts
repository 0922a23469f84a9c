// The metrics report: pg_stat_database deltas on green are real counts of what happened since the
// baseline, step durations come from the journal, and `apply --dry-run --report-md` writes the
// Markdown a CI step summary shows.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Db } from '../src/db/connect.ts';
import { dbStats, delta, metricsMarkdown, metricsText } from '../src/report/metrics.ts';
import { createDbPair, runCli, seedBlue, writeConfig, type DbPair } from './harness.ts';

describe('metrics', () => {
  let pair: DbPair;
  let green: Db;
  beforeAll(async () => {
    pair = await createDbPair('metrics');
    green = await connect('green', pair.greenDsn);
  });
  afterAll(async () => {
    await green?.end();
    await pair?.drop();
  });

  it('counts rows inserted and updated and commits on green as deltas from the baseline', async () => {
    await green.query('CREATE TABLE m (id int PRIMARY KEY, v int)');
    const before = await dbStats(green);
    await green.query('INSERT INTO m SELECT g, 0 FROM generate_series(1, 500) g');
    await green.query('UPDATE m SET v = 1 WHERE id <= 120');
    const d = delta(await dbStats(green), before);
    expect(d.rowsInserted).toBe(500);
    expect(d.rowsUpdated).toBe(120);
    expect(d.commits).toBeGreaterThanOrEqual(2);
    const m = { green: d, steps: [{ name: 'snapshot', ms: 1234 }], probes: [{ name: 'auth', beforeMs: 12, afterMs: 15 }] };
    expect(metricsText(m)).toMatch(/rows inserted\s+500/);
    const md = metricsMarkdown(m, { title: 'migrate apply', ok: true });
    expect(md).toContain('| rows updated | 120 |');
    expect(md).toContain('| auth | 12 | 15 |');
  });

  it('apply --dry-run writes the Markdown report with steps, validation, cutover guardrails and green counters', async () => {
    const dry = await createDbPair('metrics_dry');
    try {
      await seedBlue(dry, { rows: 300, seed: 9, dirty: [] });
      const cfg = writeConfig(dry);
      const md = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-md-')), 'summary.md');
      const res = await runCli(['apply', '--dry-run', '--config', cfg.file, '--json', '--report-md', md], cfg.env);
      expect(res.code, res.stderr).toBe(0);
      const out = JSON.parse(res.stdout);
      expect(out.dryRun).toBe(true);
      expect(out.metrics.green.rowsInserted).toBeGreaterThan(300);
      expect(out.metrics.steps.map((s: { name: string }) => s.name)).toEqual(['preflight', 'capture', 'snapshot', 'cleanup', 'migrate', 'validate']);
      // The rehearsal says whether a cutover would be let through: migrated, validated, capture on, no backlog.
      expect(out.guardrails).toEqual([
        expect.objectContaining({ id: 'real-run', ok: false }),
        expect.objectContaining({ id: 'green-is-run-target', ok: true }),
        expect.objectContaining({ id: 'green-marker', ok: true }),
        expect.objectContaining({ id: 'green-validated', ok: true }),
        expect.objectContaining({ id: 'capture-active', ok: true }),
        expect.objectContaining({ id: 'drain-backlog', ok: true }),
        expect.objectContaining({ id: 'no-blocking-findings', ok: true }),
      ]);
      const text = fs.readFileSync(md, 'utf8');
      expect(text).toContain('## migrate apply --dry-run ✅');
      expect(text).toContain('Validation: **passed**');
      expect(text).toContain('✅ `drain-backlog`: 0 outbox rows not yet replayed');
      expect(text).toMatch(/\| rows inserted \| \d+ \|/);
    } finally {
      await dry.drop();
    }
  });
});
