// The one way migrate runs another program (pg_dump, a migration tool, wrangler, a cutover command):
// an argv array, never a shell (no quoting bugs, no injection); one kill policy (on timeout or abort,
// SIGTERM to the program's own process group, so it reaches what the program started, then SIGKILL
// after a grace period); bounded output; and failures that name the program without printing its
// arguments or a secret.

import { spawn } from 'node:child_process';
import path from 'node:path';
import { pipeline, type Readable, type Writable } from 'node:stream';
import { redactValues } from './db/redact.ts';
import { SourceError } from './errors.ts';

/** After SIGTERM the process group gets this long to exit before SIGKILL. */
export const KILL_GRACE_MS = 5000;
/** Bytes of stdout and of stderr kept by default. */
export const DEFAULT_MAX_BYTES = 1024 * 1024;
/** Lines of output an error shows. */
export const TAIL_LINES = 20;

// Values of variables with these names never appear in an error, nor does any DSN's password.
const SECRET_NAME = /PASS|SECRET|TOKEN|API_?KEY|PRIVATE_KEY|CREDENTIAL/i;

/** How to run a program. */
export interface RunOptions {
  /** Variables added to (or replacing) this process's environment. */
  env?: Record<string, string>;
  /** Working directory (default: this process's). */
  cwd?: string;
  /** Text fed to stdin, or a stream piped into it (default: no stdin). */
  stdin?: string | Buffer | Readable;
  /** Stream stdout into this instead of collecting it (ended when the program's stdout ends). */
  stdout?: Writable;
  /** Stop the program after this long (default: never). */
  timeoutMs?: number;
  /** Stop the program when this aborts. */
  signal?: AbortSignal;
  /** Time between SIGTERM and SIGKILL when stopping (default KILL_GRACE_MS). */
  killGraceMs?: number;
  /** Bytes of stdout and of stderr kept; beyond it the oldest bytes go (default DEFAULT_MAX_BYTES). */
  maxBytes?: number;
  /** Reject unless the program exits 0 by itself (default true); false resolves every exit. */
  check?: boolean;
  /** What to call the program in messages (default: the file name of argv[0]). */
  name?: string;
}

/** What a finished program left behind. */
export interface ProcessResult {
  /** Exit code; null when a signal ended it. */
  code: number | null;
  /** The signal that ended it, if one did. */
  signal: NodeJS.Signals | null;
  /** Collected stdout (its last maxBytes bytes; empty when streamed). */
  stdout: string;
  /** Collected stderr (its last maxBytes bytes). */
  stderr: string;
  /** Wall time from spawn to the streams closing. */
  ms: number;
  /** Why the runner stopped it, if it did. */
  stopped: 'timeout' | 'abort' | null;
  /** True when output beyond maxBytes was dropped. */
  truncated: boolean;
}

/** Why a run failed: could not start, exited badly, was stopped, or a stream it was piped to failed. */
export type ProcessFailure = 'start' | 'exit' | 'timeout' | 'abort' | 'io';

/** What a failed run is known by; output is redacted and cut to its tail before it is kept. */
interface FailureFacts {
  program: string;
  label: string;
  ms: number;
  errno?: string;
  status?: number | null;
  signal?: NodeJS.Signals | null;
  timeoutMs?: number;
  stdout?: string;
  stderr?: string;
}

/** A program could not start, failed or was stopped (exit 6); names it, never its arguments or secrets. */
export class ProcessError extends SourceError {
  /** Why it failed. */
  readonly reason: ProcessFailure;
  /** argv[0], redacted. */
  readonly program: string;
  /** What the messages call the program. */
  readonly label: string;
  /** The system error code when it could not start (e.g. ENOENT) or a stream failed. */
  readonly errno: string | null;
  /** Exit code; null when it never started or a signal ended it. */
  readonly status: number | null;
  /** The signal that ended it, if one did. */
  readonly signal: NodeJS.Signals | null;
  /** Last TAIL_LINES lines of stdout, redacted. */
  readonly stdoutTail: string;
  /** Last TAIL_LINES lines of stderr, redacted. */
  readonly stderrTail: string;
  /** `\nlast N lines of stderr:\n...` (stdout when stderr is silent), or empty: ready to append to a message. */
  readonly output: string;

