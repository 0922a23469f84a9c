// What the demo's clients saw around the flip (issue H item 3): every HTTP attempt of the traffic that
// ran through the cutover phase, split into before, during and after the flip action, with the
// longest hold behind the router's fence, the failed attempts and the latency of each part.

import type { RequestTiming } from './traffic.ts';

/** Latency of one part of the traffic. */
export interface LatencyFigures {
  /** Attempts in this part. */
  requests: number;
  /** Median, 99th percentile and maximum, in ms (0 without requests). */
  p50Ms: number;
  /** 99th percentile in ms. */
  p99Ms: number;
  /** Slowest attempt in ms. */
  maxMs: number;
}

/** The clients' view of a cutover. */
export interface FlipClientView {
  /** The longest time a request was held by the fence or left without an answer while the flip ran. */
  blackoutMs: number;
  /** Attempts that failed (no answer, or a 5xx) from the start of the cutover phase's traffic to its end. */
  failedRequests: number;
  /** Attempts the router held behind its fence. */
  heldRequests: number;
  /** Longest hold of any attempt, in ms. */
  longestHoldMs: number;
  /** Latency sent before the flip started, overlapping it, and sent after it ended. */
  latency: { before: LatencyFigures; during: LatencyFigures; after: LatencyFigures };
  /** The flip action's start and end (ms since the epoch), null when it never ran. */
  flip: { startedAt: number; endedAt: number } | null;
}

const failed = (t: RequestTiming): boolean => t.status === 0 || t.status >= 500;

function figures(ts: readonly RequestTiming[]): LatencyFigures {
  const ms = ts.map((t) => t.ms).sort((a, b) => a - b);
  const at = (q: number): number => (ms.length ? Math.round(ms[Math.min(ms.length - 1, Math.floor(q * ms.length))]!) : 0);
  return { requests: ms.length, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: ms.length ? Math.round(ms.at(-1)!) : 0 };
}

/** Summarises the attempts of the cutover phase's traffic against the flip's window. */
export function flipClientView(timings: readonly RequestTiming[], flip: { startedAt: number; endedAt: number } | null): FlipClientView {
  const overlaps = (t: RequestTiming): boolean => !!flip && t.at <= flip.endedAt && t.at + t.ms >= flip.startedAt;
  const during = timings.filter(overlaps);
  const before = timings.filter((t) => !overlaps(t) && (!flip || t.at < flip.startedAt));
  const after = timings.filter((t) => !overlaps(t) && !!flip && t.at > flip.endedAt);
  return {
    blackoutMs: Math.round(Math.max(0, ...during.map((t) => (failed(t) ? t.ms : t.heldMs)))),
    failedRequests: timings.filter(failed).length,
    heldRequests: timings.filter((t) => t.heldMs > 0).length,
    longestHoldMs: Math.round(Math.max(0, ...timings.map((t) => t.heldMs))),
    latency: { before: figures(before), during: figures(during), after: figures(after) },
    flip,
  };
}
