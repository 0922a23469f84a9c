// The one config file, checked by zod: unknown keys are refused, and every problem is reported at
// once with its path. Secrets (DSN passwords) may only come from the environment as `env:NAME`.

import { z } from 'zod';
import { cutoverSchema, guardrailsSchema, invariantSchema, leverSchema, watchSchema } from '../cutover/schema.ts';

const identifierish = z.string().min(1).max(63);

/** `env:NAME` or a DSN without a password (the password then comes from PGPASSWORD / .pgpass). */
const dsnField = z
  .string()
  .min(1)
  .refine((v) => v.startsWith('env:') || !dsnHasPassword(v), {
    message: 'a DSN with a password must not be written in the config; put it in an environment variable and write "env:NAME"',
  })
  .refine((v) => !v.startsWith('env:') || /^env:[A-Za-z_][A-Za-z0-9_]*$/.test(v), { message: 'write env:NAME with a valid variable name, e.g. env:BLUE_DSN' });

/** True when a DSN string (URL or keyword form) carries a password. */
export function dsnHasPassword(dsn: string): boolean {
  if (/\bpassword\s*=/i.test(dsn)) return true;
  try {
    return new URL(dsn).password !== '';
  } catch {
    return false;
  }
}

const side = z.strictObject({
  /** Connection string, or env:NAME. */
  dsn: dsnField.describe('postgres:// DSN without password, or env:NAME'),
});

const qualifiedTable = z.string().regex(/^[^.\s]+\.[^.\s]+$/, 'write the table as schema.table, e.g. public.hydra_oauth2_access');

/** A configured cleanup rule: rows of `table` matching `where` (alias `t`) are quarantined. */
export const cleanupRuleSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/, 'use lower-case letters, digits and dashes'),
  table: qualifiedTable,
  where: z.string().min(1).describe('one boolean SQL expression over alias t (checked with the Postgres parser: no ;, comments, statements, or functions that change anything)'),
  reason: z.string().min(1),
});

/** How a captured table's writes become revocation events. */
export const captureTableSchema = z.strictObject({
  table: qualifiedTable,
  kind: z.enum(['access', 'refresh', 'consent']),
  key: z.array(z.string().min(1)).min(1).describe('columns that identify the row (stored in the outbox)'),
  activeColumn: z.string().optional().describe('boolean column whose true->false update counts as a revocation'),
  extraColumns: z.array(z.string().min(1)).default([]).describe('columns copied into the event (request_id, subject, client_id)'),
});

const migrations = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('pop'), dir: z.string().min(1) }),
  z.strictObject({ kind: z.literal('postgres-migrations'), dir: z.string().min(1) }),
  z.strictObject({
    kind: z.literal('command'),
    argv: z.array(z.string()).min(1),
    env: z.record(z.string(), z.string()).optional(),
    timeoutSeconds: z.number().int().positive().optional(),
    dsnEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/).optional(),
  }),
]);

const envRef = z.string().regex(/^env:[A-Za-z_][A-Za-z0-9_]*$/, 'must be env:NAME (secrets come from the environment)');

/** The revocation queue `migrate drain` pulls (Cloudflare Queues HTTP pull consumer), or none. */
export const queueSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('none') }),
  z.strictObject({
    kind: z.literal('cloudflare-http'),
    accountId: z.string().min(1),
    queueId: z.string().min(1).describe('the queue id, not its name'),
    deadLetterQueueId: z.string().min(1).optional().describe('id of the dead-letter queue: `migrate drain` replays its dead letters that verify and keeps (never acks) the rest'),
    token: envRef.describe('API token with Queues Edit permission'),
    hmacKey: envRef.describe('secret the router signs messages with'),
    baseUrl: z.url().optional().describe('API base (default https://api.cloudflare.com/client/v4)'),
    visibilityTimeoutMs: z.number().int().min(1000).max(43_200_000).default(60_000),
  }),
]);