  constructor(reason: ProcessFailure, facts: FailureFacts, secrets: readonly string[]) {
    const clean = (s: string): string => redactValues(s, secrets);
    const program = clean(facts.program);
    const label = clean(facts.label);
    const stdoutTail = clean(tail(facts.stdout ?? ''));
    const stderrTail = clean(tail(facts.stderr ?? ''));
    // Many tools log errors to stdout; fall back to it when stderr is silent.
    const [stream, shown] = stderrTail.trim() ? ['stderr', stderrTail] : ['stdout', stdoutTail];
    const output = shown.trim() ? `\nlast ${TAIL_LINES} lines of ${stream}:\n${shown}` : '';
    const who = label === program ? `\`${program}\`` : `${label} (\`${program}\`)`;
    const status = facts.status ?? null;
    const signal = facts.signal ?? null;
    const errno = facts.errno === undefined ? null : clean(facts.errno);
    const seconds = `${(facts.timeoutMs ?? 0) / 1000}s`;
    const texts: Record<ProcessFailure, [message: string, hint: string]> = {
      start: [`cannot start ${who} (${errno})`, `check that ${program} is installed and on PATH, or give its absolute path`],
      exit: [status === null ? `${who} was killed by ${signal ?? 'a signal'}` : `${who} exited with code ${status}`, `fix what ${label} reports, then run the command again`],
      timeout: [`${who} timed out after ${seconds}; its process group was stopped`, `raise its timeout, or find what ${label} waits for`],
      abort: [`${who} was stopped: the operation it belonged to was cancelled`, 'see why the operation was cancelled (its own message says)'],
      io: [`${who}: a stream piped to or from it failed (${errno})`, `check what ${label}'s input or output was connected to`],
    };
    const [what, hint] = texts[reason];
    super(`${what}${output}`, hint, { program, reason, status, signal, ms: facts.ms, ...(errno ? { errno } : {}), ...(facts.timeoutMs !== undefined ? { timeoutMs: facts.timeoutMs } : {}) });
    this.reason = reason;
    this.program = program;
    this.label = label;
    this.errno = errno;
    this.status = status;
    this.signal = signal;
    this.stdoutTail = stdoutTail;
    this.stderrTail = stderrTail;
    this.output = output;
  }
}

function tail(text: string): string {
  return text.replace(/\s+$/, '').split('\n').slice(-TAIL_LINES).join('\n');
}

/** Secrets the program can see: values of secret-looking variables and the password of every DSN. */
function secretsIn(env: NodeJS.ProcessEnv): string[] {
  const found: string[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (!value) continue;
    if (SECRET_NAME.test(name)) found.push(value);
    if (/^postgres(?:ql)?:\/\//i.test(value)) {
      try {
        const password = decodeURIComponent(new URL(value).password);
        if (password) found.push(password);
      } catch {
        // not a URL after all: redact() still masks DSN-shaped text
      }
    }
  }
  return found;
}

/** Keeps the last `cap` bytes written to it: the end of the output is what explains a failure. */
class TailBuffer {
  private chunks: Buffer[] = [];
  private bytes = 0;
  /** True once bytes were dropped. */
  truncated = false;

  constructor(private readonly cap: number) {}

  /** Appends a chunk, dropping the oldest bytes beyond the cap. */
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    while (this.bytes > this.cap) {
      const first = this.chunks[0]!;
      const excess = this.bytes - this.cap;
      this.truncated = true;
      if (first.length <= excess) {
        this.chunks.shift();
        this.bytes -= first.length;
      } else {
        this.chunks[0] = first.subarray(excess);
        this.bytes -= excess;
      }
    }
  }

  /** The kept bytes as UTF-8. */
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

/**
 * Runs argv (no shell) and resolves when its streams close. With a timeout or an abort signal it runs
 * in its own process group, and stopping it sends the whole group SIGTERM, then SIGKILL after
 * killGraceMs. Rejects with a ProcessError when it cannot start, when a piped stream fails, and
 * (unless `check: false`) when it was stopped or did not exit 0.
 */
