// The one process runner (src/process.ts): argv without a shell, exit code and output, the kill
// policy (SIGTERM to the group, SIGKILL after the grace period), a missing program, stdin, the
// output cap, streaming, and errors that never print a secret.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { describe, expect, it, vi } from 'vitest';
import { ExitCode, OperatorError } from '../src/errors.ts';
import { ProcessError, runProcess } from '../src/process.ts';

const node = process.execPath;
const js = (script: string, ...args: string[]): string[] => [node, '-e', script, ...args];

async function caught(p: Promise<unknown>): Promise<ProcessError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ProcessError);
  return err as ProcessError;
}

/** True while the process exists and is not a zombie waiting to be reaped. */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('runProcess', () => {
  it('returns exit code, stdout, stderr and time; passes argv verbatim, env and cwd', async () => {
    const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-proc-')));
    const r = await runProcess(js('process.stdout.write(JSON.stringify([process.argv.slice(1), process.env.HELLO, process.cwd()])); process.stderr.write("note")', 'a  b "c"', '$HOME'), {
      env: { HELLO: 'world' },
      cwd: dir,
    });
    expect(r).toMatchObject({ code: 0, signal: null, stderr: 'note', stopped: null, truncated: false });
    expect(JSON.parse(r.stdout)).toEqual([['a  b "c"', '$HOME'], 'world', dir]);
    expect(r.ms).toBeGreaterThanOrEqual(0);
  });

  it('rejects a non-zero exit naming the program and its code, never its arguments; check: false resolves it', async () => {
    const argv = js('console.error("boom"); process.exit(3)', 'secret-arg');
    const err = await caught(runProcess(argv));
    expect(err).toBeInstanceOf(OperatorError);
    expect(err.exitCode).toBe(ExitCode.source);
    expect(err).toMatchObject({ reason: 'exit', status: 3, program: node, stderrTail: 'boom' });
    expect(err.message).toContain(`exited with code 3`);
    expect(err.message).toContain(node);
    expect(err.message).toContain('last 20 lines of stderr:\nboom');
    expect(err.message).not.toContain('secret-arg');
    expect(JSON.stringify(err.toJSON())).not.toContain('secret-arg');
    expect(await runProcess(argv, { check: false })).toMatchObject({ code: 3, stderr: 'boom\n' });
  });

  it('on timeout kills the whole process group and reports a timeout naming the program', async () => {
    const pids = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-proc-')), 'pids');
    const script = `
      const g = require('child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'inherit' });
      require('fs').writeFileSync(process.argv[1], process.pid + ' ' + g.pid);
      setInterval(() => {}, 1000);`;
    const started = Date.now();
    // Long enough for node to start and write the pids even on a busy machine.
    const err = await caught(runProcess(js(script, pids), { timeoutMs: 2500, name: 'sleeper' }));
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(err).toMatchObject({ reason: 'timeout', label: 'sleeper', signal: 'SIGTERM' });
    expect(err.message).toContain(`sleeper (\`${node}\`) timed out after 2.5s`);
    const [child, grandchild] = fs.readFileSync(pids, 'utf8').split(' ').map(Number);
    await vi.waitFor(() => {
      expect(running(child!)).toBe(false);
      expect(running(grandchild!)).toBe(false);
    });
  });

  it('sends SIGKILL after the grace period to a program that ignores SIGTERM', async () => {
    const script = 'process.on("SIGTERM", () => {}); console.log("ready"); setInterval(() => {}, 1000)';
    // Stop it only once its SIGTERM handler is in place.
    const controller = new AbortController();
    const out = new PassThrough().on('data', () => controller.abort());
    const r = await runProcess(js(script), { stdout: out, signal: controller.signal, killGraceMs: 300, check: false });
    expect(r).toMatchObject({ code: null, signal: 'SIGKILL', stopped: 'abort' });
  });

  it('stops the program when the signal aborts', async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 200);
    const err = await caught(runProcess(js('setInterval(() => {}, 1000)'), { signal: controller.signal }));
    expect(err.reason).toBe('abort');
  });

  it('says clearly when the program cannot be started', async () => {
    const err = await caught(runProcess(['/nonexistent/migrate-tool', 'up']));
    expect(err).toMatchObject({ reason: 'start', errno: 'ENOENT', program: '/nonexistent/migrate-tool', status: null });
    expect(err.message).toBe('cannot start migrate-tool (`/nonexistent/migrate-tool`) (ENOENT)');
    expect(err.hint).toContain('on PATH');
    expect((await caught(runProcess([]))).reason).toBe('start');
  });

  it('feeds stdin from text or from a stream', async () => {
    const upper = js('let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => process.stdout.write(s.toUpperCase()))');
    expect((await runProcess(upper, { stdin: 'hello\n' })).stdout).toBe('HELLO\n');
    expect((await runProcess(upper, { stdin: Readable.from(['a', 'b', 'c']) })).stdout).toBe('ABC');
  });

  it('keeps the last maxBytes bytes of output and says it truncated', async () => {
    const r = await runProcess(js('for (let i = 0; i < 2000; i++) process.stdout.write(String(i).padStart(5, "0") + "\\n")'), { maxBytes: 60 });
    expect(r.truncated).toBe(true);
    expect(Buffer.byteLength(r.stdout)).toBe(60);
    expect(r.stdout.endsWith('01998\n01999\n')).toBe(true);
  });

  it('streams stdout into another program, like pg_dump into psql', async () => {
    const pipe = new PassThrough();
    const consumer = runProcess(js('let n = 0; process.stdin.on("data", (d) => (n += d.length)).on("end", () => console.log(n))'), { stdin: pipe });
    const producer = await runProcess(js('for (let i = 0; i < 1000; i++) process.stdout.write("x".repeat(1000))'), { stdout: pipe });
    expect(producer).toMatchObject({ code: 0, stdout: '' });
    expect((await consumer).stdout).toBe('1000000\n');
  });

  it('never prints a password from the environment or a DSN', async () => {
    const dsn = 'postgres://app:Hidden-77@127.0.0.1:5432/green';
    const script = 'console.error(process.env.PGPASSWORD, process.env.DATABASE_URL, "Hidden-77 alone"); process.exit(1)';
    const err = await caught(runProcess(js(script), { env: { PGPASSWORD: 'pw-Secret-9', DATABASE_URL: dsn } }));
    expect(err.message).not.toContain('pw-Secret-9');
    expect(err.message).not.toContain('Hidden-77');
    expect(err.message).toContain('postgres://app:***@127.0.0.1');
  });
});
