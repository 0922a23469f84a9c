// Runs a program from an argv array (never a shell) with a hard timeout that kills its whole
// process group, so a hung `wrangler` or deploy script cannot outlive the cutover window.

import { spawn } from 'node:child_process';

/** What a finished program left behind. */
export interface ArgvResult {
  /** Exit code; null when killed. */
  code: number | null;
  /** Captured stdout (up to 1 MiB). */
  stdout: string;
  /** Captured stderr (up to 1 MiB). */
  stderr: string;
  /** True when the timeout or the abort signal killed it. */
  killed: boolean;
}

const MAX_OUTPUT = 1024 * 1024;

/** Spawns argv detached (its own process group) and SIGKILLs the group on timeout or abort. */
export function runArgv(argv: readonly string[], opts: { timeoutMs: number; env?: Record<string, string>; signal?: AbortSignal }): Promise<ArgvResult> {
  return new Promise((resolve, reject) => {
    const [bin, ...args] = argv;
    if (!bin) return reject(new Error('empty argv'));
    const child = spawn(bin, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
    let stdout = '';
    let stderr = '';
    let killed = false;
    child.stdout.on('data', (b: Buffer) => void (stdout.length < MAX_OUTPUT && (stdout += b.toString())));
    child.stderr.on('data', (b: Buffer) => void (stderr.length < MAX_OUTPUT && (stderr += b.toString())));
    const killGroup = (): void => {
      killed = true;
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(killGroup, opts.timeoutMs);
    opts.signal?.addEventListener('abort', killGroup, { once: true });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', killGroup);
      resolve({ code, stdout, stderr, killed });
    });
  });
}
