// The router's routing decision: one Durable Object (named ROUTE_INSTANCE) holding the engine the
// router sends traffic to, a fence epoch, and a fence the cutover raises around the flip. Workers KV
// is eventually consistent (a flip takes 60 s or more to reach every location, and blue keeps taking
// writes meanwhile); a Durable Object is one instance with strongly consistent storage, so the route
// every router reads is the one last written.
//
// Invariants:
// - Every proxied request holds a lease on the epoch whose route it was given (acquire), and gives it
//   back when the upstream answered (release). Leases are counted in memory per epoch.
// - While a fence is up, acquire gives no new lease: it waits (the request is held, never failed)
//   until the fence drops, then answers with the route in force at that moment. So after raise
//   returned inflight 0, no request of the old epoch is in flight and none can start.
// - commit changes the route only through the fence it names, and only while that fence is up and
//   the old epoch has no lease in flight: it sets the new upstream, epoch + 1 and drops the fence.
//   A fence that was lowered or whose hold budget ran out can never be committed (the caller rolls
//   back), so a late commit cannot flip traffic the operator was told stayed on the old side.
// - The hold budget is a hard bound: raisedAt + holdMs. Whoever touches the object after it (a held
//   request's timer, the alarm, any RPC) lowers the fence first, keeping the old route and epoch.
// - Route, epoch, fence and the last fence outcome are stored before an answer leaves (SQLite-backed
//   synchronous storage; the output gate holds the answer until the write is durable).
// - Leases live in memory. A lease is considered dead after LEASE_TTL_MS (a router that died never
//   releases). So that a restart (deploy, eviction) cannot forget live leases, a lease horizon is
//   stored (rewritten at most every HORIZON_SLACK_MS): after a restart, requests acquired before it
//   count as in flight (one, unnamed) until that horizon has passed. The horizon is cleared whenever the
//   last lease comes back, so an object evicted while idle (the usual restart) waits for nothing.

import { DurableObject } from 'cloudflare:workers';

/** The name of the one RouteFence instance the router uses. */
export const ROUTE_INSTANCE = 'route';

/** A proxied request taking longer than this is no longer counted as in flight. */
const LEASE_TTL_MS = 30_000;
/** How far ahead of the newest lease's expiry the stored horizon is kept (bounds horizon writes). */
const HORIZON_SLACK_MS = 10_000;
/** Largest hold budget a fence may ask for: held requests wait at most this long. */
const MAX_HOLD_MS = 120_000;

/** The fence the cutover raises around a flip. */
export interface Fence {
  /** Random id; commit and lower must name it. */
  id: string;
  /** The epoch a commit through this fence installs (current epoch + 1). */
  epoch: number;
  /** When it went up (ms since epoch). */
  raisedAt: number;
  /** Hold budget: at raisedAt + holdMs the fence drops back on previousUpstream by itself. */
  holdMs: number;
  /** The route in force when the fence went up. */
  previousUpstream: string;
}

/** How the last fence ended. */
export interface FenceOutcome {
  /** That fence's id. */
  fenceId: string;
  /** Committed (route changed), lowered (rollback) or expired (hold budget ran out). */
  outcome: 'committed' | 'lowered' | 'expired';
  /** When (ms since epoch). */
  at: number;
  /** The route it left in force. */
  upstream: string;
  /** The epoch it left in force. */
  epoch: number;
}

/** Everything the object knows, for the admin `state` call and verification. */
export interface RouteState {
  /** The engine's base URL, or null before the route was seeded. */
  upstream: string | null;
  /** Incremented by every committed flip (0 before the route was seeded). */
  epoch: number;
  /** The fence, while it is up. */
  fence: (Fence & { deadline: number }) | null;
  /** Requests waiting for the fence to drop. */
  held: number;
  /** Leases of the current epoch not yet released (plus one while leases from before a restart may live). */
  inflight: number;
  /** How the most recent fence ended. */
  last: FenceOutcome | null;
}

