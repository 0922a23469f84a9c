// Config shapes for the cutover half of the tool: targets (sql, http, command, kv) with prepare,
// commit, verify and rollback actions, the edge router's fenced flip (route: the four phases are
// fixed, see route.ts), the TTL lever (the same shape), watch probes and thresholds,
// semantic invariants and guardrails. src/config/schema.ts plugs these into the one config file.

import { z } from 'zod';
import type { RouteAction } from './route.ts';

const envName = /^[A-Za-z_][A-Za-z0-9_]*$/;
const seconds = z.number().positive().max(3600);

/** `blue`, `green`, or `env:NAME` holding a DSN (secrets stay in the environment). */
const databaseRef = z.string().refine((v) => v === 'blue' || v === 'green' || (v.startsWith('env:') && envName.test(v.slice(4))), {
  message: 'write blue, green, or env:NAME (a variable holding a postgres:// DSN)',
});

/** A statement on one database; `params` are bind parameters (`{{saved}}` becomes the value prepare read). */
const sqlStep = z.strictObject({
  sql: z.string().min(1),
  params: z.array(z.string()).default([]).describe('bind parameters $1..$n; "{{saved}}" is the value prepare read'),
  expect: z.string().optional().describe('the first column of the first row must equal this text'),
});
const httpStep = z.strictObject({
  method: z.enum(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE']).default('GET'),
  url: z.url(),
  status: z.number().int().min(100).max(599).default(200).describe('expected HTTP status'),
  timeoutSeconds: seconds.default(5),
  headers: z.record(z.string(), z.string()).default({}),
  body: z.string().optional(),
  expect: z.string().optional().describe('the response body (trimmed) must equal this text'),
});
const commandStep = z.strictObject({
  argv: z.array(z.string().min(1)).min(1).describe('program and arguments; run without a shell'),
  timeoutSeconds: seconds.default(30),
  env: z.record(z.string(), z.string()).default({}),
  expect: z.string().optional().describe('stdout (trimmed) must equal this text'),
});
const kvStep = z.strictObject({
  put: z.string().optional().describe('value to write; "{{saved}}" writes back what prepare read (deletes the key if it was absent)'),
  expect: z.string().optional().describe('the stored value must equal this text'),
});

const phases = <T extends z.ZodType>(step: T) => ({ prepare: step.optional(), commit: step, verify: step.optional(), rollback: step });

/** The fields shared by every kind of target, per kind. */
const targetKinds = [
  z.strictObject({ kind: z.literal('sql'), database: databaseRef, ...phases(sqlStep) }),
  z.strictObject({ kind: z.literal('http'), ...phases(httpStep) }),
  z.strictObject({ kind: z.literal('command'), ...phases(commandStep) }),
  z.strictObject({ kind: z.literal('kv'), namespaceId: z.string().min(1), key: z.string().min(1), ...phases(kvStep) }),
] as const;

/** The edge router's fenced flip: prepare raises the fence, commit flips through it, verify reads it, rollback lowers or flips back. */
const routeTarget = z.strictObject({
  kind: z.literal('route'),
  url: z.url().describe("the edge router's base URL; its admin endpoint is <url>/__bluegreen/route/<op>"),
  token: z.string().regex(/^env:[A-Za-z_][A-Za-z0-9_]*$/, "must be env:NAME (the router's ROUTE_ADMIN_TOKEN comes from the environment)"),
  holdMs: z.number().int().min(1).max(120_000).default(10_000).describe('hold budget: requests wait at most this long for the flip, then go back to the old side'),
  drainMs: z.number().int().min(0).max(120_000).default(2_000).describe('how long prepare waits for requests of the old side still in flight'),
  timeoutSeconds: seconds.default(10).describe('per admin request (raise gets drainMs on top)'),
  commit: z.strictObject({ upstream: z.url().describe('the engine the router sends traffic to after the flip') }),
});

const targetName = z.string().regex(/^[a-z0-9][a-z0-9-]*$/, 'use lower-case letters, digits and dashes');

/** Cutover: the targets, flipped two-phase under one overall timeout. */
export const cutoverSchema = z.strictObject({
  timeoutSeconds: seconds.default(60).describe('prepare + commit + verify of all targets must finish within this'),
  targets: z
    .array(z.discriminatedUnion('kind', [targetKinds[0].extend({ name: targetName }), targetKinds[1].extend({ name: targetName }), targetKinds[2].extend({ name: targetName }), targetKinds[3].extend({ name: targetName }), routeTarget.extend({ name: targetName })]))
    .min(1)
    .refine((ts) => new Set(ts.map((t) => t.name)).size === ts.length, { message: 'target names must be unique' })
    .refine((ts) => ts.every((t) => t.kind !== 'route' || t.drainMs <= t.holdMs), { message: 'a route target needs drainMs <= holdMs (the drain runs inside the hold budget)' }),
});

/** The TTL lever: prepare reads the current TTL (remembered), commit raises it, rollback restores `{{saved}}`. */
export const leverSchema = z.discriminatedUnion('kind', [...targetKinds]);

const probeSchema = z.discriminatedUnion('kind', [
  z.strictObject({ name: targetName, kind: z.literal('sql'), database: databaseRef, ...sqlStep.shape }),
  z.strictObject({ name: targetName, kind: z.literal('http'), ...httpStep.shape }),
  z.strictObject({ name: targetName, kind: z.literal('command'), ...commandStep.shape }),
]);

/** Watch: probe for a window after cutover; a breached threshold rolls back automatically. */
export const watchSchema = z.strictObject({
  windowSeconds: seconds.default(60),
  intervalSeconds: seconds.default(5),
  probes: z.array(probeSchema).default([]),
  thresholds: z
    .strictObject({
      maxErrorRate: z.number().min(0).max(1).default(0.2).describe('failed probes / all probes, per probe, once minSamples were taken'),
      maxLatencyMs: z.number().positive().default(2000).describe('mean latency of a probe over its last minSamples samples'),
      minSamples: z.number().int().min(1).default(3),
    })
    .default({ maxErrorRate: 0.2, maxLatencyMs: 2000, minSamples: 3 }),
  invariants: z.array(z.string()).default([]).describe('names of invariants checked every interval; a failing one is a breach'),
});

/** A semantic invariant: a query on blue, a query on green, and the relation their keys must satisfy. */
export const invariantSchema = z.strictObject({
  name: targetName,
  description: z.string().default(''),
  blue: z.string().min(1).optional().describe('returns one key per row (first column); may use $1 = capture start, $2 = drained (boolean), $3 = the snapshot of the copy (txid_snapshot: keep rows whose xmin it saw)'),
  green: z.string().min(1).describe('returns one key per row; for green-empty it gets blue\'s keys as $1 (text[]) when blue is set'),
  relation: z.enum(['equal', 'equal-counts', 'blue-subset-of-green', 'green-empty']),
  quarantine: z
    .array(z.strictObject({ table: z.string().regex(/^[^.\s]+\.[^.\s]+$/), key: z.string().min(1).describe('SQL over the quarantined row (jsonb `row`) giving the same key') }))
    .default([])
    .describe('blue keys quarantined on green are listed as expected losses by rule (never failed, never credited as present)'),
  removedOnGreen: z
    .array(z.strictObject({ table: z.string().regex(/^[^.\s]+\.[^.\s]+$/), key: z.string().min(1).describe('SQL over the captured row key (jsonb `row_key`) giving the same key') }))
    .optional()
    .describe("after the flip green serves: blue keys its own clients removed (green's revocation capture, bluegreen.outbox on green) are listed as expected, never failed"),
});

/** Guardrails checked before any target is committed. */
export const guardrailsSchema = z.strictObject({
  maxDrainBacklog: z.number().int().min(0).default(1000).describe('outbox rows not yet replayed into green'),
});

/** A sql action, resolved. */
export type SqlAction = { kind: 'sql'; database: string } & z.infer<typeof sqlStep>;
/** An http action, resolved. */
export type HttpAction = { kind: 'http' } & z.infer<typeof httpStep>;
/** A command action, resolved. */
export type CommandAction = { kind: 'command' } & z.infer<typeof commandStep>;
/** A kv action, resolved. */
export type KvAction = { kind: 'kv'; namespaceId: string; key: string } & z.infer<typeof kvStep>;
/** Any action, with its kind and target-level fields folded in. */
export type ActionSpec = SqlAction | HttpAction | CommandAction | KvAction | RouteAction;
/** A configured target. */
export type TargetSpec = z.infer<typeof cutoverSchema>['targets'][number];
/** The configured lever. */
export type LeverSpec = z.infer<typeof leverSchema>;
/** The watch section. */
export type WatchSpec = z.infer<typeof watchSchema>;
/** A watch probe. */
export type ProbeSpec = WatchSpec['probes'][number];
/** A configured invariant. */
export type InvariantSpec = z.infer<typeof invariantSchema>;
/** Which phase of a target. */
export type Phase = 'prepare' | 'commit' | 'verify' | 'rollback';

/** The action a target (or the lever) runs in one phase, with the target-level fields folded in; null when not configured. */
export function actionOf(target: TargetSpec | LeverSpec, phase: Phase): ActionSpec | null {
  if (target.kind === 'route') {
    const { url, token, holdMs, drainMs, timeoutSeconds } = target;
    return { kind: 'route', phase, url, token, holdMs, drainMs, timeoutSeconds, upstream: target.commit.upstream };
  }
  const step = target[phase] as Record<string, unknown> | undefined;
  if (target.kind === 'kv' && phase === 'prepare' && !step) return { kind: 'kv', namespaceId: target.namespaceId, key: target.key };
  if (!step) return null;
  switch (target.kind) {
    case 'sql':
      return { kind: 'sql', database: target.database, ...(step as z.infer<typeof sqlStep>) };
    case 'kv':
      return { kind: 'kv', namespaceId: target.namespaceId, key: target.key, ...(step as z.infer<typeof kvStep>) };
    case 'http':
      return { kind: 'http', ...(step as z.infer<typeof httpStep>) };
    case 'command':
      return { kind: 'command', ...(step as z.infer<typeof commandStep>) };
  }
}

/** A probe as an action (probes are actions whose success and latency are sampled). */
export function probeAction(probe: ProbeSpec): ActionSpec {
  const { name: _name, ...action } = probe;
  return action as ActionSpec;
}