/** The whole config file. */
export const configSchema = z.strictObject({
  $schema: z.string().optional(),
  blue: side,
  green: side,
  profile: z.enum(['hydra', 'none']).default('hydra').describe('built-in defaults for capture tables and cleanup rules'),
  migrations,
  snapshot: z
    .strictObject({
      jobs: z.number().int().min(1).max(64).optional().describe('parallel copy workers (default: CPU cores)'),
      splitTableBytes: z.number().int().min(1).optional().describe('tables larger than this are copied as primary-key ranges in parallel (default: a worker\'s fair share, at least 256 MiB)'),
      excludeSchemas: z.array(identifierish).default([]),
    })
    .default({ excludeSchemas: [] }),
  stream: z
    .strictObject({
      enabled: z.boolean().default(false).describe('stream every write made on blue after the snapshot (logical decoding, pgoutput) into a change log on green; needs wal_level = logical on blue'),
      batchChanges: z.number().int().min(1).max(1_000_000).default(5000).describe('changes staged on green per transaction'),
      maxLagSeconds: z.number().min(0).default(10).describe('cutover guardrail: green must hold blue\'s changes up to a commit at most this old'),
    })
    .default({ enabled: false, batchChanges: 5000, maxLagSeconds: 10 })
    .describe('the lossless window (logical decoding from the snapshot on); off by default: a slot nobody reads keeps WAL on blue'),
  cleanup: z.strictObject({ rules: z.array(cleanupRuleSchema).default([]) }).default({ rules: [] }),
  capture: z.strictObject({ tables: z.array(captureTableSchema).optional() }).default({}),
  validate: z
    .strictObject({
      skipTables: z.array(qualifiedTable).default([]).describe('tables not compared (e.g. dropped by the migrations)'),
    })
    .default({ skipTables: [] }),
  inPlace: z
    .strictObject({
      lockTimeoutMs: z.number().int().min(10).max(600_000).default(500).describe('lock_timeout for every in-place statement; no writer waits longer'),
      retries: z.number().int().min(0).max(100).default(10).describe('retries per statement after a lock timeout, with backoff'),
      backfillBatchRows: z.number().int().min(1).max(1_000_000).default(2000).describe('rows per transaction of a batched backfill'),
    })
    .default({ lockTimeoutMs: 500, retries: 10, backfillBatchRows: 2000 }),
  lint: z
    .strictObject({
      queriesFile: z.string().min(1).optional().describe("the application's queries, for the SELECT * check (relative to the config file)"),
      ignore: z.array(z.string().min(1)).default([]).describe('lint rule ids not to report'),
    })
    .default({ ignore: [] }),
  cutover: cutoverSchema.optional().describe('targets flipped all-or-nothing by `migrate cutover`'),
  lever: leverSchema.optional().describe('raise token TTL for the window: prepare reads it, commit raises it, rollback restores {{saved}}'),
  watch: watchSchema.optional(),
  invariants: z.array(invariantSchema).default([]).describe('semantic invariants (added to the profile\'s)'),
  guardrails: guardrailsSchema.default({ maxDrainBacklog: 1000 }),
  queue: queueSchema.default({ kind: 'none' }).describe('where `migrate drain` pulls queued revocations from'),
  replay: z
    .strictObject({
      profile: z.enum(['hydra-v1', 'hydra-v2']).default('hydra-v2').describe("replay semantics of the live side's schema"),
      jobs: z.number().int().min(1).max(32).default(2).describe('connections the drain splits each outbox batch over (by grant)'),
    })
    .default({ profile: 'hydra-v2', jobs: 2 }),
});

/** The config file as written (after defaults). */
export type Config = z.infer<typeof configSchema>;
/** A configured cleanup rule. */
export type CleanupRule = z.infer<typeof cleanupRuleSchema>;
/** A configured capture table. */
export type CaptureTable = z.infer<typeof captureTableSchema>;
/** The migrations source section. */
export type MigrationsConfig = Config['migrations'];

/** JSON Schema of the config file, for editors (`migrate config-schema`). */
export function configJsonSchema(): unknown {
  return z.toJSONSchema(configSchema, { io: 'input' });
}