/** A route given to one request. */
export interface Grant {
  /** Where to send it; null when no route was seeded. */
  upstream: string | null;
  /** The epoch of that route. */
  epoch: number;
  /** Give this back with release() once the upstream answered; null without a route. */
  lease: string | null;
  /** How long the request was held by a fence. */
  heldMs: number;
}

/** Why a call was refused (nothing changed). */
export interface Refusal {
  /** False: refused. */
  ok: false;
  /** Machine-readable reason. */
  code: 'no-route' | 'route-set' | 'fence-up' | 'no-fence' | 'fence-expired' | 'fence-lowered' | 'fence-committed' | 'not-drained' | 'bad-request';
  /** What happened, for the operator. */
  message: string;
}

/** A call that changed (or confirmed) the state. */
export interface Accepted<T> {
  /** True: done. */
  ok: true;
  /** The result. */
  value: T;
}

/** Result of a mutating call. */
export type Outcome<T> = Accepted<T> | Refusal;

/** What raise reports once the old epoch drained or drainMs passed. */
export interface Raised {
  /** The fence's id, for commit and lower. */
  fenceId: string;
  /** The epoch a commit will install. */
  epoch: number;
  /** The route in force (what a rollback keeps). */
  previousUpstream: string;
  /** Requests of the old epoch still in flight: above 0, the caller must lower the fence. */
  inflight: number;
  /** How long raise waited for them. */
  waitedMs: number;
  /** When the hold budget runs out (ms since epoch). */
  deadline: number;
}

interface Stored {
  upstream: string | null;
  epoch: number;
  fence: Fence | null;
  last: FenceOutcome | null;
}

const STATE_KEY = 'state';
const HORIZON_KEY = 'leaseHorizon';

const refuse = (code: Refusal['code'], message: string): Refusal => ({ ok: false, code, message });

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** The router's strongly consistent route with its fence. */
export class RouteFence extends DurableObject {
  #state: Stored;
  /** Leases by id: epoch and expiry. */
  readonly #leases = new Map<string, { epoch: number; expires: number }>();
  /** Until when leases given out before this instance started may still be in flight. */
  readonly #bootHorizon: number;
  #horizon: number;
  #held = 0;
  /** Resolved when the fence drops; exists while someone waits for it. */
  #drop: { promise: Promise<void>; resolve: () => void; timer: ReturnType<typeof setTimeout> } | undefined;
  /** Resolved on every release, so raise re-counts without polling fast. */
  #released = deferred();

  constructor(ctx: DurableObjectState, env: Cloudflare.Env) {
    super(ctx, env);
    this.#state = ctx.storage.kv.get<Stored>(STATE_KEY) ?? { upstream: null, epoch: 0, fence: null, last: null };
    this.#bootHorizon = ctx.storage.kv.get<number>(HORIZON_KEY) ?? 0;
    this.#horizon = this.#bootHorizon;
  }

