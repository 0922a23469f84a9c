// `migrate demo`: the whole blue-green flow on two throwaway embedded PostgreSQL clusters: seed a
// Hydra-v1-shaped blue (dirty rows included), apply, report, and clean up after itself.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { resolveConfig } from '../config/load.ts';
import { startCluster, type LocalCluster } from '../db/embedded.ts';
import { withDb } from '../db/connect.ts';
import { DIRTY_CLASSES, loadHydraV1Schema, seedHydraV1, type DirtyClass } from '../fixture/seed.ts';
import { UsageError } from '../errors.ts';
import type { ProgressSink } from '../runner.ts';
import { applyCommand } from './apply.ts';
import type { CommandResult } from './result.ts';

const V2_MIGRATIONS = fileURLToPath(new URL('../../sql/fixtures/hydra-v2-migrations', import.meta.url));

/** Flags of `migrate demo`. */
export interface DemoFlags {
  /** Access-token rows to seed. */
  rows: number;
  /** PRNG seed. */
  seed: number;
  /** Seed dirty rows (default true). */
  dirty: boolean;
  /** Print JSON. */
  json?: boolean;
  /** Progress sink override. */
  sink?: ProgressSink;
}

/** Runs `migrate demo`. */
export async function demoCommand(flags: DemoFlags): Promise<CommandResult> {
  if (!Number.isInteger(flags.rows) || flags.rows < 10) throw new UsageError(`--rows must be a whole number of at least 10 (got ${flags.rows})`, 'for example --rows 20000');
  if (!Number.isInteger(flags.seed)) throw new UsageError(`--seed must be a whole number (got ${flags.seed})`, 'for example --seed 42');
  const say = (text: string): void => void process.stderr.write(`demo: ${text}\n`);
  const workdir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-demo-'));
  fs.chmodSync(workdir, 0o755);
  const clusters: LocalCluster[] = [];
  try {
    say('starting two PostgreSQL 15 clusters (blue, green)');
    const [blue, green] = await Promise.all([startCluster({ name: 'blue', baseDir: workdir }), startCluster({ name: 'green', baseDir: workdir })]);
    clusters.push(blue, green);
    await withDb('blue', blue.dsn(), (db) => db.query('CREATE DATABASE hydra'));
    await withDb('green', green.dsn(), (db) => db.query('CREATE DATABASE hydra'));
    const dirty: DirtyClass[] = flags.dirty ? [...DIRTY_CLASSES] : [];
    say(`seeding blue: ${flags.rows} token rows, seed ${flags.seed}, dirty classes: ${dirty.join(', ') || 'none'}`);
    const seeded = await withDb('blue', blue.dsn('hydra'), async (db) => {
      await loadHydraV1Schema(db);
      return seedHydraV1(db, { rows: flags.rows, seed: flags.seed, dirty });
    });
    const env = { BLUEGREEN_DEMO_BLUE_DSN: blue.dsn('hydra'), BLUEGREEN_DEMO_GREEN_DSN: green.dsn('hydra') };
    const config = resolveConfig(
      {
        blue: { dsn: 'env:BLUEGREEN_DEMO_BLUE_DSN' },
        green: { dsn: 'env:BLUEGREEN_DEMO_GREEN_DSN' },
        profile: 'hydra',
        migrations: { kind: 'pop', dir: V2_MIGRATIONS },
      },
      path.join(workdir, 'demo.config.json'),
      env,
    );
    const applied = await applyCommand({ config, json: flags.json, ...(flags.sink ? { sink: flags.sink } : {}) });
    const json = { ...applied.json, demo: { rows: flags.rows, seed: flags.seed, dirtyRowsSeeded: seeded.dirty.length, tokens: seeded.tokens } };
    const text = [`demo: blue seeded with ${seeded.tokens} tokens and ${seeded.dirty.length} dirty rows (seed ${flags.seed})`, applied.text].join('\n');
    return { exitCode: applied.exitCode, json, text };
  } finally {
    say('stopping clusters and removing temp files');
    await Promise.all(clusters.map((c) => c.stop()));
    fs.rmSync(workdir, { recursive: true, force: true });
  }
}
