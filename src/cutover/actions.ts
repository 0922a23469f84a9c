// Executes one configured action (sql, http, command, kv, route) and says whether it worked, what value it
// read and how long it took. Targets, the lever and watch probes all run through here, so a probe
// behaves exactly like the action an operator would run by hand.

import { connect, type Db } from '../db/connect.ts';
import { describeDsn, redact } from '../db/redact.ts';
import type { ActionSpec, CommandAction, HttpAction, KvAction, SqlAction } from './schema.ts';
import type { KvResolver } from './kv.ts';
import { runArgv } from './process.ts';
import { describeRoute, runRoute } from './route.ts';
import { OperatorError } from '../errors.ts';

/** Where actions find their databases, KV namespaces and environment. */
export interface ActionEnv {
  /** Blue DSN. */
  blueDsn: string;
  /** Green DSN. */
  greenDsn: string;
  /** KV namespaces by id. */
  kv: KvResolver;
  /** Environment for `env:NAME` database references. */
  env: NodeJS.ProcessEnv;
}

/** Outcome of one action. */
export interface ActionResult {
  /** The value read (sql: first column of the first row; http: body; command: stdout; kv: stored value). */
  value: string | null;
  /** Wall time. */
  ms: number;
}

/** An action did not do what it was configured to do (`hint` when the action named the fix). */
export class ActionFailed extends Error {
  constructor(message: string, readonly ms: number, readonly hint?: string) {
    super(message);
    this.name = 'ActionFailed';
  }
}

/** The placeholder replaced by the value prepare read. */
export const SAVED = '{{saved}}';

function fill(text: string, saved: string | null): string {
  return text.split(SAVED).join(saved ?? '');
}

/** Resolves `blue`, `green` or `env:NAME` to a DSN. */
export function databaseDsn(ref: string, env: ActionEnv): string {
  if (ref === 'blue') return env.blueDsn;
  if (ref === 'green') return env.greenDsn;
  const name = ref.slice(4);
  const dsn = env.env[name];
  if (!dsn) throw new Error(`environment variable ${name} (database ${ref}) is not set`);
  return dsn;
}

function checkExpect(expect: string | undefined, value: string | null, what: string): void {
  if (expect !== undefined && (value ?? '') !== fill(expect, null)) throw new Error(`${what} was ${JSON.stringify(value)}, expected ${JSON.stringify(expect)}`);
}

function aborted(signal: AbortSignal | undefined): Promise<never> {
  return new Promise((_, reject) => {
    if (signal?.aborted) return reject(new Error('aborted: the cutover timed out'));
    signal?.addEventListener('abort', () => reject(new Error('aborted: the cutover timed out')), { once: true });
  });
}

async function openDatabase(ref: string, env: ActionEnv): Promise<Db> {
  const dsn = databaseDsn(ref, env);
  if (ref === 'blue' || ref === 'green') return connect(ref, dsn, 'migrate-cutover');
  // connect() words its errors for blue and green; an env: database is neither, so name it as configured.
  try {
    return await connect('green', dsn, 'migrate-cutover');
  } catch (err) {
    const code = ((err as Error).cause as { code?: string } | undefined)?.code;
    throw new Error(`cannot connect to ${ref} at ${describeDsn(dsn)} (${code ?? (err as Error).message})`);
  }
}

async function runSql(a: SqlAction, env: ActionEnv, saved: string | null, signal?: AbortSignal): Promise<string | null> {
  const db = await openDatabase(a.database, env);
  try {
    const work = db.query({ text: a.sql, values: a.params.map((p) => (p === SAVED ? saved : fill(p, saved))), rowMode: 'array' });
    const res = await Promise.race([work, aborted(signal)]);
    const first = (res.rows[0] as unknown[] | undefined)?.[0];
    const value = first === undefined || first === null ? null : first instanceof Date ? first.toISOString() : typeof first === 'object' ? JSON.stringify(first) : String(first);
    checkExpect(a.expect, value, 'the first value');
    return value;
  } finally {
    await db.end().catch(() => {});
  }
}