  /** The route for one request; waits (never fails) while a fence is up, at most until its hold budget runs out. */
  async acquire(): Promise<Grant> {
    const started = Date.now();
    while (this.#fenceUp()) {
      this.#held += 1;
      try {
        await this.#waitForDrop();
      } finally {
        this.#held -= 1;
      }
    }
    const heldMs = Date.now() - started;
    const { upstream, epoch } = this.#state;
    if (!upstream) return { upstream: null, epoch, lease: null, heldMs };
    const now = Date.now();
    const lease = crypto.randomUUID();
    this.#leases.set(lease, { epoch, expires: now + LEASE_TTL_MS });
    if (this.#horizon < now + LEASE_TTL_MS) {
      this.#horizon = now + LEASE_TTL_MS + HORIZON_SLACK_MS;
      this.ctx.storage.kv.put(HORIZON_KEY, this.#horizon);
    }
    return { upstream, epoch, lease, heldMs };
  }

  /** Gives a lease back once the upstream answered (unknown or expired leases are ignored). */
  async release(lease: string): Promise<void> {
    if (!this.#leases.delete(lease)) return;
    // Idle again, with nothing from before a restart possibly alive: a restart from here on (an idle
    // object is evicted) has no lease to wait for, so the stored horizon is cleared.
    if (this.#leases.size === 0 && this.#horizon !== 0 && Date.now() >= this.#bootHorizon) {
      this.#horizon = 0;
      this.ctx.storage.kv.put(HORIZON_KEY, 0);
    }
    const wake = this.#released;
    this.#released = deferred();
    wake.resolve();
  }

  /** Sets the first route; refused once a route exists (change it with raise + commit). */
  async init(req: { upstream: string }): Promise<Outcome<RouteState>> {
    this.#fenceUp();
    const { upstream } = this.#state;
    if (upstream === req.upstream) return { ok: true, value: this.state() };
    if (upstream) return refuse('route-set', `the route is already set (epoch ${this.#state.epoch}); change it through a fence (raise, then commit)`);
    this.#save({ ...this.#state, upstream: req.upstream, epoch: 1 });
    return { ok: true, value: this.state() };
  }

  /** Raises the fence (new requests are held), then waits up to drainMs for the current epoch's requests to finish. */
  async raise(req: { holdMs: number; drainMs: number }): Promise<Outcome<Raised>> {
    if (!(req.holdMs > 0 && req.holdMs <= MAX_HOLD_MS && req.drainMs >= 0 && req.drainMs <= req.holdMs)) {
      return refuse('bad-request', `holdMs must be in 1..${MAX_HOLD_MS} and drainMs in 0..holdMs (got holdMs ${req.holdMs}, drainMs ${req.drainMs})`);
    }
    if (this.#fenceUp()) return refuse('fence-up', `fence ${this.#state.fence!.id} is already up (raised ${new Date(this.#state.fence!.raisedAt).toISOString()}); commit or lower it first`);
    const { upstream, epoch } = this.#state;
    if (!upstream) return refuse('no-route', 'no route is set yet: seed it first (init)');
    const fence: Fence = { id: crypto.randomUUID(), epoch: epoch + 1, raisedAt: Date.now(), holdMs: Math.round(req.holdMs), previousUpstream: upstream };
    this.#save({ ...this.#state, fence });
    await this.ctx.storage.setAlarm(fence.raisedAt + fence.holdMs);
    const drainUntil = fence.raisedAt + req.drainMs;
    for (;;) {
      const inflight = this.#inflight(epoch);
      const now = Date.now();
      // The fence may have expired meanwhile only if drainMs == holdMs; the caller then sees commit refused.
      if (inflight === 0 || now >= drainUntil || this.#state.fence?.id !== fence.id) {
        return { ok: true, value: { fenceId: fence.id, epoch: fence.epoch, previousUpstream: upstream, inflight, waitedMs: now - fence.raisedAt, deadline: fence.raisedAt + fence.holdMs } };
      }
      await Promise.race([this.#released.promise, scheduler.wait(Math.min(drainUntil - now, 50))]);
    }
  }

  /** Sets the route through the fence named, epoch + 1, and drops the fence: held requests go to the new upstream. */
  async commit(req: { fenceId: string; upstream: string }): Promise<Outcome<RouteState>> {
    const fence = this.#fenceUp() ? this.#state.fence! : null;
    if (!fence || fence.id !== req.fenceId) {
      const last = this.#state.last;
      if (last?.fenceId === req.fenceId && last.outcome === 'committed' && last.upstream === req.upstream) return { ok: true, value: this.state() };
      return this.#notTheFence(req.fenceId, 'commit');
    }
    const inflight = this.#inflight(fence.epoch - 1);
    if (inflight > 0) return refuse('not-drained', `${inflight} request(s) of epoch ${fence.epoch - 1} are still in flight; lower the fence (rollback) and try the cutover again`);
    this.#dropFence({ ...this.#state, upstream: req.upstream, epoch: fence.epoch, fence: null, last: { fenceId: fence.id, outcome: 'committed', at: Date.now(), upstream: req.upstream, epoch: fence.epoch } });
    return { ok: true, value: this.state() };
  }

  /** Drops the fence named keeping the old route (rollback); held requests go to the old upstream. */
  async lower(req: { fenceId: string }): Promise<Outcome<RouteState>> {
    const fence = this.#fenceUp() ? this.#state.fence! : null;
    if (!fence || fence.id !== req.fenceId) {
      const last = this.#state.last;
      if (last?.fenceId === req.fenceId && last.outcome !== 'committed') return { ok: true, value: this.state() };
      return this.#notTheFence(req.fenceId, 'lower');
    }
    this.#dropFence({ ...this.#state, fence: null, last: { fenceId: fence.id, outcome: 'lowered', at: Date.now(), upstream: fence.previousUpstream, epoch: this.#state.epoch } });
    return { ok: true, value: this.state() };
  }

  /** Everything, including how many requests are held and in flight. */
  state(): RouteState {
    this.#fenceUp();
    const { upstream, epoch, fence, last } = this.#state;
    return { upstream, epoch, fence: fence ? { ...fence, deadline: fence.raisedAt + fence.holdMs } : null, held: this.#held, inflight: this.#inflight(epoch), last };
  }

  /** The hold budget ran out with nobody touching the object: lower the fence back on the old side. */
  override async alarm(): Promise<void> {
    const fence = this.#fenceUp() ? this.#state.fence! : null;
    if (fence) await this.ctx.storage.setAlarm(fence.raisedAt + fence.holdMs);
  }

  /** True while a fence is up; lowers it first when its hold budget has run out. */
  #fenceUp(): boolean {
    const fence = this.#state.fence;
    if (!fence) return false;
    if (Date.now() < fence.raisedAt + fence.holdMs) return true;
    this.#dropFence({ ...this.#state, fence: null, last: { fenceId: fence.id, outcome: 'expired', at: Date.now(), upstream: fence.previousUpstream, epoch: this.#state.epoch } });
    return false;
  }

  /** Stores the state with the fence dropped and releases every held request. */
  #dropFence(next: Stored): void {
    this.#save(next);
    void this.ctx.storage.deleteAlarm();
    const drop = this.#drop;
    this.#drop = undefined;
    if (drop) {
      clearTimeout(drop.timer);
      drop.resolve();
    }
  }

  #save(next: Stored): void {
    this.#state = next;
    this.ctx.storage.kv.put(STATE_KEY, next);
  }

  /** Resolves when the fence drops (commit, lower, or its hold budget running out). */
  #waitForDrop(): Promise<void> {
    if (!this.#drop) {
      const fence = this.#state.fence!;
      const d = deferred();
      // The timer makes the budget a hard bound even when no commit or lower ever comes.
      const timer = setTimeout(() => this.#fenceUp(), Math.max(0, fence.raisedAt + fence.holdMs - Date.now()) + 1);
      this.#drop = { ...d, timer };
    }
    return this.#drop.promise;
  }

  /** Live leases of one epoch, plus one while leases from before a restart may still be in flight. */
  #inflight(epoch: number): number {
    const now = Date.now();
    let n = 0;
    for (const [id, lease] of this.#leases) {
      if (lease.expires <= now) this.#leases.delete(id);
      else if (lease.epoch === epoch) n += 1;
    }
    return n + (now < this.#bootHorizon ? 1 : 0);
  }

  #notTheFence(fenceId: string, what: 'commit' | 'lower'): Refusal {
    const last = this.#state.last;
    if (last?.fenceId === fenceId) {
      const when = new Date(last.at).toISOString();
      if (last.outcome === 'expired') return refuse('fence-expired', `fence ${fenceId} ran out of its hold budget at ${when} and dropped back on the previous route (epoch ${last.epoch}); ${what} refused`);
      if (last.outcome === 'lowered') return refuse('fence-lowered', `fence ${fenceId} was lowered at ${when} (route kept at epoch ${last.epoch}); ${what} refused`);
      return refuse('fence-committed', `fence ${fenceId} was already committed at ${when} (epoch ${last.epoch}); flip back through a new fence instead`);
    }
    return refuse('no-fence', this.#state.fence ? `fence ${fenceId} is not the fence that is up (${this.#state.fence.id}); ${what} refused` : `no fence ${fenceId} is up; ${what} refused`);
  }
}
