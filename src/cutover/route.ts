// The cutover's `route` target: the edge router's fenced flip (src/queue-consumer/route-fence.ts)
// driven over the router's admin endpoint, POST <url>/__bluegreen/route/<op> with a bearer token.
//   prepare  = raise the fence (new requests are held) and wait up to drainMs for the old epoch's
//              requests; if they did not finish, lower it again and fail (nothing changed).
//   commit   = commit through that fence: route on the new upstream, epoch + 1, held requests go there.
//   verify   = the router's state shows the new upstream at the fence's epoch, no fence up.
//   rollback = lower the fence if it is still up; after a commit, flip back to the saved upstream
//              through a new fence (a rollback never goes around the fence).
// The value prepare returns (journalled as the target's `saved`) names the fence and the previous
// upstream; it holds no secret. The token is never printed: errors name the variable, not its value.

import { ExitCode, OperatorError, type ExitCodeValue } from '../errors.ts';
import { redactValues } from '../db/redact.ts';

/** Path of the router's admin endpoint under its base URL. */
export const ROUTE_ADMIN_PATH = '/__bluegreen/route/';

/** A route action, resolved (see schema.ts `route` targets). */
export interface RouteAction {
  /** Discriminant. */
  kind: 'route';
  /** Which phase of the target this runs. */
  phase: 'prepare' | 'commit' | 'verify' | 'rollback';
  /** The router's base URL. */
  url: string;
  /** `env:NAME` holding the router's ROUTE_ADMIN_TOKEN. */
  token: string;
  /** Hold budget of the fence: requests wait at most this long, then go back to the old side. */
  holdMs: number;
  /** How long prepare waits for in-flight requests of the old epoch. */
  drainMs: number;
  /** Per-request timeout (raise gets drainMs on top). */
  timeoutSeconds: number;
  /** The upstream commit routes to. */
  upstream: string;
}

/** What prepare saved: the fence and the route it guards. */
export interface RouteSaved {
  /** The fence raised by prepare. */
  fenceId: string;
  /** The epoch a commit through it installs. */
  epoch: number;
  /** The route in force before (what rollback restores). */
  previousUpstream: string;
}

/** The router's state as the admin endpoint reports it (route-fence.ts RouteState). */
export interface RouteStateView {
  /** Current upstream. */
  upstream: string | null;
  /** Current epoch. */
  epoch: number;
  /** The fence, while up. */
  fence: { id: string; epoch: number; deadline: number; previousUpstream: string } | null;
  /** Requests held by the fence. */
  held: number;
  /** Requests of the current epoch in flight. */
  inflight: number;
  /** How the last fence ended. */
  last: { fenceId: string; outcome: 'committed' | 'lowered' | 'expired'; at: number; upstream: string; epoch: number } | null;
}

interface RaisedView {
  fenceId: string;
  epoch: number;
  previousUpstream: string;
  inflight: number;
  waitedMs: number;
}

/** The router's admin endpoint refused or could not be reached; the hint names the fix. */
export class RouteAdminError extends OperatorError {
  constructor(message: string, hint: string, exitCode: ExitCodeValue, detail?: Record<string, unknown>) {
    super(message, { hint, exitCode, ...(detail ? { detail } : {}) });
  }
}

/** Connection to one router's admin endpoint. */
export interface RouteAdmin {
  /** The router's base URL. */
  url: string;
  /** The bearer token (the value, not the reference). */
  token: string;
  /** Per-request timeout. */
  timeoutMs: number;
  /** Aborts every request (the cutover's overall timeout). */
  signal?: AbortSignal;
}

/** Resolves `env:NAME` to the token, or fails with a config error naming the variable. */
export function routeToken(ref: string, env: NodeJS.ProcessEnv): string {
  const name = ref.startsWith('env:') ? ref.slice(4) : ref;
  const value = env[name];
  if (!value) {
    throw new RouteAdminError(`environment variable ${name} (route admin token ${ref}) is ${value === undefined ? 'not set' : 'empty'}`, `export ${name} with the router's ROUTE_ADMIN_TOKEN secret`, ExitCode.config);
  }
  return value;
}