export async function runProcess(argv: readonly string[], opts: RunOptions = {}): Promise<ProcessResult> {
  const [file, ...args] = argv;
  const env = { ...process.env, ...opts.env };
  const secrets = secretsIn(env);
  const started = performance.now();
  const facts = (more: Omit<FailureFacts, 'program' | 'label' | 'ms'>): FailureFacts => ({
    program: file ?? '',
    label: opts.name ?? path.basename(file ?? ''),
    ms: Math.round(performance.now() - started),
    ...more,
  });
  if (!file) throw new ProcessError('start', facts({ errno: 'empty argv' }), secrets);

  // Only a program the runner may stop gets its own process group, so the stop reaches all it started;
  // one it never stops stays in ours, where a Ctrl-C on migrate reaches it too.
  const stoppable = opts.timeoutMs !== undefined || opts.signal !== undefined;
  const child = spawn(file, args, { cwd: opts.cwd, env, detached: stoppable, stdio: [opts.stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  const [stdout, stderr] = [child.stdout!, child.stderr!]; // 'pipe' above: never null
  const cap = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  const out = new TailBuffer(cap);
  const err = new TailBuffer(cap);
  // Written from callbacks, so an object: the checks after the await must see the updates.
  const state: { stopped: ProcessResult['stopped']; exited: boolean; ioError: NodeJS.ErrnoException | null } = { stopped: null, exited: false, ioError: null };
  const noteIo = (e: NodeJS.ErrnoException | null | undefined): void => {
    // A program may exit without reading all its input; its exit status says whether that was wrong.
    if (e && e.code !== 'EPIPE') state.ioError ??= e;
  };
  const piped: Promise<void>[] = [];
  if (opts.stdout) {
    const sink = opts.stdout;
    piped.push(
      new Promise((resolve) =>
        pipeline(stdout, sink, (e) => {
          noteIo(e);
          resolve();
        }),
      ),
    );
  } else stdout.on('data', (b: Buffer) => out.push(b));
  stderr.on('data', (b: Buffer) => err.push(b));
  if (child.stdin && opts.stdin !== undefined) {
    child.stdin.on('error', noteIo);
    if (typeof opts.stdin === 'string' || Buffer.isBuffer(opts.stdin)) child.stdin.end(opts.stdin);
    else pipeline(opts.stdin, child.stdin, noteIo);
  }

  const signalGroup = (sig: NodeJS.Signals): void => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, sig);
    } catch {
      // already gone
    }
  };
  // A grandchild that escaped the group may hold the pipes open; once stopped, do not wait for it.
  const dropPipes = (): void => {
    stdout.destroy();
    stderr.destroy();
  };
  const stop = (why: 'timeout' | 'abort'): void => {
    if (state.stopped) return;
    state.stopped = why;
    signalGroup('SIGTERM');
    setTimeout(() => signalGroup('SIGKILL'), opts.killGraceMs ?? KILL_GRACE_MS).unref();
    if (state.exited) dropPipes();
  };
  child.on('exit', () => {
    state.exited = true;
    if (state.stopped) dropPipes();
  });
  const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => stop('timeout'), opts.timeoutMs);
  const onAbort = (): void => stop('abort');
  if (opts.signal?.aborted) onAbort();
  else opts.signal?.addEventListener('abort', onAbort, { once: true });

  const end = await new Promise<{ startError: NodeJS.ErrnoException } | { status: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (child.pid === undefined) resolve({ startError: e });
    });
    child.on('close', (status, signal) => resolve({ status, signal }));
  });
  clearTimeout(timer);
  opts.signal?.removeEventListener('abort', onAbort);
  if ('startError' in end) throw new ProcessError('start', facts({ errno: end.startError.code ?? end.startError.message }), secrets);
  await Promise.all(piped);

  const result: ProcessResult = {
    code: end.status,
    signal: end.signal,
    stdout: out.text(),
    stderr: err.text(),
    ms: Math.round(performance.now() - started),
    stopped: state.stopped,
    truncated: out.truncated || err.truncated,
  };
  const failed = (reason: ProcessFailure, errno?: string): ProcessError =>
    new ProcessError(reason, facts({ status: result.code, signal: result.signal, stdout: result.stdout, stderr: result.stderr, ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}), ...(errno ? { errno } : {}) }), secrets);
  const check = opts.check ?? true;
  if (result.stopped && check) throw failed(result.stopped);
  if (state.ioError && !result.stopped) throw failed('io', state.ioError.code ?? state.ioError.message);
  if (check && result.code !== 0) throw failed('exit');
  return result;
}
