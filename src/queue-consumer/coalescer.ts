// One Durable Object per refresh token (named by the token's SHA-256): a repeated refresh grant
// within the window gets the first answer instead of a second rotation, which the engine would treat
// as reuse and revoke the whole chain. Concurrent duplicates await the in-flight engine call (a DO
// runs one instance per name, so they all meet here); later ones read the stored answer, which is
// sealed with a key derived from the token (seal.ts). Error answers are never stored.

import { DurableObject } from 'cloudflare:workers';
import { openAnswer, sealAnswer, type Answer, type SealedAnswer } from './seal.ts';

/** What the router hands the coalescer for one refresh grant. */
export interface ExchangeRequest {
  /** Full engine URL of the token endpoint. */
  url: string;
  /** SHA-256 hex of the refresh token: the storage key. */
  tokenHash: string;
  /** The refresh token (used to derive the cache key material, never stored). */
  token: string;
  /** Request headers to forward. */
  headers: Record<string, string>;
  /** Form body to forward. */
  body: string;
  /** How long a successful answer is replayed, in seconds. */
  windowSeconds: number;
}

/** An answer and where it came from: the engine, an in-flight twin, or the sealed cache. */
export interface Exchanged extends Answer {
  /** `engine` for the one request that reached the engine. */
  source: 'engine' | 'inflight' | 'cache';
}

const REPLAYED_HEADERS = new Set(['content-type', 'cache-control', 'pragma']);

/** Serialises refresh grants per refresh token and replays the first successful answer. */
export class RefreshCoalescer extends DurableObject {
  #inflight: Promise<Answer> | undefined;

  /** Returns the engine's answer to this refresh grant, reaching the engine at most once per window. */
  async exchange(req: ExchangeRequest): Promise<Exchanged> {
    const twin = this.#inflight;
    if (twin) return { ...(await twin), source: 'inflight' };
    const sealed = await this.ctx.storage.get<SealedAnswer>(req.tokenHash);
    if (sealed && sealed.expires > Date.now()) {
      const answer = await openAnswer(req.token, sealed);
      if (answer) return { ...answer, source: 'cache' };
    }
    // Another request may have started the engine call while storage was read.
    const late = this.#inflight as Promise<Answer> | undefined;
    if (late) return { ...(await late), source: 'inflight' };
    const pending = callEngine(req);
    this.#inflight = pending;
    try {
      const answer = await pending;
      if (answer.status >= 200 && answer.status < 300 && req.windowSeconds > 0) {
        const expires = Date.now() + req.windowSeconds * 1000;
        await this.ctx.storage.put(req.tokenHash, await sealAnswer(req.token, answer, expires));
        await this.ctx.storage.setAlarm(expires);
      }
      return { ...answer, source: 'engine' };
    } finally {
      this.#inflight = undefined;
    }
  }

  /** Forgets the sealed answer once the window has passed. */
  override async alarm(): Promise<void> {
    await this.ctx.storage.deleteAll();
  }
}

async function callEngine(req: ExchangeRequest): Promise<Answer> {
  const res = await fetch(req.url, { method: 'POST', headers: req.headers, body: req.body });
  const headers = Object.fromEntries([...res.headers].filter(([k]) => REPLAYED_HEADERS.has(k)));
  return { status: res.status, headers, body: await res.text() };
}
