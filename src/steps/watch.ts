// Watch: after the cutover, probe the services (http, sql, command) every few seconds for a
// configured window. A breached threshold (error rate, latency, a failing invariant) ends the
// watch early with the reason; the cutover phase then rolls back automatically.

import { runAction, type ActionEnv } from '../cutover/actions.ts';
import { probeAction, type ProbeSpec, type WatchSpec } from '../cutover/schema.ts';
import { wiringOf } from '../cutover/wiring.ts';
import { ExitCode, OperatorError } from '../errors.ts';
import { checkInvariants, invariantFailures, invariantsOf } from '../validate/invariants.ts';
import type { Action, Step } from './step.ts';

/** Figures for one probe over the window. */
export interface ProbeStats {
  /** Probe name. */
  name: string;
  /** Samples taken. */
  samples: number;
  /** Failed samples. */
  errors: number;
  /** errors / samples. */
  errorRate: number;
  /** Mean latency over all samples (ms). */
  meanMs: number;
  /** Last failure message. */
  lastError?: string;
}

/** What breached, and why. */
export interface Breach {
  /** Probe or invariant name. */
  probe: string;
  /** error-rate, latency or invariant. */
  kind: 'error-rate' | 'latency' | 'invariant';
  /** One sentence. */
  reason: string;
}

/** The outcome of a watch window. */
export interface WatchResult {
  /** The first breach, or null when the window passed clean. */
  breach: Breach | null;
  /** Per-probe figures. */
  probes: ProbeStats[];
  /** Rounds of probing done. */
  rounds: number;
  /** Wall time. */
  ms: number;
}

/** Checks invariants during the watch; returns failure lines (empty when all hold). */
export type InvariantCheck = (names: readonly string[]) => Promise<string[]>;

interface Sample {
  ok: boolean;
  ms: number;
  error?: string;
}

async function sample(probe: ProbeSpec, env: ActionEnv): Promise<Sample> {
  try {
    return { ok: true, ms: (await runAction(probeAction(probe), env)).ms };
  } catch (err) {
    return { ok: false, ms: (err as { ms?: number }).ms ?? 0, error: (err as Error).message };
  }
}

function stats(name: string, samples: readonly Sample[]): ProbeStats {
  const errors = samples.filter((s) => !s.ok).length;
  const last = [...samples].reverse().find((s) => !s.ok);
  return {
    name,
    samples: samples.length,
    errors,
    errorRate: samples.length ? errors / samples.length : 0,
    meanMs: samples.length ? Math.round(samples.reduce((a, s) => a + s.ms, 0) / samples.length) : 0,
    ...(last?.error ? { lastError: last.error } : {}),
  };
}

/** Probes every probe once, in parallel: the "before" latency for the report. */
export async function probeOnce(probes: readonly ProbeSpec[], env: ActionEnv): Promise<ProbeStats[]> {
  return Promise.all(probes.map(async (p) => stats(p.name, [await sample(p, env)])));
}

function breachOf(spec: WatchSpec, name: string, samples: readonly Sample[]): Breach | null {
  const { maxErrorRate, maxLatencyMs, minSamples } = spec.thresholds;
  if (samples.length < minSamples) return null;
  const s = stats(name, samples);
  if (s.errorRate > maxErrorRate) return { probe: name, kind: 'error-rate', reason: `${name}: ${s.errors} of ${s.samples} probes failed (${(s.errorRate * 100).toFixed(0)}% > ${(maxErrorRate * 100).toFixed(0)}%); last: ${s.lastError}` };
  const recent = samples.slice(-minSamples);
  const mean = recent.reduce((a, x) => a + x.ms, 0) / recent.length;
  if (mean > maxLatencyMs) return { probe: name, kind: 'latency', reason: `${name}: mean latency of the last ${minSamples} probes ${Math.round(mean)} ms > ${maxLatencyMs} ms` };
  return null;
}

/** Probes for the window (or until a breach), `intervalSeconds` apart. */
export async function watchWindow(spec: WatchSpec, env: ActionEnv, opts: { invariants?: InvariantCheck; progress?: (text: string) => void } = {}): Promise<WatchResult> {
  const started = performance.now();
  const deadline = started + spec.windowSeconds * 1000;
  const samples = new Map<string, Sample[]>(spec.probes.map((p) => [p.name, []]));
  let rounds = 0;
  const result = (breach: Breach | null): WatchResult => ({ breach, probes: spec.probes.map((p) => stats(p.name, samples.get(p.name)!)), rounds, ms: Math.round(performance.now() - started) });
  for (;;) {
    const roundStart = performance.now();
    const taken = await Promise.all(spec.probes.map((p) => sample(p, env)));
    rounds += 1;
    spec.probes.forEach((p, i) => samples.get(p.name)!.push(taken[i]!));
    for (const p of spec.probes) {
      const breach = breachOf(spec, p.name, samples.get(p.name)!);
      if (breach) return result(breach);
    }
    if (spec.invariants.length && opts.invariants) {
      const failed = await opts.invariants(spec.invariants);
      if (failed.length) return result({ probe: spec.invariants.join(','), kind: 'invariant', reason: failed.join('; ') });
    }
    opts.progress?.(`watch round ${rounds}: ${taken.filter((t) => t.ok).length}/${taken.length} probes ok`);
    const next = roundStart + spec.intervalSeconds * 1000;
    if (next >= deadline) return result(null);
    // The probing schedule itself: the next round is due at a fixed time, nothing to await instead.
    await new Promise((resolve) => setTimeout(resolve, next - performance.now()));
  }
}

/** The watch window ended in a breach (the cutover is rolled back). */
export class WatchBreachError extends OperatorError {
  constructor(readonly result: WatchResult) {
    super(`${result.breach!.kind} breached: ${result.breach!.reason}`, {
      hint: 'the cutover is rolled back; look at the named probe, fix it and run `migrate cutover` again',
      exitCode: ExitCode.cutoverRolledBack,
      detail: { watch: result },
    });
  }
}

/** The watch step: nothing to do when no watch window is configured. */
export const watch = {
  name: 'watch',
  purpose: 'probe the services on green for the watch window; a breach rolls the cutover back',
  async validate() {},
  async plan(ctx) {
    const spec = wiringOf(ctx).watch;
    if (!spec) return [];
    const specs = invariantsOf(ctx.config);
    return [{
      id: 'window',
      sentence: `probe ${spec.probes.map((p) => p.name).join(', ')} every ${spec.intervalSeconds} s for ${spec.windowSeconds} s (max error rate ${spec.thresholds.maxErrorRate}, max latency ${spec.thresholds.maxLatencyMs} ms)`,
      side: 'none',
      execute: async ({ ctx: c }) => {
        const result = await watchWindow(spec, wiringOf(c).env, {
          invariants: async (names) => invariantFailures(await checkInvariants(c.blue, c.green, specs.filter((s) => names.includes(s.name)), { drained: true })),
          progress: c.progress,
        });
        if (result.breach) throw new WatchBreachError(result);
        return { watch: result };
      },
    }] satisfies Action[];
  },
  async summarize(_ctx, details) {
    return { watch: details.get('window')?.watch ?? null };
  },
  async verify() {},
} satisfies Step;