async function runHttp(a: HttpAction, saved: string | null, signal?: AbortSignal): Promise<string> {
  const timeout = AbortSignal.timeout(a.timeoutSeconds * 1000);
  const res = await fetch(a.url, {
    method: a.method,
    headers: a.headers,
    ...(a.body !== undefined ? { body: fill(a.body, saved) } : {}),
    signal: signal ? AbortSignal.any([timeout, signal]) : timeout,
  });
  const body = (await res.text()).slice(0, 65_536);
  if (res.status !== a.status) throw new Error(`${a.method} ${a.url} answered ${res.status}, expected ${a.status}`);
  checkExpect(a.expect, body.trim(), 'the body');
  return body;
}

async function runCommand(a: CommandAction, saved: string | null, signal?: AbortSignal): Promise<string> {
  const out = await runArgv(a.argv.map((x) => fill(x, saved)), { timeoutMs: a.timeoutSeconds * 1000, env: a.env, ...(signal ? { signal } : {}) });
  if (out.killed) throw new Error(`${a.argv[0]} killed after ${a.timeoutSeconds}s (timeout or cutover abort)`);
  if (out.code !== 0) throw new Error(`${a.argv[0]} exited ${out.code}: ${out.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  checkExpect(a.expect, out.stdout.trim(), 'stdout');
  return out.stdout.trim();
}

async function runKv(a: KvAction, env: ActionEnv, saved: string | null, signal?: AbortSignal): Promise<string | null> {
  const store = env.kv(a.namespaceId);
  const work = (async () => {
    if (a.put !== undefined) {
      // Restoring a key that did not exist before means deleting it.
      if (a.put === SAVED && saved === null) await store.delete(a.key);
      else await store.put(a.key, fill(a.put, saved));
    }
    const value = await store.get(a.key);
    checkExpect(a.expect, value, `KV ${a.key}`);
    return value;
  })();
  return Promise.race([work, aborted(signal)]);
}

/** Runs one action; throws ActionFailed (message free of secrets) when it did not work. */
export async function runAction(action: ActionSpec, env: ActionEnv, opts: { saved?: string | null; signal?: AbortSignal } = {}): Promise<ActionResult> {
  const started = performance.now();
  const saved = opts.saved ?? null;
  try {
    let value: string | null;
    switch (action.kind) {
      case 'sql':
        value = await runSql(action, env, saved, opts.signal);
        break;
      case 'http':
        value = await runHttp(action, saved, opts.signal);
        break;
      case 'command':
        value = await runCommand(action, saved, opts.signal);
        break;
      case 'kv':
        value = await runKv(action, env, saved, opts.signal);
        break;
      case 'route':
        value = await runRoute(action, env.env, saved, opts.signal);
        break;
    }
    return { value, ms: Math.round(performance.now() - started) };
  } catch (err) {
    const ms = Math.round(performance.now() - started);
    // The hint travels in the message too: the cutover reports a failed target by its message.
    const hint = err instanceof OperatorError ? err.hint : undefined;
    throw new ActionFailed(redact(`${(err as Error).message ?? String(err)}${hint ? ` (${hint})` : ''}`), ms, hint);
  }
}

/** One line naming what an action does (for plans and reports; no secrets: DSNs are never shown). */
export function describeAction(a: ActionSpec): string {
  switch (a.kind) {
    case 'sql':
      return `sql on ${a.database}: ${a.sql.replace(/\s+/g, ' ').slice(0, 80)}`;
    case 'http':
      return `${a.method} ${a.url} -> ${a.status}`;
    case 'command':
      return `run ${a.argv.join(' ')}`;
    case 'kv':
      return a.put !== undefined ? `KV ${a.namespaceId}/${a.key} := ${a.put}` : `read KV ${a.namespaceId}/${a.key}`;
    case 'route':
      return describeRoute(a);
  }
}
