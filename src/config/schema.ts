// The one config file, checked by zod: unknown keys are refused, and every problem is reported at
// once with its path. Secrets (DSN passwords) may only come from the environment as `env:NAME`.

import { z } from 'zod';

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
  where: z.string().min(1).describe('SQL predicate over alias t'),
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
      excludeSchemas: z.array(identifierish).default([]),
    })
    .default({ excludeSchemas: [] }),
  cleanup: z.strictObject({ rules: z.array(cleanupRuleSchema).default([]) }).default({ rules: [] }),
  capture: z.strictObject({ tables: z.array(captureTableSchema).optional() }).default({}),
  validate: z
    .strictObject({
      skipTables: z.array(qualifiedTable).default([]).describe('tables not compared (e.g. dropped by the migrations)'),
    })
    .default({ skipTables: [] }),
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