/** One admin call; returns the JSON answer, throws RouteAdminError (never containing the token). */
export async function routeAdminCall<T>(admin: RouteAdmin, op: 'init' | 'raise' | 'commit' | 'lower' | 'state', body: Record<string, unknown> = {}, extraMs = 0): Promise<T> {
  const endpoint = `${admin.url.replace(/\/+$/, '')}${ROUTE_ADMIN_PATH}${op}`;
  const timeout = AbortSignal.timeout(admin.timeoutMs + extraMs);
  const clean = (text: string) => redactValues(text, [admin.token]);
  let res: Response;
  let text: string;
  try {
    res = await fetch(endpoint, {
      method: 'POST',
      headers: { authorization: `Bearer ${admin.token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: admin.signal ? AbortSignal.any([timeout, admin.signal]) : timeout,
    });
    text = await res.text();
  } catch (err) {
    const why = admin.signal?.aborted ? 'aborted: the cutover timed out' : timeout.aborted ? `no answer within ${Math.round((admin.timeoutMs + extraMs) / 1000)}s` : clean((err as Error).message);
    throw new RouteAdminError(`route ${op} at ${endpoint} failed: ${why}`, 'check that the router is deployed and reachable at the target\'s url (it serves /__bluegreen/route/*)', ExitCode.state);
  }
  let answer: { error?: string; message?: string } & Record<string, unknown> = {};
  try {
    answer = JSON.parse(text) as typeof answer;
  } catch {
    // a proxy or an old router answered with something else; the status below says what
  }
  if (res.ok) return answer as T;
  const said = clean(answer.message ?? text.slice(0, 200));
  if (res.status === 401) {
    throw new RouteAdminError(`route ${op} at ${endpoint} refused the token (401: ${said})`, "set the target's token variable to the router's ROUTE_ADMIN_TOKEN secret (`wrangler secret put ROUTE_ADMIN_TOKEN -c wrangler.router.jsonc`)", ExitCode.config);
  }
  if (res.status === 404 || res.status === 405) {
    throw new RouteAdminError(`route ${op} at ${endpoint} answered ${res.status}: ${said}`, "point the target's url at the edge router's base URL, and deploy a router with the route fence (wrangler.router.jsonc migration v2)", ExitCode.config);
  }
  const code = answer.error ? ` ${answer.error}` : '';
  throw new RouteAdminError(`route ${op} refused (${res.status}${code}): ${said}`, hintFor(answer.error), ExitCode.state, { status: res.status, code: answer.error ?? null });
}

function hintFor(code: string | undefined): string {
  switch (code) {
    case 'fence-expired':
      return 'the hold budget (holdMs) ran out before the commit, so the router went back to the old side: raise holdMs or shorten what runs between prepare and commit, then run the cutover again';
    case 'fence-up':
      return 'a fence from an earlier attempt is still up: it drops by itself at its deadline (`state` shows it), then run the cutover again';
    case 'not-drained':
      return 'requests of the old side were still in flight: run the cutover again (raise drainMs if it keeps happening)';
    case 'no-route':
      return 'seed the router once: POST <url>/__bluegreen/route/init with {"upstream": "<blue engine URL>"}';
    default:
      return 'read the router\'s state (POST <url>/__bluegreen/route/state) and run the cutover again';
  }
}

function parseSaved(saved: string | null): RouteSaved | null {
  if (!saved) return null;
  try {
    const v = JSON.parse(saved) as Partial<RouteSaved>;
    return typeof v.fenceId === 'string' && typeof v.epoch === 'number' && typeof v.previousUpstream === 'string' ? { fenceId: v.fenceId, epoch: v.epoch, previousUpstream: v.previousUpstream } : null;
  } catch {
    return null;
  }
}

/** Raises a fence and waits for the old epoch to drain; lowers it again and fails when it did not. */
async function raiseDrained(admin: RouteAdmin, a: { holdMs: number; drainMs: number }): Promise<RaisedView> {
  const raised = await routeAdminCall<RaisedView>(admin, 'raise', { holdMs: a.holdMs, drainMs: a.drainMs }, a.drainMs);
  if (raised.inflight > 0) {
    await routeAdminCall(admin, 'lower', { fenceId: raised.fenceId });
    throw new RouteAdminError(
      `${raised.inflight} request(s) to ${raised.previousUpstream} were still in flight after ${raised.waitedMs} ms; the fence was lowered and the route stays there`,
      'run the cutover again at a quieter moment, or raise the target\'s drainMs (a restarted router object counts requests of the last 40 s as in flight)',
      ExitCode.state,
    );
  }
  return raised;
}

/** Runs one phase of a route target; returns the value to journal (prepare: the saved fence). */
export async function runRoute(a: RouteAction, env: NodeJS.ProcessEnv, saved: string | null, signal?: AbortSignal): Promise<string> {
  const admin: RouteAdmin = { url: a.url, token: routeToken(a.token, env), timeoutMs: a.timeoutSeconds * 1000, ...(signal ? { signal } : {}) };
  const fence = parseSaved(saved);
  switch (a.phase) {
    case 'prepare': {
      const raised = await raiseDrained(admin, a);
      return JSON.stringify({ fenceId: raised.fenceId, epoch: raised.epoch, previousUpstream: raised.previousUpstream } satisfies RouteSaved);
    }
    case 'commit': {
      if (!fence) throw new RouteAdminError('route commit has no fence: prepare did not record one', 'run the cutover again (prepare raises the fence)', ExitCode.state);
      return JSON.stringify(await routeAdminCall<RouteStateView>(admin, 'commit', { fenceId: fence.fenceId, upstream: a.upstream }));
    }
    case 'verify': {
      const state = await routeAdminCall<RouteStateView>(admin, 'state');
      if (state.upstream !== a.upstream || (fence && state.epoch !== fence.epoch) || state.fence) {
        throw new RouteAdminError(
          `the router routes to ${state.upstream} at epoch ${state.epoch}${state.fence ? ' with a fence up' : ''}, expected ${a.upstream}${fence ? ` at epoch ${fence.epoch}` : ''}`,
          'another flip changed the route after this commit: read the router\'s state before running the cutover again',
          ExitCode.state,
        );
      }
      return JSON.stringify(state);
    }
    case 'rollback':
      return JSON.stringify(await rollbackRoute(admin, a, fence));
  }
}

/** Puts the route back on the saved upstream: lowers our fence, or flips back through a new one. */
async function rollbackRoute(admin: RouteAdmin, a: RouteAction, fence: RouteSaved | null): Promise<RouteStateView> {
  const state = await routeAdminCall<RouteStateView>(admin, 'state');
  if (!fence) return state; // prepare never raised a fence: nothing of ours to undo
  if (state.fence?.id === fence.fenceId) return routeAdminCall<RouteStateView>(admin, 'lower', { fenceId: fence.fenceId });
  if (state.upstream === fence.previousUpstream && !state.fence) return state; // lowered, expired, or already flipped back
  if (state.upstream !== a.upstream) {
    throw new RouteAdminError(
      `the router routes to ${state.upstream}${state.fence ? ' with another fence up' : ''}, neither ${fence.previousUpstream} (before) nor ${a.upstream} (this cutover); not flipping it`,
      'someone else changed the route: decide by hand, then flip it with raise + commit on the admin endpoint',
      ExitCode.state,
    );
  }
  return fencedFlip(admin, fence.previousUpstream, a);
}

/** A whole flip through a new fence: raise, wait for the old epoch to drain, commit `upstream`. */
export async function fencedFlip(admin: RouteAdmin, upstream: string, budget: { holdMs: number; drainMs: number }): Promise<RouteStateView> {
  const raised = await raiseDrained(admin, budget);
  return routeAdminCall<RouteStateView>(admin, 'commit', { fenceId: raised.fenceId, upstream });
}

/** One line naming what a route action does (no token). */
export function describeRoute(a: RouteAction): string {
  return `route at ${a.url}: fenced flip to ${a.upstream} (hold ${a.holdMs} ms, drain ${a.drainMs} ms)`;
}
