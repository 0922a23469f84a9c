// Cutover commands (a deploy script, `wrangler kv`) run through the one process runner
// (src/process.ts): argv, never a shell, and a hard timeout that stops the whole process group, so a
// hung command cannot outlive the cutover window. This adapter keeps the shape cutover code reads.

import { runProcess } from '../process.ts';

/** What a finished program left behind. */
export interface ArgvResult {
  /** Exit code; null when killed. */
  code: number | null;
  /** Captured stdout (its last 1 MiB). */
  stdout: string;
  /** Captured stderr (its last 1 MiB). */
  stderr: string;
  /** True when the timeout or the abort signal stopped it. */
  killed: boolean;
}

/** Runs argv in its own process group; on timeout or abort the group gets SIGTERM, then SIGKILL. Rejects only when it cannot start. */
export async function runArgv(argv: readonly string[], opts: { timeoutMs: number; env?: Record<string, string>; signal?: AbortSignal }): Promise<ArgvResult> {
  const out = await runProcess(argv, { timeoutMs: opts.timeoutMs, check: false, ...(opts.env ? { env: opts.env } : {}), ...(opts.signal ? { signal: opts.signal } : {}) });
  return { code: out.code, stdout: out.stdout, stderr: out.stderr, killed: out.stopped !== null };
}
